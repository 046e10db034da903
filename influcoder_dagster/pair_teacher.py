"""The teacher's score between any two pool samples, read from the gradient store.

The rankings database holds each anchor's candidate lists. In-batch distillation also needs the
teacher's score between any two items of a training batch (every item against every other),
and that is one dot product of their stored rows, scored exactly as the rankings stage scores
an anchor: the query side optionally preconditioned, then the cosine.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class PairTeacher:
    """``teacher(query_ids, sample_ids)`` -> (queries, samples) teacher scores.

    ``query_rows`` (sample id -> gradient) replaces the store's row on the query side: the anchors'
    plain gradients when the pool's rows are Adam directions. Only those samples can then be queries.
    """

    def __init__(self, store: Any, precondition_damping: float | None = None, block_rows: int = 4096,
                 query_rows: dict[int, np.ndarray] | None = None) -> None:
        from .scoring import fisher, inverse_preconditioner

        self.store = store
        self.damping = precondition_damping
        self.inverse = (inverse_preconditioner(fisher(store.iter_blocks(block_rows), store.dim), precondition_damping)
                        if precondition_damping is not None else None)
        self.query_rows = query_rows

    @property
    def any_sample_as_query(self) -> bool:
        return self.query_rows is None

    def query_side(self, rows: np.ndarray) -> np.ndarray:
        """Query rows as the teacher scores them: preconditioned, when it is."""
        from .scoring import apply_preconditioner

        return rows if self.inverse is None else apply_preconditioner(rows, self.inverse)

    def __call__(self, query_ids: np.ndarray, sample_ids: np.ndarray) -> np.ndarray:
        from .scoring import full_scores

        if self.query_rows is None:
            queries = self.store.lookup(query_ids)
        else:
            missing = [int(q) for q in query_ids if int(q) not in self.query_rows]
            if missing:
                raise KeyError(f"no query-side gradient for samples {missing[:5]}; re-materialize 'influence_rankings'")
            queries = np.stack([self.query_rows[int(q)] for q in query_ids])
        return full_scores(self.query_side(queries), self.store.lookup(sample_ids))
