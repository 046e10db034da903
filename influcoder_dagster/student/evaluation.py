"""The evaluation table: the student, the cheap alternatives and the teacher's planted recall, side by side.

Agreement is measured on held-out anchors against a held-out pool sample (neither seen in
training); planted recall is measured over the whole corpus for the probe queries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from influcoder_dagster.student.metrics import agreement_table, per_query_spearman, planted_recall

# (query texts, document texts) -> (queries, documents) scores
Scorer = Callable[[list[str], list[str]], np.ndarray]


@dataclass
class EvalSet:
    anchor_texts: list[str]  # held-out anchors
    pool_texts: list[str]  # held-out pool sample
    teacher: np.ndarray  # (anchors, pool) teacher scores
    probe_texts: list[str]  # planted probe queries
    probe_relevant: list[set[int]]  # planted sample ids per probe
    corpus_ids: np.ndarray
    corpus_texts: list[str]
    k: int = 10
    # (anchors, pool) teacher scores with each anchor scored as a user query is (its plain
    # gradient); None where unknown. Equal to ``teacher`` unless the pool rows are Adam directions
    # and the anchors are scored from their stored rows.
    as_queried: np.ndarray | None = None
    pool_ids: np.ndarray | None = None  # the held-out pool's sample ids, in column order


def embedding_scorer(encode_fn: Callable[[list[str], str], np.ndarray]) -> Scorer:
    """Scores from ``encode_fn(texts, role)``: queries with role "query", pool samples with "document"."""
    def score(queries: list[str], docs: list[str]) -> np.ndarray:
        return encode_fn(queries, "query") @ encode_fn(docs, "document").T

    return score


def bm25_scorer(queries: list[str], docs: list[str]) -> np.ndarray:
    """Lexical baseline (bm25s, English stopwords)."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(docs, stopwords="en", show_progress=False), show_progress=False)
    tokens = bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False)
    return np.stack([retriever.get_scores(t) for t in tokens]).astype(np.float32)


def random_scorer(seed: int = 0) -> Scorer:
    rng = np.random.default_rng(seed)

    def score(queries: list[str], docs: list[str]) -> np.ndarray:
        return rng.standard_normal((len(queries), len(docs))).astype(np.float32)

    return score


def agreement(scores: np.ndarray, data: EvalSet) -> dict[str, float]:
    """Agreement of (held-out anchors, held-out pool) scores with the teacher, and with its as-queried view."""
    row = agreement_table(data.teacher, scores)
    if data.as_queried is not None:
        row["spearman_as_queried"] = float(np.mean(per_query_spearman(data.as_queried, scores)))
    return row


def evaluate(method: Scorer, data: EvalSet) -> dict[str, float]:
    row = agreement(method(data.anchor_texts, data.pool_texts), data) if len(data.anchor_texts) else {}
    if data.probe_texts:
        s = method(data.probe_texts, data.corpus_texts)
        top = np.argsort(-s, axis=1)[:, : data.k]
        row["planted_recall"] = planted_recall(data.corpus_ids[top].tolist(), data.probe_relevant, data.k)
    return row


def format_table(table: dict[str, dict[str, float]]) -> str:
    cols = ["spearman", "kendall", "agg_spearman", "ndcg10", "recall10", "recall100", "planted_recall", "spearman_as_queried"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for method, row in table.items():
        cells = [f"{row[c]:.3f}" if isinstance(row.get(c), float) and not np.isnan(row[c]) else "—" for c in cols]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
