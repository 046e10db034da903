"""Which features let a linear head predict a query's gradient sketch? Encoder-path recovery by feature set.

    python benchmarks/student_features.py --config WORK/influcoder.toml --name real20k [--queries 300]
        [--json benchmarks/results/student_features.json]

On a built home (``fidelity.py``'s or ``planted.py``'s), the sketch basis is fitted on training rows
only (as the encoder stage fits it, at the default width), and a ridge head is fitted from each feature
set of the training texts to their query-side sketches. Its alpha is chosen on a tenth of the
training samples held back from the fit (mean cosine), never on the queries, by the student's own
ridge (``student/ridge.py``). Held-out anchors are
then asked as a user asks (their text; their own sample left out) and ``recovery_at_10`` is the
share of the gradient path's whole-store top-10 that an exact search with the predicted sketch
finds; ``oracle`` is the query's own sketched gradient (the ceiling). Feature sets:

* ``minilm_output``: the default encoder's frozen sentence embedding (what today's ridge head reads);
* ``minilm_layers``: mean-pooled hidden states of every layer of the full six-layer MiniLM;
* ``decoder_ngrams`` / ``wordpiece_ngrams``: tokens and token pairs of the decoder's / MiniLM's
  tokenizer, hashed into 8,192 buckets, sublinear tf-idf;
* ``decoder_tokens``: the decoder's tokens alone, idf-weighted and averaged over the text: what a
  sentence-transformers ``StaticEmbedding`` on the decoder's tokenizer computes, so a head fitted on
  it serves as one embedding-bag lookup;
* ``decoder_states``: the decoder's mean-pooled hidden states, every layer of every scored checkpoint
  (forward only, no gradient);
* ``decoder_output_gradient``: the gradient of the loss with respect to a (d x d) linear map on
  the last checkpoint's final hidden states, ``sum_t W_out^T (p_t - e_{y_t}) h_t^T`` over the loss
  positions (``W_out`` the output embedding, ``p_t`` the predicted distribution): the teacher's own
  kind of feature, but at the output, so it needs a forward pass and no backward pass;
* ``output_gradient_student_sideK``: the output-gradient student's rows (``student/output_gradient.py``:
  the last checkpoint's output gradient, each side cut to K fixed random directions when the decoder
  is wider, beside the decoder-token bag); ``output_gradient_student_all_checkpoints_sideK``: the
  output gradient at every checkpoint the teacher scores (the student's own rows since it reads them);
* ``minilm_layers+decoder_ngrams``, ``decoder_states+decoder_ngrams``,
  ``decoder_output_gradient+decoder_tokens``: both, each block scaled to unit norm.

Rows with a ``planted`` field are left out of queries, documents and fits. One home's row replaces
the JSON's row of the same ``--name``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fidelity import exact_recovery  # noqa: E402
from benchmarks.planted import provenance  # noqa: E402
from benchmarks.sketch_width import ask, home_row, replace_home_row  # noqa: E402
from influcoder_dagster.student.metrics import mean_cosine  # noqa: E402
from influcoder_dagster.student.ridge import fit_ridge  # noqa: E402

ALPHAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
BUCKETS = 2**13
# The output-gradient student's variants: (directions kept per side of each (d x d) feature, whether
# every checkpoint the teacher scores gives one or only the last)
STUDENTS = {"side128": (128, False), "side64": (64, False), "side32": (32, False),
            "all_checkpoints_side64": (64, True), "all_checkpoints_side48": (48, True)}


def ngram_features(tokenize: Callable[[str], list[int]], train: list[str], queries: list[str]) -> tuple[Any, Any]:
    """Tokens and adjacent token pairs, hashed, sublinear tf-idf (fitted on ``train``), unit rows."""
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer

    def grams(text: str) -> list[str]:
        ids = [str(i) for i in tokenize(text)]
        return ids + [f"{a}_{b}" for a, b in zip(ids, ids[1:])]

    hashed = HashingVectorizer(analyzer=grams, n_features=BUCKETS, alternate_sign=False, norm=None)
    tfidf = TfidfTransformer(sublinear_tf=True).fit(hashed.transform(train))
    return tfidf.transform(hashed.transform(train)), tfidf.transform(hashed.transform(queries))


def token_mean_features(tokenizer: Any, train: list[str], queries: list[str]) -> tuple[Any, Any]:
    """The token bag's own features (``student/token_bag.py``): token counts over the text's length,
    each token weighted by its smoothed idf on ``train``."""
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    from influcoder_dagster.student.token_bag import document_frequency, mean_counts, smooth_idf

    bag = StaticEmbedding(tokenizer, embedding_dim=1)
    train_x = mean_counts(bag, train)
    idf = smooth_idf(document_frequency(train_x), len(train))
    return train_x.multiply(idf).tocsr(), mean_counts(bag, queries).multiply(idf).tocsr()


def minilm_layers(st: Any, max_length: int, texts: list[str], batch: int = 64) -> np.ndarray:
    """Mean-pooled hidden states of every layer (embeddings included) of the sentence-transformers model ``st``."""
    import torch

    model, tok = st[0].auto_model, st[0].tokenizer
    out = []
    for s in range(0, len(texts), batch):
        b = tok(texts[s:s + batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            states = model(**b, output_hidden_states=True).hidden_states
        m = b["attention_mask"][..., None].float()
        out.append(torch.cat([(h * m).sum(1) / m.sum(1) for h in states], 1).numpy())
    return np.concatenate(out)


def decoder_states(decoders: list[Any], max_length: int, texts: list[str], batch: int = 64) -> np.ndarray:
    """Mean-pooled hidden states of every layer of every checkpoint the teacher scores (forward only)."""
    import torch

    from influcoder_dagster.data.tokens import pad_batch, tokenize_for_loss

    tok = decoders[-1][1]
    enc = [e.input_ids for e in tokenize_for_loss(tok, texts, max_length)]
    out = []
    for s in range(0, len(enc), batch):
        ids, mask = pad_batch(enc[s:s + batch], tok.pad_token_id)
        m = mask[..., None].float()
        with torch.no_grad():
            parts = [(h * m).sum(1) / m.sum(1) for model, _, _ in decoders
                     for h in model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states]
        out.append(torch.cat(parts, 1).numpy())
    return np.concatenate(out)


def output_gradient(model: Any, tok: Any, max_length: int, texts: list[str]) -> np.ndarray:
    """Per text, ``sum_t W_out^T (p_t - e_{y_t}) h_t^T`` over its loss positions, divided by their
    count and flattened (d * d), from one forward pass: the student's own feature
    (``student/output_gradient.py``) with every direction of both sides kept."""
    from influcoder_dagster.student.output_gradient import OutputGradientQuery, output_gradients

    width = model.get_output_embeddings().weight.shape[1]
    return output_gradients(OutputGradientQuery([model], tok, max_length, 1, side_max=width), texts)


def unit_scaled(train: Any, queries: Any) -> tuple[Any, Any]:
    """Both divided by the training rows' root-mean-square norm (dense or sparse), so blocks weigh alike."""
    from influcoder_dagster.student.output_gradient import rms_norm

    scale = rms_norm(train)
    return train / scale, queries / scale


