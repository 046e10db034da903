"""Kronfluence (``kronfluence`` 1.0.1) as a per-sample gradient extractor for ``benchmarks/teacher.py``.

Kronfluence keeps no gradient store: its public outputs are factors and influence scores. The only
per-sample gradient vectors it forms are the *preconditioned query gradients* of pairwise scoring
(``compute_pairwise_scores_with_loaders``, first phase), so this runs that phase and keeps its result:

* :func:`kronfluence.analyzer.prepare_model` with a :class:`kronfluence.task.Task` whose
  ``get_influence_tracked_modules`` names exactly ``common.tracked_linear_names`` (GPT-2's Conv1D
  turned into equal ``nn.Linear`` first: Kronfluence wraps only Linear/Conv2d) and whose measurement
  is the batch sum of each sample's mean next-token loss (``common.sample_loss``);
* ``FactorArguments(strategy="identity")`` (no preconditioning, so no factors to fit) and
  ``ModuleMode.PRECONDITION_GRADIENT``: in each ``TrackedLinear``'s backward hook Kronfluence
  forms the full per-sample weight gradient (``einsum`` of output gradients and cached inputs over
  tokens; with the bias as an extra input column, which the sketch below drops), preconditions it
  (identity) and ``accumulate_iterations`` concatenates it over batches;
  ``query_gradient_low_rank=None`` (its SVD compression is for query batching, not an embedding).

Kronfluence has no random projection. Its supported per-sample gradient hook,
``Task.post_process_per_sample_gradient``, applies one here, to the full ``(B, out, in)`` gradient
it has formed: a seeded Gaussian Kronecker sketch per module, ``L.T @ G @ R`` with ``L`` of shape
``out x a`` (N(0, 1/a)) and ``R`` of shape ``in x b`` (N(0, 1/b)), ``a * b = dim // n_modules``
(norm-preserving in expectation; the same structure as LoGra, at a tiny fraction of the memory of a
dense ``d x dim`` matrix per module). So the time measured is Kronfluence's full per-sample gradients
plus that sketch; nothing is written to disk (no ``Analyzer``, so no output directory is used).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from kronfluence.analyzer import prepare_model
from kronfluence.arguments import FactorArguments, ScoreArguments
from kronfluence.module.tracked_module import ModuleMode, TrackedModule
from kronfluence.module.utils import (
    accumulate_iterations,
    finalize_all_iterations,
    prepare_modules,
    set_mode,
    update_factor_args,
    update_score_args,
)
from kronfluence.task import Task
from kronfluence.utils.constants import ACCUMULATED_PRECONDITIONED_GRADIENT_NAME

from benchmarks.peers.common import conv1d_to_linear, sample_loss, tracked_linear_names
from influcoder_dagster.data.tokens import length_sorted_batches, pad_batch


def _factor(k: int) -> tuple[int, int]:
    """``a x b = k`` with ``a`` the largest divisor of ``k`` not above its square root."""
    a = max(d for d in range(1, int(k**0.5) + 1) if k % d == 0)
    return a, k // a


class SketchedCausalLMTask(Task):
    """Mean next-token loss per sample over the tracked Linears; per-sample gradients are sketched."""

    enable_post_process_per_sample_gradient = True

    def __init__(self, names: list[str], shapes: dict[str, tuple[int, int]], per_module: int) -> None:
        self.names = names
        a, b = _factor(per_module)
        self.sketch: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, name in enumerate(names):
            gen = torch.Generator().manual_seed(i)
            d_out, d_in = shapes[name]
            self.sketch[name] = (torch.randn(d_out, a, generator=gen) / a**0.5,
                                 torch.randn(d_in, b, generator=gen) / b**0.5)

    def compute_train_loss(self, batch: Any, model: torch.nn.Module, sample: bool = False) -> torch.Tensor:
        return sample_loss(model, *batch).sum()

    def compute_measurement(self, batch: Any, model: torch.nn.Module) -> torch.Tensor:
        return sample_loss(model, *batch).sum()

    def get_influence_tracked_modules(self) -> list[str]:
        return self.names

    def get_attention_mask(self, batch: Any) -> torch.Tensor:
        return batch[1]

    def post_process_per_sample_gradient(self, module_name: str, gradient: torch.Tensor) -> torch.Tensor:
        left, right = self.sketch[module_name]
        # Kronfluence appends the bias as a last input column; the tracked parameters are weights only.
        return left.T @ gradient[..., : right.shape[0]] @ right  # (B, out, in[+1]) -> (B, a, b)


def prepare(model: Any, tokenizer: Any, dim: int, target: str = "weights") -> Callable[[list[Any], int], np.ndarray]:
    """Kronfluence's prepared model (tracked Linears, identity factors, the sketch task); the returned
    ``extract(encoded, batch_size)`` gives ``(len(encoded), ~dim)`` float32 Kronecker-sketched
    per-sample gradients."""
    names = tracked_linear_names(model, target)
    model = conv1d_to_linear(model.eval())
    modules = dict(model.named_modules())
    shapes = {n: tuple(modules[n].weight.shape) for n in names}
    task = SketchedCausalLMTask(names, shapes, max(1, dim // len(names)))
    model = prepare_model(model, task)
    update_factor_args(model, FactorArguments(strategy="identity"))
    update_score_args(model, ScoreArguments(query_gradient_low_rank=None))

    def extract(encoded: list[Any], batch_size: int) -> np.ndarray:
        set_mode(model, ModuleMode.PRECONDITION_GRADIENT, names, release_memory=True)
        prepare_modules(model, names, torch.device("cpu"))
        order: list[int] = []
        for batch in length_sorted_batches([len(e.input_ids) for e in encoded], batch_size):
            ids, mask = pad_batch([encoded[i].input_ids for i in batch], tokenizer.pad_token_id)
            model.zero_grad(set_to_none=True)
            task.compute_measurement((ids, mask), model).backward()
            accumulate_iterations(model, names)
            order.extend(batch)
        tracked = {m.name: m for m in model.modules() if isinstance(m, TrackedModule)}
        if sorted(tracked) != sorted(names):
            raise RuntimeError(f"Kronfluence tracked {sorted(tracked)[:3]}..., not the {len(names)} tracked Linears")
        grads = torch.cat([tracked[n].get_factor(ACCUMULATED_PRECONDITIONED_GRADIENT_NAME).flatten(1) for n in names], 1)
        finalize_all_iterations(model, names)
        set_mode(model, ModuleMode.DEFAULT, names, release_memory=True)
        out = np.empty((len(encoded), grads.shape[1]), dtype=np.float32)
        out[order] = grads.numpy()
        return out

    return extract
