"""TRAK (``traker`` 0.3.2) as a per-sample gradient extractor for ``benchmarks/teacher.py``.

TRAK's featurizer is a gradient computer plus a projector; this runs those two pieces directly
(``TRAKer.featurize`` would add its on-disk saver and out-to-loss weights, which are not gradients):

* :class:`trak.gradient_computers.FunctionalGradientComputer`: ``torch.func.grad`` of a model output
  function, ``vmap``-ed over the batch. The output function here is a custom
  :class:`trak.modelout_functions.AbstractModelOutput`: one sample's mean next-token loss (labels =
  input ids, pad positions masked), through ``torch.func.functional_call`` of the HF model;
* :class:`trak.projectors.BasicProjector` (its CPU projector; ``CudaProjector`` needs CUDA and
  ``fast_jl``): a dense Gaussian sketch, seed 0, generated in blocks of ``block_size`` columns.

Deviations from a stock TRAK run: ``grad_wrt`` names the tracked weights only, and the computer's
functional weights are cut down to them (stock TRAK differentiates every parameter, embeddings
included, then drops the others), so vmap only materializes the gradients that are kept. The
sketch is one block (generated once) when ``grad_dim x dim`` floats fit in a quarter of the free
memory; otherwise TRAK regenerates each block's sketch on every batch, which it does by design.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from trak.gradient_computers import FunctionalGradientComputer
from trak.modelout_functions import AbstractModelOutput
from trak.projectors import BasicProjector, ProjectionType

from benchmarks.peers.common import tracked_linear_names
from influcoder_dagster.data.tokens import length_sorted_batches, pad_batch


class CausalLMLossOutput(AbstractModelOutput):
    """TRAK model output: one sample's mean next-token loss (called per sample under vmap)."""

    def __init__(self) -> None:
        super().__init__()

    @staticmethod
    def get_output(model: Any, weights: dict, buffers: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids, mask = input_ids.unsqueeze(0), attention_mask.unsqueeze(0)
        logits = torch.func.functional_call(model, (weights, buffers), args=(),
                                            kwargs={"input_ids": ids, "attention_mask": mask}).logits[0, :-1]
        keep = mask[0, 1:].to(logits.dtype)
        token = F.cross_entropy(logits, ids[0, 1:], reduction="none")
        return (token * keep).sum() / keep.sum().clamp(min=1)

    def get_out_to_loss_grad(self, model: Any, weights: dict, buffers: dict, batch: Any) -> torch.Tensor:
        return torch.ones(batch[0].shape[0], 1)  # the output already is the loss


def prepare(model: Any, tokenizer: Any, dim: int, target: str = "weights") -> Callable[[list[Any], int], np.ndarray]:
    """TRAK's gradient computer and projector (its first sketch block generated here); the returned
    ``extract(encoded, batch_size)`` gives ``(len(encoded), dim)`` float32 projected per-sample
    gradients of the mean next-token loss."""
    model.eval()
    wrt = [f"{name}.weight" for name in tracked_linear_names(model, target)]
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    grad_dim = sum(params[n].numel() for n in wrt)
    computer = FunctionalGradientComputer(model, CausalLMLossOutput(), grad_dim, torch.float32, "cpu", grad_wrt=wrt)
    computer.func_weights = {n: params[n].detach() for n in wrt}  # the untracked ones stay the module's constants

    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    block = max(1, min(dim, free // 4 // (4 * grad_dim)))
    projector = BasicProjector(grad_dim, dim, seed=0, proj_type=ProjectionType.normal, device="cpu",
                               block_size=math.ceil(dim / math.ceil(dim / block)))

    def extract(encoded: list[Any], batch_size: int) -> np.ndarray:
        out = np.zeros((len(encoded), dim), dtype=np.float32)
        with torch.no_grad():  # torch.func.grad differentiates regardless; this only stops a stray graph
            for idx in length_sorted_batches([len(e.input_ids) for e in encoded], batch_size):
                batch = pad_batch([encoded[i].input_ids for i in idx], tokenizer.pad_token_id)
                grads = computer.compute_per_sample_grad(batch)
                out[idx] = projector.project(grads, model_id=0).numpy()
        return out

    return extract
