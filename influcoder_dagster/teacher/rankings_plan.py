"""What a rankings update has to do, decided before any gradient is touched (pure functions).

A rebuild happens when there is no database yet, when the gradient store (model or projection)
or the ranking options changed, or when preconditioning is on and the data changed (the Fisher
depends on every row). Otherwise only the difference is scored: see :func:`query_changes`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from influcoder_dagster.teacher.pools import anchor_query_id
from influcoder_dagster.teacher.scoring import apply_preconditioner


@dataclass(frozen=True)
class ShardChanges:
    rebuild: bool
    added: list[str]
    removed: list[str]


@dataclass(frozen=True)
class QueryChanges:
    new: list[str]  # new or changed queries: scored in full
    dropped: list[str]  # gone or changed: their rows leave the database
    dirty: list[str]  # unchanged, but a list held a removed sample: rescored in full
    merged: list[str]  # unchanged: the new shards' scores are merged into their lists

    @property
    def full(self) -> list[str]:
        return self.new + self.dirty


def shard_changes(state: dict[str, str] | None, config_hash: str, shards_now: list[str], precondition: bool) -> ShardChanges:
    previous = json.loads(state["shards"]) if state else []
    rebuild = state is None or state.get("config_hash") != config_hash or (precondition and previous != shards_now)
    previous = [] if rebuild else previous
    return ShardChanges(rebuild, [s for s in shards_now if s not in previous], [s for s in previous if s not in shards_now])


def wanted_queries(ids: np.ndarray, texts: list[str], metas: list[str], splits: np.ndarray, anchors: np.ndarray,
                   user: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every query the rankings should hold now: one anchor per chosen sample, then the user queries."""
    row_of = {int(s): i for i, s in enumerate(ids)}
    wanted = {anchor_query_id(a): {"kind": "anchor", "text": texts[row_of[int(a)]], "prompt": None, "sample_id": int(a),
                                   "split": str(splits[row_of[int(a)]]), "meta": metas[row_of[int(a)]]} for a in anchors}
    wanted.update({q["query_id"]: {"kind": "user", "text": q["text"], "prompt": q["prompt"], "sample_id": None,
                                   "split": None, "meta": q["meta"]} for q in user})
    return wanted


def query_changes(wanted: dict[str, dict[str, Any]], existing: dict[str, tuple[str, str | None]],
                  listing_removed: set[str], shards_added: bool) -> QueryChanges:
    """``existing``: query id -> (text, prompt) in the database; ``listing_removed``: queries whose
    top or bottom list holds a sample of a removed shard."""
    def same(q: str) -> bool:
        return q in existing and existing[q] == (wanted[q]["text"], wanted[q]["prompt"])

    kept = [q for q in wanted if same(q)]
    dirty = sorted(listing_removed & set(kept))
    return QueryChanges(new=[q for q in wanted if not same(q)], dropped=[q for q in existing if q not in wanted or not same(q)],
                        dirty=dirty, merged=[q for q in kept if q not in dirty] if shards_added else [])


class QuerySide:
    """Each query's gradient as the rankings score it.

    User queries: their plain gradients. Anchors: their stored rows, or their plain gradients with
    ``plain_anchors`` (LESS's asymmetry, when the pool's rows are Adam directions). Then times
    ``(F + lambda I)^-1`` when the rankings are preconditioned.
    """

    def __init__(self, wanted: dict[str, dict[str, Any]], store: Any, user: dict[str, np.ndarray], anchors: dict[str, np.ndarray],
                 plain_anchors: bool, inverse: np.ndarray | None) -> None:
        self.wanted, self.store, self.user, self.anchors = wanted, store, user, anchors
        self.plain_anchors, self.inverse = plain_anchors, inverse

    def precondition(self, rows: np.ndarray) -> np.ndarray:
        return rows if self.inverse is None else apply_preconditioner(rows, self.inverse)

    def __call__(self, qids: list[str]) -> np.ndarray:
        out = np.zeros((len(qids), self.store.dim), dtype=np.float32)
        stored = [i for i, q in enumerate(qids) if self.wanted[q]["kind"] == "anchor"]
        if stored and not self.plain_anchors:
            out[stored] = self.store.lookup(np.array([self.wanted[qids[i]]["sample_id"] for i in stored]))
        for i, q in enumerate(qids):
            if self.wanted[q]["kind"] == "user":
                out[i] = self.user[q]
            elif self.plain_anchors:
                out[i] = self.anchors[q]
        return self.precondition(out)

    def exclusions(self, qids: list[str]) -> np.ndarray:
        """Each query's own sample (an anchor never ranks itself); -1 for user queries."""
        return np.array([self.wanted[q]["sample_id"] if self.wanted[q]["sample_id"] is not None else -1 for q in qids], dtype=np.int64)
