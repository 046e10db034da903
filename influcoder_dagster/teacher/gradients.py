"""Batched, projected per-sample loss gradients of a causal LM, through forward hooks.

Each tracked Linear/Conv1D keeps its (projected) input from the forward pass and its output;
one ``torch.autograd.grad`` call then returns the output gradients ``delta`` of every tracked
layer at once. Parameters stay frozen, so the backward pass never computes weight gradients,
only what the per-sample factors need. The batch loss is the sum of each sample's mean-token
loss, so a sample's gradient does not depend on what else is in its batch; padded positions
are masked out of both the loss and the inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from tqdm.auto import tqdm

from influcoder_dagster.core.errors import ConfigError, MissingUpstreamError
from influcoder_dagster.data.tokens import Encoded, length_sorted_batches, pad_batch
from influcoder_dagster.teacher.lora import adam_direction, is_lora_module
from influcoder_dagster.teacher.projection import ProjectionSpec, Projector, plan_projection

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def trackable_modules(model: PreTrainedModel, target: str = "weights") -> list[tuple[str, int, int]]:
    """``(name, d_in, d_out)`` of what ``target`` attributes: every Linear and GPT-2 Conv1D (whose
    weight is stored in x out) but the output head (``weights``), the LoRA adapters' A and B
    matrices (``lora``), or the output head alone (``head``: its gradient needs no backward pass
    past the logits)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if target not in ("weights", "lora", "head"):
        raise ConfigError(f"projection.target={target!r}: use 'weights', 'lora' or 'head'")
    out = []
    head = model.get_output_embeddings()
    for name, mod in model.named_modules():
        if (mod is head) != (target == "head") or (target == "lora") != is_lora_module(name):
            continue
        if isinstance(mod, torch.nn.Linear):
            out.append((name, mod.in_features, mod.out_features))
        elif isinstance(mod, Conv1D):
            out.append((name, mod.weight.shape[0], mod.weight.shape[1]))
    return out


def projection_for(model: PreTrainedModel, kind: str, dim: int, seed: int, normalize_modules: bool = False,
                   target: str = "weights") -> ProjectionSpec:
    return plan_projection(kind, dim, seed, trackable_modules(model, target), normalize_modules)


class RowExtractor(Protocol):
    """What turns samples into store rows: one model's :class:`GradientExtractor`, or several checkpoints'."""

    @property
    def dim(self) -> int: ...

    def batch(self, samples: Sequence[Encoded]) -> torch.Tensor: ...


