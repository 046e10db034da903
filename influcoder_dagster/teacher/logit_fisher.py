"""The output head's preconditioner: the diagonal of the logits' empirical Fisher.

The output head's gradient of a sample is ``sum_t (p_t - y_t) h_t^T``: one row per vocabulary
entry. Influence functions score ``g_q^T F^-1 g_n``; K-FAC (Martens & Grosse, 2015) factors the
head's Fisher as ``A (x) S`` with ``S = E_t[(p_t - y_t)(p_t - y_t)^T]`` over the training tokens.
Here ``A`` is the identity and ``S`` its diagonal, ``E_t[(p_tv - y_tv)^2]``: V numbers per
checkpoint, estimated from the training rows' forward passes alone, that weight vocabulary rows by
how rarely the training set leaves that token unexplained (an inverse document frequency that the
model learned). Both sides are scaled by ``S^-1/2`` before the projection (whitening), so a stored
row's inner product with a query's is ``g_q^T S^-1 g_n`` and the sketch's error stays that of
whitened vectors (scaling the query alone by ``S^-1`` gives the same exact score, but a sketch of
it collides rare tokens' large weights with frequent tokens' mass: LDS 0.32 against 0.37 at the
same width, docs/results.md).

No library computes this factor for a Hugging Face causal LM without also forming the head's
per-sample gradients (Kronfluence and LogIX keep the full ``S``: V x V), hence the few lines here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from influcoder_dagster.core.atomic import atomic_path
from influcoder_dagster.data.tokens import Encoded, length_sorted_batches, pad_batch

DAMPING = 0.1  # lambda = DAMPING * mean_v S_vv; LDS and planted recall moved little between 0.01 and 0.1 (docs/results.md)

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def logit_fisher_sums(model: PreTrainedModel, samples: Sequence[Encoded], pad_token_id: int,
                      batch_size: int = 16) -> tuple[np.ndarray, int]:
    """``(sum over loss tokens of (p - y)^2 per vocabulary entry (float64), number of loss tokens)``."""
    import torch

    total = torch.zeros(model.get_output_embeddings().out_features, dtype=torch.float64)
    tokens = 0
    for idx in length_sorted_batches([len(s.input_ids) for s in samples], batch_size):
        batch = [samples[i] for i in idx]
        ids, mask = pad_batch([s.input_ids for s in batch], pad_token_id)
        starts = torch.tensor([max(s.loss_start, 1) for s in batch])[:, None]
        loss_mask = (mask.bool() & (torch.arange(ids.shape[1])[None, :] >= starts))[:, 1:]
        with torch.no_grad():
            err = model(input_ids=ids, attention_mask=mask).logits[:, :-1].softmax(-1)
        err.scatter_add_(-1, ids[:, 1:, None], -torch.ones(*ids[:, 1:].shape, 1))
        total += (err[loss_mask] ** 2).sum(0, dtype=torch.float64)
        tokens += int(loss_mask.sum())
    return total.numpy(), tokens


def row_scale(sums: np.ndarray, tokens: int, damping: float = DAMPING) -> np.ndarray:
    """``(S_vv + lambda)^-1/2`` with ``lambda = damping * mean_v S_vv`` (scale-free, as the projected
    Fisher's damping): what multiplies every row's logit gradients, float32."""
    if tokens <= 0:
        raise ValueError("the logits' Fisher needs at least one training token")
    diagonal = sums / tokens
    return (1.0 / np.sqrt(diagonal + damping * diagonal.mean())).astype(np.float32)


def write_logit_fisher(path: Path, sums: np.ndarray, tokens: int) -> Path:
    """The statistic (float64 sums, their token count, the damping to use) as one ``.npz``, written atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, sums=sums.astype(np.float64), tokens=tokens, damping=DAMPING)
    return path


def read_row_scale(path: str | Path) -> np.ndarray:
    """The row scale of a statistic written by :func:`write_logit_fisher`."""
    with np.load(path) as saved:
        return row_scale(saved["sums"], int(saved["tokens"]), float(saved["damping"]))


def logit_fisher_hash(path: str | Path) -> str:
    """A content hash of the statistic's values (the ``.npz`` container's bytes carry a timestamp)."""
    import hashlib

    with np.load(path) as saved:
        h = hashlib.sha256(np.ascontiguousarray(saved["sums"]).tobytes())
        h.update(f"{int(saved['tokens'])}|{float(saved['damping'])}".encode())
    return h.hexdigest()[:16]
