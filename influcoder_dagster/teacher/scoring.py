"""Teacher scores: cosine of projected gradients, streamed over the store in blocks.

One GEMM per block of store rows and a running top-k/bottom-k merge: memory is
O(queries x (block + k)), independent of the store's size, and the full score matrix never exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass
class Ranked:
    """Per query, the selected samples best-first: ``scores[q, j]`` is the score of ``ids[q, j]``; id -1 pads."""

    scores: np.ndarray  # (m, k) float32
    ids: np.ndarray  # (m, k) int64


def unit_rows(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    import torch

    t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x.float()
    return torch.nn.functional.normalize(t, dim=1, eps=1e-12)


def stream_topk(
    queries: np.ndarray,
    blocks: Iterable[tuple[np.ndarray, np.ndarray]],
    k: int,
    bottom_k: int = 0,
    exclude_ids: np.ndarray | None = None,
) -> tuple[Ranked, Ranked]:
    """Top-``k`` (highest cosine) and bottom-``bottom_k`` (most negative) store rows per query.

    ``exclude_ids[q]`` (e.g. an anchor's own sample id) is never returned for query ``q``.
    """
    import torch

    q = unit_rows(queries)
    m = q.shape[0]
    top_s = torch.full((m, 0), -torch.inf)
    top_i = torch.zeros((m, 0), dtype=torch.long)
    bot_s = torch.full((m, 0), torch.inf)
    bot_i = torch.zeros((m, 0), dtype=torch.long)
    excl = torch.as_tensor(exclude_ids, dtype=torch.long)[:, None] if exclude_ids is not None else None
    buffer: torch.Tensor | None = None
    for ids, rows in blocks:
        if len(ids) == 0:
            continue
        block_ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        # Convert fp16 -> fp32 into one reused buffer (a fresh allocation per block costs ten times
        # more in page faults than the conversion itself); dividing the scores by the row norms
        # reads the block once instead of writing a normalised copy.
        if buffer is None or buffer.shape[0] < len(ids):
            buffer = torch.empty((len(ids), q.shape[1]), dtype=torch.float32)
        g = buffer[: len(ids)]
        g.copy_(torch.from_numpy(np.ascontiguousarray(rows)))
        s = (q @ g.T) / torch.linalg.vector_norm(g, dim=1).clamp_min(1e-12)
        hit = (block_ids[None, :] == excl) if excl is not None else None
        expanded = block_ids[None, :].expand(m, -1)
        top_s, top_i = _merge(top_s, top_i, s.masked_fill(hit, -torch.inf) if hit is not None else s, expanded, k, largest=True)
        if bottom_k:
            bs = s.masked_fill(hit, torch.inf) if hit is not None else s
            bot_s, bot_i = _merge(bot_s, bot_i, bs, expanded, bottom_k, largest=False)
    return _ranked(top_s, top_i), _ranked(bot_s, bot_i)


def merge_ranked(a: Ranked, b: Ranked, k: int, largest: bool = True) -> Ranked:
    """The top-k (or bottom-k) of two per-query lists over disjoint samples, e.g. old rows + new shards."""
    import torch

    s, i = _merge(torch.from_numpy(a.scores), torch.from_numpy(a.ids), torch.from_numpy(b.scores), torch.from_numpy(b.ids), k, largest)
    return Ranked(s.numpy(), i.numpy())


def _merge(cur_s: torch.Tensor, cur_i: torch.Tensor, s: torch.Tensor, ids: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    if s.shape[1] > k:  # reduce the block to its own top-k first: the merge then sorts 2k, not k + block
        s, pos = torch.topk(s, k, dim=1, largest=largest, sorted=False)
        ids = torch.gather(ids, 1, pos)
    all_s = torch.cat([cur_s, s], dim=1)
    all_i = torch.cat([cur_i, ids], dim=1)
    kk = min(k, all_s.shape[1])
    vals, pos = torch.topk(all_s, kk, dim=1, largest=largest, sorted=True)
    return vals, torch.gather(all_i, 1, pos)


def _ranked(s: torch.Tensor, i: torch.Tensor) -> Ranked:
    """Where a query has fewer than k candidates (a tiny store, itself excluded), the tail is id -1."""
    import torch

    finite = torch.isfinite(s)
    return Ranked(s.numpy().astype(np.float32), torch.where(finite, i, -1).numpy().astype(np.int64))


def pair_scores(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Cosine of query ``j`` with each of its candidate rows: (m, d) x (m, c, d) -> (m, c)."""
    import torch

    q = unit_rows(queries)
    r = torch.nn.functional.normalize(torch.as_tensor(np.asarray(rows, dtype=np.float32)), dim=2, eps=1e-12)
    return torch.einsum("md,mcd->mc", q, r).numpy()


def full_scores(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Dense cosine matrix; for small evaluation sets only."""
    return (unit_rows(queries) @ unit_rows(rows).T).numpy()


def fisher(blocks: Iterable[tuple[np.ndarray, np.ndarray]], dim: int) -> np.ndarray:
    """The projected empirical Fisher ``G^T G / N``, accumulated block by block in float64."""
    total = np.zeros((dim, dim), dtype=np.float64)
    n = 0
    for _, rows in blocks:
        g = np.asarray(rows, dtype=np.float64)
        total += g.T @ g
        n += len(g)
    if n == 0:
        raise ValueError("cannot estimate the Fisher of an empty gradient store")
    return total / n


def inverse_preconditioner(fisher_matrix: np.ndarray, damping: float) -> np.ndarray:
    """``(F + lambda I)^-1`` (float64, symmetric), with ``lambda = damping * trace(F) / d`` (scale-free
    damping). Computed once per Fisher: every query side is then one product with it."""
    d = fisher_matrix.shape[0]
    lam = damping * float(np.trace(fisher_matrix)) / d
    return np.linalg.inv(fisher_matrix + lam * np.eye(d))


def apply_preconditioner(queries: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """``(F + lambda I)^-1 q`` per query row. Scoring the result by cosine against the store gives the
    influence-function score ``q^T (F + lambda I)^-1 g`` normalised by ``|g|`` (and by a per-query
    constant that does not change a query's ranking)."""
    return (np.asarray(queries, dtype=np.float64) @ inverse).astype(np.float32)


def precondition(queries: np.ndarray, fisher_matrix: np.ndarray, damping: float) -> np.ndarray:
    """``apply_preconditioner`` for a one-off Fisher."""
    return apply_preconditioner(queries, inverse_preconditioner(fisher_matrix, damping))