class GradientExtractor:
    """Projected per-sample gradients for batches of :class:`Encoded` samples."""

    def __init__(self, model: PreTrainedModel, spec: ProjectionSpec, pad_token_id: int,
                 adam: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                 output_scale: dict[str, torch.Tensor] | None = None) -> None:
        """``adam``: module name -> the warm-up's (exp_avg, exp_avg_sq); those modules' per-sample
        gradients are formed in full and turned into the Adam update direction before the
        projection (CountSketch only: LoGra would project the input before the gradient exists).
        ``output_scale``: module name -> a (d_out,) vector multiplying its output gradients before
        the projection: a diagonal preconditioner (``teacher.logit_fisher`` whitens both sides with it)."""
        self.model = model.eval()
        self.spec = spec
        self.projector = Projector(spec)
        self.pad_token_id = pad_token_id
        self.adam = adam or {}
        self.output_scale = output_scale or {}
        if self.adam and spec.kind != "countsketch":
            raise ConfigError("Adam preconditioning needs projection.kind = 'countsketch'")
        for p in model.parameters():
            p.requires_grad_(False)
        modules = dict(model.named_modules())
        missing = [m.name for m in spec.modules if m.name not in modules]
        if missing:
            raise MissingUpstreamError(f"the projection names modules this model lacks: {missing[:3]} (was the store built on another model?)",
                                       "projected_gradients")
        self._tracked = {m.name: modules[m.name] for m in spec.modules}
        head = model.get_output_embeddings()
        # Parameters are frozen, so the graph must start somewhere: at the embeddings, so autograd
        # reaches every layer, or, when the output head alone is tracked, at its own output (the
        # forward then records no graph below the logits).
        self._graph_start = head if set(self._tracked.values()) == {head} else model.get_input_embeddings()
        self._inputs: dict[str, list[torch.Tensor]] = {}
        self._outputs: dict[str, list[torch.Tensor]] = {}
        self._mask: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return self.spec.dim

    def _hook(self, name: str) -> Callable:
        def forward_hook(module, args, output):  # noqa: ANN001 - torch hook signature
            x = args[0] * self._mask  # padded positions contribute nothing
            self._inputs.setdefault(name, []).append(self.projector.project_input(name, x))
            self._outputs.setdefault(name, []).append(output)

        return forward_hook

    def _start_graph(self, module, args, output):  # noqa: ANN001
        return output.requires_grad_(True)

    def batch(self, samples: Sequence[Encoded]) -> torch.Tensor:
        """(B, dim) float32 projected gradients of each sample's mean-token loss."""
        import torch
        import torch.nn.functional as F

        if min(len(s.input_ids) for s in samples) < 2:
            raise ValueError("a sample needs at least 2 tokens to have a next-token loss")
        ids, mask = pad_batch([s.input_ids for s in samples], self.pad_token_id)
        width = ids.shape[1]
        starts = torch.tensor([max(s.loss_start, 1) for s in samples])[:, None]  # token t is predicted from t-1
        loss_mask = (mask.bool() & (torch.arange(width)[None, :] >= starts)).float()
        self._mask = mask[..., None].float()
        handles = [mod.register_forward_hook(self._hook(name)) for name, mod in self._tracked.items()]
        handles.append(self._graph_start.register_forward_hook(self._start_graph))
        try:
            with torch.enable_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits
                token_loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
                token_loss = token_loss.view(len(samples), width - 1) * loss_mask[:, 1:]
                loss = (token_loss.sum(1) / loss_mask[:, 1:].sum(1).clamp(min=1)).sum()
                names = list(self._tracked)
                outs = [o for n in names for o in self._outputs[n]]
                grads = torch.autograd.grad(loss, outs, allow_unused=True)
            blocks, g = [], iter(grads)
            for name in names:
                block = 0
                for x in self._inputs[name]:
                    delta = next(g)
                    if delta is not None and name in self.output_scale:
                        delta = delta * self.output_scale[name]
                    if delta is not None and name in self.adam:  # summed over tokens first: Adam acts on the sample's gradient
                        block = block + torch.einsum("bto,bti->boi", delta, x)
                    elif delta is not None:
                        block = block + self.projector.per_sample(name, x, delta)
                if name in self.adam and not isinstance(block, int):
                    block = self.projector.sketch(name, adam_direction(block, *self.adam[name]).flatten(1))
                if isinstance(block, int):
                    block = torch.zeros(len(samples), next(m.width for m in self.spec.modules if m.name == name))
                if self.spec.normalize_modules:
                    block = F.normalize(block, dim=1)
                blocks.append(block)
            return torch.cat(blocks, dim=1).detach()
        finally:
            for h in handles:
                h.remove()
            self._inputs.clear()
            self._outputs.clear()
            self._mask = None


def compute_gradients(
    extractor: RowExtractor, samples: Sequence[Encoded], batch_size: int, progress: bool = False, desc: str = "gradients"
) -> torch.Tensor:
    """All samples' projected gradients, in input order (float32)."""
    import torch

    out = torch.zeros(len(samples), extractor.dim)
    batches = list(length_sorted_batches([len(s.input_ids) for s in samples], batch_size))
    for idx in tqdm(batches, desc=desc, disable=not progress):
        out[idx] = extractor.batch([samples[i] for i in idx])
    return out
