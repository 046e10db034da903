"""The teacher's score between any two pool samples, read from the gradient store.

The rankings database holds each anchor's candidate lists. In-batch distillation also needs the
teacher's score between any two items of a training batch (every item against every other),
and that is one dot product of their stored rows, scored exactly as the rankings stage scores
an anchor: the query side optionally preconditioned, then the cosine.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from influcoder_dagster.core.config import Config
from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.teacher.preconditioner import read_preconditioner
from influcoder_dagster.teacher.query_cache import read_anchor_gradients
from influcoder_dagster.teacher.query_gradients import plain_anchor_gradients
from influcoder_dagster.teacher.scoring import apply_preconditioner, full_scores
from influcoder_dagster.teacher.store import open_store


class PairTeacher:
    """``teacher(query_ids, sample_ids)`` -> (queries, samples) teacher scores.

    ``query_rows`` (sample id -> gradient) replaces the store's row on the query side: the anchors'
    plain gradients when the pool's rows are Adam directions. Only those samples can then be queries.
    """

    def __init__(self, store: Any, inverse: np.ndarray | None = None, damping: float | None = None,
                 query_rows: dict[int, np.ndarray] | None = None) -> None:
        """``inverse``: the rankings' ``(F + lambda I)^-1`` (estimated with ``damping``), or None for plain cosines."""
        self.store, self.inverse, self.damping, self.query_rows = store, inverse, damping, query_rows

    @property
    def any_sample_as_query(self) -> bool:
        return self.query_rows is None

    def query_side(self, rows: np.ndarray) -> np.ndarray:
        """Query rows as the teacher scores them: preconditioned, when it is."""
        return rows if self.inverse is None else apply_preconditioner(rows, self.inverse)

    def __call__(self, query_ids: np.ndarray, sample_ids: np.ndarray) -> np.ndarray:
        if self.query_rows is None:
            queries = self.store.lookup(query_ids)
        else:
            missing = [int(q) for q in query_ids if int(q) not in self.query_rows]
            if missing:
                raise MissingUpstreamError(f"no query-side gradient for samples {missing[:5]}", "influence_rankings")
            queries = np.stack([self.query_rows[int(q)] for q in query_ids])
        return full_scores(self.query_side(queries), self.store.lookup(sample_ids))


def pair_teacher_for(cfg: Config, paths: Paths, store_key: str) -> PairTeacher:
    """Teacher scores between any two samples, from the very store the rankings were scored on."""
    store = open_store(paths)
    if store.root.name != store_key:
        raise MissingUpstreamError(f"the gradient store is now {store.root.name}, but the rankings were scored on {store_key}",
                                   "influence_rankings")
    query_rows = read_anchor_gradients(store.root) if plain_anchor_gradients(cfg) else None
    if not cfg.rankings.precondition:
        return PairTeacher(store, query_rows=query_rows)
    inverse = read_preconditioner(store)
    if inverse is None:
        raise MissingUpstreamError("the rankings are preconditioned but no preconditioner is beside the store", "influence_rankings")
    return PairTeacher(store, inverse, cfg.rankings.damping, query_rows)