def standardized(train: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z-scored on the training rows, then scaled so a row's norm is about 1 (blocks weigh alike)."""
    mu, sd = train.mean(0), train.std(0) + 1e-6
    scale = np.sqrt(train.shape[1])
    return (train - mu) / sd / scale, (queries - mu) / sd / scale


class Fitted(NamedTuple):
    """A feature set that fits its own head (the student's): the head, the queries' rows, their width."""

    head: Any
    queries: Any
    dim: int


def feature_sets(cfg: Any, asked: Any, train_texts: list[str], targets: np.ndarray) -> dict[str, Callable[[], Any]]:
    """Each feature set as (training texts' features, queries' features), or as :class:`Fitted`,
    computed when asked for."""
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.student.encoder import encode, load_encoder
    from influcoder_dagster.student.token_bag import decoder_tokenizer
    from influcoder_dagster.teacher.base_model import base_model_record
    from influcoder_dagster.teacher.checkpoints import load_checkpoint_decoders

    base = base_model_record(Paths(cfg.home_path))
    decoders = load_checkpoint_decoders(base)
    decoder_tok = decoders[-1][1]
    minilm, full = load_encoder(cfg.encoder), load_encoder(cfg.encoder.model_copy(update={"layers": -1}))
    length = cfg.encoder.max_seq_length
    cache: dict[str, tuple[Any, Any]] = {}

    def once(name: str, make: Callable[[], tuple[Any, Any]]) -> Callable[[], tuple[Any, Any]]:
        return lambda: cache[name] if name in cache else cache.setdefault(name, make())

    def combined(dense: Callable[[], tuple[Any, Any]]) -> Callable[[], tuple[Any, Any]]:
        import scipy.sparse as sp

        def both() -> tuple[Any, Any]:
            (dt, dq), (nt, nq) = dense(), decoder_grams()
            return sp.hstack([sp.csr_matrix(dt), nt]).tocsr(), sp.hstack([sp.csr_matrix(dq), nq]).tocsr()

        return both

    def dense_pair(first: Callable[[], tuple[Any, Any]], second: Callable[[], tuple[Any, Any]]) -> Callable[[], tuple[Any, Any]]:
        """Both blocks side by side, dense (the first is a dense 16,384 columns: sparse would cost more)."""
        def both() -> tuple[Any, Any]:
            (at, aq), (bt, bq) = first(), second()
            return np.hstack([at, bt.toarray()]).astype(np.float32), np.hstack([aq, bq.toarray()]).astype(np.float32)

        return both

    output = once("minilm_output", lambda: standardized(encode(minilm, train_texts, "query"), encode(minilm, asked.queries, "query")))
    layers = once("minilm_layers", lambda: standardized(minilm_layers(full, length, train_texts),
                                                                     minilm_layers(full, length, asked.queries)))
    decoder_grams = once("decoder_ngrams", lambda: ngram_features(
        lambda t: decoder_tok(t, truncation=True, max_length=cfg.model.max_length)["input_ids"], train_texts, asked.queries))
    tokens = once("decoder_tokens", lambda: token_mean_features(
        decoder_tokenizer(base["path"], cfg.model.max_length), train_texts, asked.queries))
    wordpiece = once("wordpiece_ngrams", lambda: ngram_features(
        lambda t: minilm.tokenizer(t, truncation=True, max_length=length, add_special_tokens=False)["input_ids"],
        train_texts, asked.queries))
    states = once("decoder_states", lambda: standardized(decoder_states(decoders, cfg.model.max_length, train_texts),
                                                         decoder_states(decoders, cfg.model.max_length, asked.queries)))
    last, last_tok, _ = decoders[-1]
    out_grad = once("decoder_output_gradient", lambda: unit_scaled(output_gradient(last, last_tok, cfg.model.max_length, train_texts),
                                                                  output_gradient(last, last_tok, cfg.model.max_length, asked.queries)))
    unit_tokens = once("decoder_tokens_unit", lambda: unit_scaled(*tokens()))

    def student_rows(side_max: int, every_checkpoint: bool) -> Callable[[], Fitted]:
        """The output-gradient student's own head (``student/output_gradient.py``: its streamed ridge
        and design), each side cut to ``side_max``, at every checkpoint or the last one only."""
        def make() -> Fitted:
            from influcoder_dagster.student.output_gradient import OutputGradientQuery, checkpoint_decoders, design_rows, fit_head

            decoders, tok = checkpoint_decoders(base)
            module = OutputGradientQuery(decoders if every_checkpoint else decoders[-1:], tok, cfg.model.max_length, cfg.encoder.sketch_dim,
                                         side_max, cfg.encoder.seed)
            head, design = fit_head(module, train_texts, targets, cfg.encoder.seed)
            queries = design_rows(module, asked.queries, design)
            return Fitted(head, queries, queries.shape[1])

        return make

    return {"minilm_output": output, "minilm_layers": layers, "decoder_ngrams": decoder_grams, "decoder_tokens": tokens,
            "wordpiece_ngrams": wordpiece, "decoder_states": states, "minilm_layers+decoder_ngrams": combined(layers), "decoder_states+decoder_ngrams": combined(states),
            "decoder_output_gradient": out_grad, "decoder_output_gradient+decoder_tokens": dense_pair(out_grad, unit_tokens),
            **{f"output_gradient_student_{name}": student_rows(*v) for name, v in STUDENTS.items()}}


def measure(config: Path, n_queries: int, only: list[str] | None) -> dict[str, Any]:
    from influcoder_dagster.core.config import load_config
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.student.sketch import fit_sketch
    from influcoder_dagster.teacher.pair_teacher import pair_teacher_for

    cfg = load_config(config)
    asked = ask(cfg, n_queries)
    ids, rows, train = asked.ids, asked.rows, asked.train
    by_id = dict(zip(asked.rankings.data.corpus_ids.tolist(), asked.rankings.data.corpus_texts, strict=True))
    train_texts = [by_id[int(i)] for i in ids[train]]
    sketch = fit_sketch(rows[train], cfg.encoder.sketch_dim, seed=cfg.encoder.seed)
    pair_teacher = pair_teacher_for(cfg, Paths(cfg.home_path), asked.rankings.provenance["store_key"])
    targets, docs = sketch.targets(pair_teacher.query_side(rows[train])), sketch.documents(rows)
    own, tops = asked.own.tolist(), asked.tops
    oracle = sketch.targets(asked.gradients)
    out: dict[str, Any] = {"n_rows": len(ids), "n_train_rows": int(train.sum()), "n_queries": len(asked.queries),
                           "sketch_dim": sketch.dim, "oracle_recovery_at_10": exact_recovery(oracle, ids, docs, own, tops), "features": {}}
    print("oracle", out["oracle_recovery_at_10"], flush=True)
    alphas = tuple(a * len(targets) / 1000 for a in ALPHAS)
    for name, make in feature_sets(cfg, asked, train_texts, targets).items():
        if only and name not in only:
            continue
        start = time.perf_counter()
        made = make()
        if isinstance(made, Fitted):
            head, query_x, dim = made
        else:
            train_x, query_x = made
            head, dim = fit_ridge(train_x, targets, alphas, cfg.encoder.seed), train_x.shape[1]
        pred = head.predict(query_x)
        pred /= np.maximum(np.linalg.norm(pred, axis=1, keepdims=True), 1e-12)
        row = {"recovery_at_10": exact_recovery(pred, ids, docs, own, tops), "cosine_to_oracle": mean_cosine(pred, oracle),
               "dim": int(dim), "alpha": head.alpha / len(targets) * 1000, "seconds": round(time.perf_counter() - start, 1)}
        out["features"][name] = row
        print(name, row, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, required=True, help="the built home's influcoder.toml")
    ap.add_argument("--name", required=True, help="the home's row in the JSON")
    ap.add_argument("--queries", type=int, default=300, help="held-out anchors asked as a user asks")
    ap.add_argument("--only", nargs="*", help="feature sets to measure (default: all)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from influcoder_dagster.core.quiet import quiet_libraries

    quiet_libraries()
    row = {"name": args.name, **provenance("benchmarks/student_features.py"), **measure(args.config, args.queries, args.only)}
    if args.json:
        before = home_row(args.json, args.name)
        if args.only and before:  # the feature sets not re-measured keep their figures and the commit that measured them
            kept = {k: {**v, "commit": v.get("commit", before["commit"])} for k, v in before["features"].items() if k not in args.only}
            row["features"] = kept | {k: {**v, "commit": row["commit"]} for k, v in row["features"].items()}
        replace_home_row(args.json, row)


if __name__ == "__main__":
    main()
