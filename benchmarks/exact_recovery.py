"""How much of the exact head influence does each served path return, over a whole real store?

    python benchmarks/exact_recovery.py --work WORK --name NAME [--queries 60] [--depths 100 1000]
        [--timed 10] [--json benchmarks/results/exact_recovery.json]

``WORK`` is a ``benchmarks/fidelity.py`` work folder (its home built with the default teacher, the
output head's gradient). For the same held-out queries as ``fidelity.py`` (held-out anchors asked as
a user asks, the query's own sample left out of every list), the exact head-gradient cosine of each
query with *every* store sample (:mod:`influcoder_dagster.teacher.head_exact`, mean over the
store's checkpoints) gives the exact top-10. Then each path's share of it:

* ``teacher_scan``: the gradient path, a scan of the whole store by the sketched cosine (what the
  rankings and the student learn);
* ``encoder``: the served index, the encoder path;
* ``sketch_rerank@D``: the index's top-D re-ranked by the sketched cosine (the served re-rank);
* ``exact_rerank@D``: the index's top-D re-ranked by the exact cosine (``attribute --rerank D --exact``);
* ``exact_over_scan@D``: the gradient path's top-D re-ranked by the exact cosine;

and ``scan_spearman``, the mean per-query Spearman of the sketched and exact cosines over the
store. The served exact re-rank is timed (p50) on the first ``--timed`` queries at the first depth,
and its top-10 checked against the one computed from the scan. Where the store keeps head factors
(``projection.head_factors``), also ``factor_scan`` (a scan of the whole store by the factors'
cosine, with ``factor_spearman`` against the exact cosines) and ``factor_rerank@D`` (the served
``--rerank D --factors``), timed at every depth.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.planted import provenance  # noqa: E402

K = 10


def top(scores: np.ndarray, ids: np.ndarray, own: int, k: int = K) -> list[int]:
    """The ``k`` best ids by ``scores``, ``own`` left out."""
    order = np.argsort(-scores, kind="stable")
    return [i for i in ids[order[: k + 1]].tolist() if i != own][:k]


def overlap(a: list[int], b: list[int]) -> float:
    return len(set(a) & set(b)) / K


def held_out_queries(cfg: Any, n: int) -> tuple[list[str], list[int]]:
    """``fidelity.py``'s served queries: ``n`` held-out anchors (seeded), with their own sample ids."""
    from influcoder_dagster.stages.encoder import read_rankings

    data = read_rankings(cfg).data
    by_text = dict(zip(data.corpus_texts, data.corpus_ids.tolist(), strict=True))
    texts = [data.anchor_texts[i] for i in np.random.default_rng(0).permutation(len(data.anchor_texts))[:n]]
    return texts, [by_text[t] for t in texts]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from scipy.stats import spearmanr

    from influcoder_dagster.core.config import load_config
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.data.tokenized import read_corpus
    from influcoder_dagster.data.tokens import Encoded, tokenize_for_loss
    from influcoder_dagster.serving.attribute import Attributor
    from influcoder_dagster.teacher.base_model import base_model_record
    from influcoder_dagster.teacher.head_exact import exact_head_scorer
    from influcoder_dagster.teacher.head_factor_store import HeadFactorFiles, StoredFactorScorer
    from influcoder_dagster.teacher.projection import ProjectionSpec
    from influcoder_dagster.teacher.query_gradients import QueryGradients
    from influcoder_dagster.teacher.scoring import unit_rows
    from influcoder_dagster.teacher.store import open_store

    cfg = load_config(args.work / "influcoder.toml")
    paths = Paths(cfg.home_path)
    texts, own = held_out_queries(cfg, args.queries)
    store = open_store(paths)
    gradients = QueryGradients(base_model_record(paths), ProjectionSpec.from_json(store.manifest["projection"]), cfg.model.max_length)
    corpus = read_corpus(paths.corpus, columns=["sample_id", "input_ids"])
    ids = corpus.column("sample_id").to_numpy()
    candidates = [Encoded(x) for x in corpus.column("input_ids").to_pylist()]
    queries = tokenize_for_loss(gradients.tokenizer(), texts, cfg.model.max_length)
    started = time.perf_counter()
    exact = exact_head_scorer(gradients.decoders()).cosines(queries, candidates, progress=True)
    scan_s = time.perf_counter() - started
    sketched = unit_rows(gradients.of_texts(texts)).numpy() @ unit_rows(store.lookup(ids)).numpy().T
    attributor = Attributor(cfg.home_path, cfg.model.max_length)
    attributor.query(texts[:1], 1, args.depths[0], score="exact")  # loads the decoders, the store and the corpus's tokens
    truth = [top(e, ids, o) for e, o in zip(exact, own, strict=True)]
    position = {int(s): i for i, s in enumerate(ids)}
    found: dict[str, list[float]] = {"teacher_scan": [], "encoder": []}
    for q, (text, o) in enumerate(zip(texts, own, strict=True)):
        found["teacher_scan"].append(overlap(top(sketched[q], ids, o), truth[q]))
        found["encoder"].append(overlap([h["sample_id"] for h in attributor.query([text], K + 1)[0] if h["sample_id"] != o][:K], truth[q]))
        for depth in args.depths:
            recalled = np.array([h["sample_id"] for h in attributor.query([text], depth, depth)[0]])
            cols = np.array([position[int(s)] for s in recalled])
            found.setdefault(f"sketch_rerank@{depth}", []).append(overlap(top(sketched[q, cols], recalled, o), truth[q]))
            found.setdefault(f"exact_rerank@{depth}", []).append(overlap(top(exact[q, cols], recalled, o), truth[q]))
            scan_top = np.argsort(-sketched[q])[: depth + 1]
            found.setdefault(f"exact_over_scan@{depth}", []).append(overlap(top(exact[q, scan_top], ids[scan_top], o), truth[q]))
    factor_row = {}
    if attributor.keeps_head_factors():
        scorer = StoredFactorScorer(exact_head_scorer(gradients.decoders()).heads, HeadFactorFiles(store))
        factor_row = factor_paths(args.depths, attributor, scorer.cosines(queries, ids), texts, exact, own, ids, truth, found)
    times, agree = [], []
    for q in range(min(args.timed, len(texts))):
        start = time.perf_counter()
        hits = attributor.query([texts[q]], args.depths[0], args.depths[0], score="exact")[0]
        times.append(time.perf_counter() - start)
        served = np.array([h["sample_id"] for h in hits])
        agree.append(top(np.array([h["score"] for h in hits]), served, own[q])
                     == top(exact[q, [position[int(s)] for s in served]], served, own[q]))
    return {"n_samples": len(ids), "n_queries": len(texts), "checkpoints": len(gradients.decoders()),
            "recovery_of_exact_top10": {name: float(np.mean(v)) for name, v in found.items()},
            "scan_spearman": float(np.mean([spearmanr(e, s).statistic for e, s in zip(exact, sketched, strict=True)])),
            "exact_scan_s_per_query": round(scan_s / len(texts), 2),
            f"exact_rerank@{args.depths[0]}_ms_p50": round(float(np.median(times)) * 1000, 1) if times else None,
            "served_exact_rerank_matches_scan": all(agree), **factor_row}


