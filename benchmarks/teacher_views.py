"""What the encoder learns against what a user query asks: the teacher's two views of one ranking.

    python benchmarks/teacher_views.py --home influcoder_home [--json PATH]

With Adam-preconditioned pool rows (the LESS teacher, the default), a training anchor's ranking is
scored from its stored row (an Adam direction), while a user query, like the re-rank and the
gradient path, is scored from its plain gradient. On the held-out anchors and held-out pool of the
rankings database, this prints the mean per-anchor Spearman between:

* ``stored``: the anchor's stored row against the pool rows (what the rankings table holds and the
  encoder is trained and gated on);
* ``as queried``: the anchor's plain gradient against the same pool rows (what a user gets);
* ``plain-plain``: plain gradients on both sides;
* ``prior``: a query-independent ranking, each pool sample's mean score over the other anchors;
* the served encoder, the untrained encoder and BM25.

A view that agrees with its own prior is mostly one ranking for every query, not attribution.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def mean_spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(np.mean([spearmanr(x, y)[0] for x, y in zip(a, b, strict=True)]))


def leave_one_out_prior(m: np.ndarray) -> np.ndarray:
    """Row i: the column means of every other row."""
    return (m.sum(0, keepdims=True) - m) / (len(m) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="influcoder_home", help="a storage root where `influcoder demo` ran")
    parser.add_argument("--max-length", type=int, help="decoder tokens per text (default: the tokenized corpus's)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    from influcoder_dagster.core.config import EncoderConfig
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.data.tokenized import read_corpus, read_manifest
    from influcoder_dagster.data.tokens import tokenize_for_loss
    from influcoder_dagster.serving.index import current_encoder_folder
    from influcoder_dagster.serving.query_encoder import QueryEncoder
    from influcoder_dagster.student.encoder import encode, load_encoder
    from influcoder_dagster.student.evaluation import bm25_scorer
    from influcoder_dagster.student.sketch import BASIS_FILE, Sketch
    from influcoder_dagster.teacher.base_model import base_model_record
    from influcoder_dagster.teacher.decoder import load_decoder
    from influcoder_dagster.teacher.gradients import GradientExtractor, compute_gradients
    from influcoder_dagster.teacher.preconditioner import read_preconditioner
    from influcoder_dagster.teacher.projection import ProjectionSpec
    from influcoder_dagster.teacher.rankings_db import connect_readonly
    from influcoder_dagster.teacher.scoring import apply_preconditioner, full_scores
    from influcoder_dagster.teacher.store import open_store

    paths = Paths(Path(args.home).resolve())
    store = open_store(paths)
    con = connect_readonly(paths.home)
    pairs = con.execute("""SELECT DISTINCT q.sample_id, s.sample_id FROM scores s JOIN queries q ON q.query_id = s.query_id
                           WHERE s.kind = 'eval'""").fetchall()
    con.close()
    anchors = np.array(sorted({a for a, _ in pairs if a is not None}), dtype=np.int64)
    pool = np.array(sorted({p for _, p in pairs}), dtype=np.int64)
    if not len(anchors):
        sys.exit("no held-out anchors with sample ids in the rankings database; materialize 'influence_rankings'")
    corpus = read_corpus(paths.corpus, columns=["sample_id", "text"])
    text_of = dict(zip(corpus.column("sample_id").to_pylist(), corpus.column("text").to_pylist(), strict=True))
    a_texts, p_texts = [text_of[int(i)] for i in anchors], [text_of[int(i)] for i in pool]

    base = base_model_record(paths)
    model, tokenizer = load_decoder(base["path"], base.get("adapter"))
    plain = GradientExtractor(model, ProjectionSpec.from_json(store.manifest["projection"]), tokenizer.pad_token_id)
    max_length = args.max_length or max(s["max_length"] for s in read_manifest(paths.corpus)["shards"].values())
    a_plain = compute_gradients(plain, tokenize_for_loss(tokenizer, a_texts, max_length), 16).numpy()
    p_plain = compute_gradients(plain, tokenize_for_loss(tokenizer, p_texts, max_length), 16).numpy()
    pool_rows = store.lookup(pool)
    inverse = read_preconditioner(store)  # rankings.precondition: every view's query side as the rankings score it
    query_side = (lambda g: apply_preconditioner(g, inverse)) if inverse is not None else (lambda g: g)  # noqa: E731
    views = {
        "stored": full_scores(query_side(store.lookup(anchors)), pool_rows),
        "as queried": full_scores(query_side(a_plain), pool_rows),
        "plain-plain": full_scores(query_side(a_plain), p_plain),
    }
    index_encoder = current_encoder_folder(paths.index)
    served = QueryEncoder(index_encoder)
    basis = index_encoder / BASIS_FILE  # a gradient-sketch encoder's documents are their sketched rows
    served_docs = Sketch.load(basis).documents(pool_rows) if basis.exists() else encode(served.model, p_texts, "document")
    untrained = load_encoder(EncoderConfig(max_seq_length=128, layers=-1))
    methods = {
        "served encoder": served.encode(a_texts) @ served_docs.T,
        "untrained encoder": encode(untrained, a_texts, "query") @ encode(untrained, p_texts, "document").T,
        "BM25": bm25_scorer(a_texts, p_texts),
    }
    cols = ["stored", "as queried", "plain-plain"]
    table: dict[str, dict[str, float]] = {}
    for name, m in {**{f"teacher, {k}": v for k, v in views.items()},
                    **{f"prior of the {k} view": leave_one_out_prior(v) for k, v in views.items() if k != "plain-plain"},
                    **methods}.items():
        table[name] = {c: mean_spearman(m, views[c]) for c in cols}
    adam = store.manifest.get("requested", {}).get("adam_precondition")
    print(f"\n{len(anchors)} held-out anchors x {len(pool)} held-out pool samples; store {store.root.name}"
          f" (Adam-preconditioned pool rows: {bool(adam)}); encoder {index_encoder} ({served.backend})")
    print("mean per-anchor Spearman against each teacher view\n")
    print("| ranking | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"anchors": len(anchors), "pool": len(pool), "adam_pool": bool(adam), "table": table}, indent=2))


if __name__ == "__main__":
    main()
