"""Output-head gradients kept as compressed token factors, scored against a query's exact factors.

A sample's head gradient is ``G = sum_t delta_t h_t^T`` (:mod:`influcoder_dagster.teacher.head_exact`).
A store sample keeps, per loss token, the ``top_k`` largest entries of ``delta_t`` (ids and values)
and ``h_t`` in a rank-``rank`` basis ``B`` (the top right singular vectors of hidden states of the
shard's own texts), so ``G_hat = sum_t sparse(delta_t) (B c_t)^T``. A query keeps its exact
factors, and ``<G_q, G_hat> = sum_{t, s} (delta_t[ids_s] . values_s)((B^T h_t) . c_s)``: sparse
gathers and a rank-``rank`` product per token pair, no forward pass of the candidate. Its cosine
divides by the query's exact norm and the candidate's compressed one (the direction the store
keeps). On SmolLM2's head 8 entries and rank 32 (about 3 KB a short passage) kept 0.90 of a
300-sample pool's exact top-10 with both sides compressed (docs/results.md).

Hand-written for the reason ``head_exact`` is: no library scores head gradients from token factors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from influcoder_dagster.teacher.head_exact import TokenFactors, squared_norms

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class CompressedFactors:
    """The loss tokens of ``n`` samples: top logit-gradient entries ``ids``/``values`` (tokens, k),
    head inputs in the basis ``coords`` (tokens, rank), each token's sample ``owner`` (tokens,)."""

    ids: torch.Tensor
    values: torch.Tensor
    coords: torch.Tensor
    owner: torch.Tensor
    n: int


def fit_basis(hidden: torch.Tensor, rank: int) -> torch.Tensor:
    """(d, r) orthonormal basis of the top right singular vectors of ``hidden`` (tokens, d), not
    centred (inner products keep the mean direction); ``r`` is ``rank`` at most."""
    import torch

    rank = min(rank, *hidden.shape)
    return torch.linalg.svd(hidden.double(), full_matrices=False).Vh[:rank].T.float().contiguous()


def compress(factors: TokenFactors, basis: torch.Tensor, top_k: int) -> CompressedFactors:
    """The ``top_k`` largest-magnitude logit-gradient entries of each token and its head input's
    coordinates in ``basis``."""
    k = min(top_k, factors.deltas.shape[1])
    ids = factors.deltas.abs().topk(k, dim=1).indices
    return CompressedFactors(ids, factors.deltas.gather(1, ids), factors.hidden @ basis, factors.owner, factors.n)


def compressed_squared_norms(c: CompressedFactors, vocab: int) -> torch.Tensor:
    """(n,) squared norms of the samples' compressed gradients ``G_hat``."""
    import torch

    sparse = torch.zeros(len(c.ids), vocab, dtype=c.values.dtype).scatter_(1, c.ids, c.values)
    return squared_norms(TokenFactors(sparse, c.coords, c.owner, c.n))


def inner_products(query: TokenFactors, candidates: CompressedFactors, basis: torch.Tensor) -> torch.Tensor:
    """(query.n, candidates.n) inner products of the queries' exact gradients with the candidates'
    compressed ones: a sparse (candidate tokens x vocab) product with the queries' logit gradients."""
    import torch

    tokens, k = candidates.ids.shape
    rows = torch.arange(tokens).repeat_interleave(k)
    sparse = torch.sparse_coo_tensor(torch.stack([rows, candidates.ids.reshape(-1)]), candidates.values.reshape(-1).float(),
                                     (tokens, query.deltas.shape[1]), check_invariants=False)
    deltas = torch.sparse.mm(sparse, query.deltas.T).T  # (query tokens, candidate tokens)
    pairs = deltas * ((query.hidden @ basis) @ candidates.coords.float().T)
    per_query = torch.zeros(query.n, tokens, dtype=pairs.dtype).index_add_(0, query.owner, pairs)
    return torch.zeros(query.n, candidates.n, dtype=pairs.dtype).index_add_(1, candidates.owner, per_query)