def factor_paths(depths: list[int], attributor: Any, scan: np.ndarray, texts: list[str], exact: np.ndarray, own: list[int],
                 ids: np.ndarray, truth: list[list[int]], found: dict[str, list[float]]) -> dict[str, Any]:
    """The head factors' share of the exact top-10: the whole store scanned by their cosines (``scan``)
    and the served re-rank at each depth (timed); adds to ``found``, returns the scan's Spearman
    against the exact cosines and the timings."""
    from scipy.stats import spearmanr

    found["factor_scan"] = [overlap(top(f, ids, o), t) for f, o, t in zip(scan, own, truth, strict=True)]
    times: dict[str, list[float]] = {}
    for q, (text, o) in enumerate(zip(texts, own, strict=True)):
        for depth in depths:
            start = time.perf_counter()
            hits = attributor.query([text], K + 1, depth, score="factors")[0]
            times.setdefault(f"factor_rerank@{depth}_ms_p50", []).append(time.perf_counter() - start)
            found.setdefault(f"factor_rerank@{depth}", []).append(overlap([h["sample_id"] for h in hits if h["sample_id"] != o][:K], truth[q]))
    return {"factor_spearman": float(np.mean([spearmanr(e, f).statistic for e, f in zip(exact, scan, strict=True)])),
            **{name: round(float(np.median(v)) * 1000, 1) for name, v in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a benchmarks/fidelity.py work folder")
    parser.add_argument("--name", required=True)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--depths", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--timed", type=int, default=10, help="queries timed through the served exact re-rank")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/exact_recovery.json"))
    args = parser.parse_args()

    from influcoder_dagster.core.quiet import quiet_libraries

    quiet_libraries()
    row = {"name": args.name, **provenance("benchmarks/exact_recovery.py"), **measure(args)}
    print(json.dumps(row, indent=1))
    old = json.loads(args.json.read_text()) if args.json.exists() else {"corpora": []}
    old["corpora"] = [r for r in old["corpora"] if r["name"] != args.name] + [row]
    args.json.write_text(json.dumps(old, indent=1) + "\n")


if __name__ == "__main__":
    main()
