"""The teacher's rankings: which pool samples each query or anchor is most and least aligned with.

Anchors are pool samples whose stored gradients act as queries; they supervise the encoder. The
pool is split into train and held-out samples by sample id, and anchors inherit the split of their
sample, so the evaluation never sees a sample the encoder trained on. Per query the table holds:

* ``top``: the teacher's top-k over the whole store (the anchor itself excluded),
* ``bottom``: the most negative scores (anchors only),
* ``random``: uniformly drawn pool samples with their exact scores (anchors only),
* ``eval``: held-out anchors against a fixed held-out pool sample, scored in full.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .scoring import full_scores, pair_scores, stream_topk
from .store import GradientStore

SPLIT_BUCKETS = 10_000


def pool_split(sample_ids: np.ndarray, heldout_fraction: float) -> np.ndarray:
    """'train' or 'heldout' per sample, stable under corpus growth (a function of the id alone)."""
    held = (np.asarray(sample_ids, dtype=np.int64) % SPLIT_BUCKETS) < int(heldout_fraction * SPLIT_BUCKETS)
    return np.where(held, "heldout", "train")


@dataclass
class Anchors:
    sample_ids: np.ndarray
    splits: np.ndarray

    @property
    def query_ids(self) -> list[str]:
        return [f"anchor-{int(s)}" for s in self.sample_ids]


def pick_anchors(sample_ids: np.ndarray, splits: np.ndarray, n: int, seed: int, exclude: set[int] | None = None) -> Anchors:
    """``n`` anchors drawn from the pool in proportion to its split."""
    rng = np.random.default_rng(seed)
    eligible = np.array([i for i, s in enumerate(sample_ids) if not exclude or int(s) not in exclude])
    chosen = np.sort(rng.choice(eligible, size=min(n, len(eligible)), replace=False))
    return Anchors(np.asarray(sample_ids)[chosen], np.asarray(splits)[chosen])


@dataclass
class ScoreRows:
    query_id: list[str] = field(default_factory=list)
    sample_id: list[int] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    rank: list[int] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)

    def add(self, query_id: str, ids: np.ndarray, scores: np.ndarray, kind: str) -> None:
        order = np.argsort(-scores, kind="stable")
        self.query_id += [query_id] * len(ids)
        self.sample_id += [int(x) for x in ids[order]]
        self.score += [float(x) for x in scores[order]]
        self.rank += list(range(1, len(ids) + 1))
        self.kind += [kind] * len(ids)

    def __len__(self) -> int:
        return len(self.query_id)


def score_anchors(store: GradientStore, anchors: Anchors, pool_ids: np.ndarray, pool_splits: np.ndarray,
                  top_k: int, n_bottom: int, n_random: int, eval_pool_size: int, block_rows: int, seed: int) -> ScoreRows:
    rows = ScoreRows()
    if len(anchors.sample_ids) == 0:
        return rows
    grads = store.lookup(anchors.sample_ids)
    top, bottom = stream_topk(grads, store.iter_blocks(block_rows), top_k, n_bottom, exclude_ids=anchors.sample_ids)
    rng = np.random.default_rng(seed + 1)
    train_pool = pool_ids[pool_splits == "train"]
    randoms = []
    for i, sid in enumerate(anchors.sample_ids):
        pool = train_pool if anchors.splits[i] == "train" else pool_ids
        pool = pool[pool != sid]
        randoms.append(rng.choice(pool, size=min(n_random, len(pool)), replace=False))
    random_ids = np.stack(randoms) if randoms else np.zeros((0, 0), dtype=np.int64)
    random_scores = pair_scores(grads, store.lookup(random_ids.ravel()).reshape(*random_ids.shape, store.dim))
    for i, qid in enumerate(anchors.query_ids):
        rows.add(qid, top.ids[i], top.scores[i], "top")
        rows.add(qid, bottom.ids[i], bottom.scores[i], "bottom")
        rows.add(qid, random_ids[i], random_scores[i], "random")
    held = np.flatnonzero(anchors.splits == "heldout")
    if len(held):
        eval_ids = eval_pool(pool_ids, pool_splits, set(anchors.sample_ids.tolist()), eval_pool_size, seed)
        s = full_scores(grads[held], store.lookup(eval_ids))
        for j, i in enumerate(held):
            rows.add(anchors.query_ids[i], eval_ids, s[j], "eval")
    return rows


def eval_pool(pool_ids: np.ndarray, pool_splits: np.ndarray, anchor_ids: set[int], size: int, seed: int) -> np.ndarray:
    """The held-out pool sample that held-out anchors are scored against in full."""
    held = np.array([s for s, sp in zip(pool_ids, pool_splits, strict=True) if sp == "heldout" and int(s) not in anchor_ids], dtype=np.int64)
    rng = np.random.default_rng(seed + 2)
    return np.sort(rng.choice(held, size=min(size, len(held)), replace=False)) if len(held) else held


def score_user_queries(store: GradientStore, query_ids: list[str], grads: np.ndarray, top_k: int, block_rows: int) -> ScoreRows:
    rows = ScoreRows()
    if not query_ids:
        return rows
    top, _ = stream_topk(grads, store.iter_blocks(block_rows), top_k)
    for i, qid in enumerate(query_ids):
        rows.add(qid, top.ids[i], top.scores[i], "top")
    return rows
