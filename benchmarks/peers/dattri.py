"""dattri (0.3.0) as a per-sample gradient extractor for ``benchmarks/teacher.py``.

What dattri's TRAK/TracIn attributors do to get projected training gradients, run directly:

* :class:`dattri.task.AttributionTask` with a per-sample target function (one sample's mean
  next-token loss, labels = input ids, pad positions masked, through ``torch.func.functional_call``
  of the HF model); ``task.get_grad_target_func(in_dims=(None, 0))`` ``vmap``s ``torch.func.grad``
  of it over the batch. dattri differentiates the parameters with ``requires_grad``, so every other
  parameter is frozen first; the weights go in layer-split (``task.get_param(layer_split=True)``,
  a tuple of per-weight vectors) and the per-weight gradients are concatenated;
* dattri's CPU projector :class:`dattri.func.projection.BasicProjector` (what ``random_project``
  builds on CPU): a dense Gaussian sketch, seed 0, generated in blocks of ``block_size`` columns.

Measured alternatives, both slower at the same result: ``layer_name=`` (dattri's ``partial_param``
copies every model parameter into one flat vector per call; ~20x the gradient time here) and one
flat parameter vector (~2.5x). ``random_project`` fixes ``block_size=100``, so every batch would
regenerate ``dim / 100`` blocks of ``grad_dim x 100`` normals; here the projector is built once with
as large a block as a quarter of the free memory allows (as ``trak.py`` does). Same sketch
distribution; only the generation schedule differs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from dattri.func.projection import BasicProjector, ProjectionType
from dattri.task import AttributionTask

from benchmarks.peers.common import tracked_linear_names
from influcoder_dagster.data.tokens import length_sorted_batches, pad_batch


def prepare(model: Any, tokenizer: Any, dim: int, target: str = "weights") -> Callable[[list[Any], int], np.ndarray]:
    """dattri's task, gradient function and projector; the returned ``extract(encoded, batch_size)``
    gives ``(len(encoded), dim)`` float32 projected per-sample gradients of the mean next-token loss."""
    model.eval()
    wrt = {f"{name}.weight" for name in tracked_linear_names(model, target)}
    for name, p in model.named_parameters():
        p.requires_grad_(name in wrt)

    def sample_loss(params: dict, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        ids, mask = data[0].unsqueeze(0), data[1].unsqueeze(0)
        logits = torch.func.functional_call(model, params, args=(),
                                            kwargs={"input_ids": ids, "attention_mask": mask}).logits[0, :-1]
        keep = mask[0, 1:].to(logits.dtype)
        token = F.cross_entropy(logits, ids[0, 1:], reduction="none")
        return (token * keep).sum() / keep.sum().clamp(min=1)

    task = AttributionTask(loss_func=sample_loss, model=model, checkpoints=model.state_dict())
    params, _ = task.get_param(ckpt_idx=0, layer_split=True)
    grad_fn = task.get_grad_target_func(in_dims=(None, 0))

    grad_dim = sum(p.numel() for p in params)
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    block = max(1, min(dim, free // 4 // (4 * grad_dim)))
    projector = BasicProjector(grad_dim, dim, seed=0, proj_type=ProjectionType.normal, device=torch.device("cpu"),
                               block_size=math.ceil(dim / math.ceil(dim / block)))

    def extract(encoded: list[Any], batch_size: int) -> np.ndarray:
        out = np.zeros((len(encoded), dim), dtype=np.float32)
        with torch.no_grad():  # torch.func.grad differentiates regardless; this only stops a stray graph
            for idx in length_sorted_batches([len(e.input_ids) for e in encoded], batch_size):
                ids, mask = pad_batch([encoded[i].input_ids for i in idx], tokenizer.pad_token_id)
                grads = torch.nan_to_num(torch.cat(grad_fn(params, (ids, mask)), dim=1))
                out[idx] = projector.project(grads, ensemble_id=0).numpy()
        return out

    return extract
