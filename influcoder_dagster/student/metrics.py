"""Ranking agreement between a method and the teacher, and recall of planted ground truth.

Rank correlations and NDCG come from scipy and scikit-learn; recall is a set overlap.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from influcoder_dagster.teacher.scoring import unit_rows


def per_query_spearman(teacher: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Spearman correlation per row of two (queries, candidates) score matrices; 0 for a constant row."""
    from scipy.stats import spearmanr

    with _constant_rows_allowed():
        return np.array([_finite(spearmanr(t, o).statistic) for t, o in zip(teacher, other, strict=True)])


def per_query_kendall(teacher: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Kendall's tau per row; 0 for a constant row."""
    from scipy.stats import kendalltau

    with _constant_rows_allowed():
        return np.array([_finite(kendalltau(t, o).statistic) for t, o in zip(teacher, other, strict=True)])


@contextmanager
def _constant_rows_allowed() -> Iterator[None]:
    """A constant row (BM25 with no shared term, say) has no rank correlation and counts as 0, so
    scipy's warning about it is not news."""
    from scipy.stats import ConstantInputWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        yield


def aggregated_spearman(teacher: np.ndarray, other: np.ndarray) -> float:
    """Spearman of the anchor-averaged scores: does a method agree on which samples matter overall?"""
    from scipy.stats import spearmanr

    return _finite(spearmanr(teacher.mean(0), other.mean(0)).statistic)


def ndcg_at_k(teacher: np.ndarray, other: np.ndarray, k: int = 10) -> float:
    """NDCG@k of ``other``'s ranking with the teacher's rank-based gains (top item gain n, last 0)."""
    from sklearn.metrics import ndcg_score

    gains = np.argsort(np.argsort(teacher, axis=1), axis=1).astype(float)
    return float(ndcg_score(gains, other, k=k))


def recall_at_k(teacher: np.ndarray, other: np.ndarray, k: int) -> float:
    """Mean share of the teacher's top-k that ``other``'s top-k also contains."""
    k = min(k, teacher.shape[1])
    t = np.argsort(-teacher, axis=1)[:, :k]
    o = np.argsort(-other, axis=1)[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(t, o, strict=True)]))


def planted_recall(retrieved: Sequence[Sequence[int]], relevant: Sequence[set[int]], k: int) -> float:
    """Mean over queries of |top-k ∩ relevant| / min(k, |relevant|)."""
    vals = [len(set(list(r)[:k]) & rel) / min(k, len(rel)) for r, rel in zip(retrieved, relevant, strict=True) if rel]
    return float(np.mean(vals)) if vals else float("nan")


AGREEMENT_KEYS = ("spearman", "kendall", "agg_spearman", "ndcg10", "recall10", "recall100")


def agreement_table(teacher: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """The standard row of the evaluation table for one method; all NaN when ``other`` holds a
    non-finite score (a diverged encoder), which the quality gate then refuses."""
    if not np.isfinite(other).all():
        return dict.fromkeys(AGREEMENT_KEYS, float("nan"))
    return {
        "spearman": float(np.mean(per_query_spearman(teacher, other))),
        "kendall": float(np.mean(per_query_kendall(teacher, other))),
        "agg_spearman": aggregated_spearman(teacher, other),
        "ndcg10": ndcg_at_k(teacher, other, 10),
        "recall10": recall_at_k(teacher, other, 10),
        "recall100": recall_at_k(teacher, other, 100),
    }


def _finite(x: float) -> float:
    x = float(x)
    return 0.0 if np.isnan(x) else x


def mean_cosine(pred: np.ndarray, targets: np.ndarray, block_rows: int = 8192) -> float:
    """Mean over rows of the cosine between ``pred`` and ``targets`` (a block of rows at a time: no
    unit copies of 100,000 x 1,024 arrays)."""
    total = sum(float((unit_rows(pred[i : i + block_rows]) * unit_rows(targets[i : i + block_rows])).sum())
                for i in range(0, len(pred), block_rows))
    return total / max(len(pred), 1)
