"""The teacher's rankings: which pool samples each query or anchor is most and least aligned with.

Anchors are pool samples whose stored gradients act as queries; they supervise the encoder. The
pool is split into train and held-out samples, and anchors are chosen, by a hash of the sample
id alone, so both are stable when the corpus grows: an incremental update and a full rebuild
agree on them. Per query the database holds:

* ``top``: the teacher's top-k over the whole store (an anchor itself excluded),
* ``bottom``: the most negative scores,
* ``random``: anchors only, pool samples drawn at random, with their exact scores,
* ``eval``/``eval_ceiling``: held-out anchors against a held-out pool sample, scored in full
  under the store's projection and under a second seed (the teacher's noise ceiling),
* ``eval_as_queried``: with Adam-preconditioned pool rows and stored anchors, the same pairs with
  each held-out anchor scored from its plain gradient, as a user query is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from influcoder_dagster.teacher.scoring import Ranked

BUCKETS = 10_000
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _bucket(sample_ids: np.ndarray, salt: int) -> np.ndarray:
    """A hash bucket in [0, BUCKETS) per id (splitmix64 finaliser); each ``salt`` is an independent draw."""
    u = np.uint64
    with np.errstate(over="ignore"):
        z = np.asarray(sample_ids, dtype=np.int64).astype(u) + u(salt + 1) * _MIX
        z = (z ^ (z >> u(30))) * u(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> u(27))) * u(0x94D049BB133111EB)
        z = z ^ (z >> u(31))
    return (z % u(BUCKETS)).astype(np.int64)


def pool_split(sample_ids: np.ndarray, heldout_fraction: float) -> np.ndarray:
    """'train' or 'heldout' per sample, a function of the id alone."""
    held = _bucket(sample_ids, 0) < int(heldout_fraction * BUCKETS)
    return np.where(held, "heldout", "train")


def anchor_ids(sample_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The anchors among ``sample_ids``: a ``fraction`` of them, chosen by hash."""
    ids = np.asarray(sample_ids, dtype=np.int64)
    return np.sort(ids[_bucket(ids, 1 + seed) < int(fraction * BUCKETS)])


def anchor_query_id(sample_id: int) -> str:
    return f"anchor-{int(sample_id)}"


def anchor_sample_id(query_id: str) -> int:
    """The inverse of :func:`anchor_query_id`."""
    return int(query_id.removeprefix("anchor-"))


def eval_pool(sample_ids: np.ndarray, splits: np.ndarray, anchors: set[int], size: int, seed: int) -> np.ndarray:
    """Up to ``size`` held-out, non-anchor samples (lowest hash first) that held-out anchors are scored against."""
    ids = np.asarray(sample_ids, dtype=np.int64)
    keep = (splits == "heldout") & ~np.isin(ids, np.fromiter(anchors, dtype=np.int64, count=len(anchors)))
    cand = ids[keep]
    return np.sort(cand[np.argsort(_bucket(cand, 2 + seed), kind="stable")[:size]])


def random_candidates(anchor: int, pool: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` pool samples drawn for one anchor, reproducibly (seeded by the anchor's id)."""
    pool = pool[pool != anchor]
    rng = np.random.default_rng([seed, int(anchor) % (2**32)])
    return rng.choice(pool, size=min(n, len(pool)), replace=False)


@dataclass
class ScoreRows:
    """Score rows to write, one NumPy chunk per list until they become one Arrow table: as Python
    lists the 16 million rows of 100,000 samples held over a GB of boxed ints and floats."""

    chunks: list[tuple[str, str, np.ndarray, np.ndarray]] = field(default_factory=list)  # (query_id, kind, ids, scores)

    def add(self, query_id: str, ids: np.ndarray, scores: np.ndarray, kind: str, ascending: bool = False) -> None:
        """Rows ranked 1.. by score, descending (``ascending`` for bottom lists: most negative first); id -1 is padding."""
        keep = np.asarray(ids) >= 0
        ids, scores = np.asarray(ids)[keep], np.asarray(scores)[keep]
        order = np.argsort(scores if ascending else -scores, kind="stable")
        self.chunks.append((query_id, kind, ids[order].astype(np.int64), scores[order].astype(np.float32)))

    def add_ranked(self, query_ids: list[str], top: Ranked, bottom: Ranked) -> None:
        for i, qid in enumerate(query_ids):
            self.add(qid, top.ids[i], top.scores[i], "top")
            self.add(qid, bottom.ids[i], bottom.scores[i], "bottom", ascending=True)

    def table(self, run_id: str) -> pa.Table:
        """The ``scores`` table's columns; the string columns are built from one copy of each value."""
        lengths = np.array([len(c[2]) for c in self.chunks], dtype=np.int64)
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)
        return pa.table({
            "query_id": _repeated([c[0] for c in self.chunks], lengths), "sample_id": _joined([c[2] for c in self.chunks], np.int64),
            "score": _joined([c[3] for c in self.chunks], np.float32),
            "rank": pa.array((np.arange(len(first)) - first + 1).astype(np.int32)),
            "kind": _repeated([c[1] for c in self.chunks], lengths), "run_id": _repeated([run_id], np.array([len(first)])),
        })

    def __len__(self) -> int:
        return sum(len(c[2]) for c in self.chunks)


def _joined(parts: list[np.ndarray], dtype: type) -> pa.Array:
    return pa.array(np.concatenate(parts) if parts else np.zeros(0, dtype=dtype))


def _repeated(values: list[str], lengths: np.ndarray) -> pa.Array:
    """``values[i]`` repeated ``lengths[i]`` times, as a plain string column."""
    names, codes = np.unique(np.array(values, dtype=object), return_inverse=True)
    indices = np.repeat(codes.astype(np.int32), lengths)
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(names.tolist(), pa.string())).cast(pa.string())
