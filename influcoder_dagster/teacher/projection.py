"""Seeded random projections of per-module gradients, applied to the gradient's two factors.

A Linear/Conv1D layer's per-sample weight gradient is ``sum_t delta_t x_t^T`` (delta: output
gradient, x: input). ``logra`` projects both factors first (``P_out^T delta``, ``P_in^T x``), so a
sample costs O(T (d_in k_in + d_out k_out)) and the d_out x d_in gradient is never formed.
``countsketch`` hashes every coordinate of the full gradient into a bucket with a random sign
(unbiased for inner products); it forms the per-sample gradient, so it suits small layers.
Matrices come from a generator seeded by (seed, module name): the same spec always rebuilds the
same projection, which is how query gradients are made comparable to the store.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from influcoder_dagster.core.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    d_in: int
    d_out: int
    k_in: int  # logra only (0 for countsketch)
    k_out: int
    width: int  # this module's share of the projected vector
    offset: int


@dataclass(frozen=True)
class ProjectionSpec:
    kind: str
    seed: int
    dim: int  # the actual total dimension (sum of module widths)
    normalize_modules: bool
    modules: tuple[ModuleSpec, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProjectionSpec:
        mods = tuple(ModuleSpec(**m) for m in data["modules"])
        return cls(data["kind"], data["seed"], data["dim"], data["normalize_modules"], mods)


def plan_projection(kind: str, target_dim: int, seed: int, shapes: list[tuple[str, int, int]], normalize_modules: bool = False) -> ProjectionSpec:
    """Split ``target_dim`` evenly over the modules ``(name, d_in, d_out)``."""
    if not shapes:
        raise ValueError("no Linear/Conv1D modules to track in this model")
    if kind not in ("logra", "countsketch"):
        raise ConfigError(f"projection.kind={kind!r}: use 'logra' or 'countsketch'")
    per_module = max(1, target_dim // len(shapes))
    mods, offset = [], 0
    for name, d_in, d_out in shapes:
        if kind == "logra":
            side = max(1, math.isqrt(per_module))
            k_in, k_out = min(side, d_in), min(side, d_out)
            width = k_in * k_out
        else:
            k_in = k_out = 0
            width = min(per_module, d_in * d_out)
        mods.append(ModuleSpec(name, d_in, d_out, k_in, k_out, width, offset))
        offset += width
    return ProjectionSpec(kind, seed, offset, normalize_modules, tuple(mods))


def _generator(seed: int, name: str, part: str) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}:{part}".encode()))


class Projector:
    """Materialises the random matrices (or hashes) of a :class:`ProjectionSpec` once."""

    def __init__(self, spec: ProjectionSpec) -> None:
        import torch

        self.spec = spec
        self._params: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._widths = {m.name: m.width for m in spec.modules}
        for m in spec.modules:
            if spec.kind == "logra":
                p_in = torch.randn(m.d_in, m.k_in, generator=_generator(spec.seed, m.name, "in")) / math.sqrt(m.k_in)
                p_out = torch.randn(m.d_out, m.k_out, generator=_generator(spec.seed, m.name, "out")) / math.sqrt(m.k_out)
                self._params[m.name] = (p_in, p_out)
            else:
                g = _generator(spec.seed, m.name, "sketch")
                bucket = torch.randint(0, m.width, (m.d_out * m.d_in,), generator=g)
                sign = torch.randint(0, 2, (m.d_out * m.d_in,), generator=g).float() * 2 - 1
                self._params[m.name] = (bucket, sign)

    def project_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Applied in the forward pass, so only the (small) projected input is kept."""
        return x @ self._params[name][0] if self.spec.kind == "logra" else x

    def per_sample(self, name: str, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """(B, T, in') inputs and (B, T, d_out) output gradients -> (B, width) projected gradients."""
        import torch

        if self.spec.kind == "logra":
            return torch.einsum("bto,bti->boi", delta @ self._params[name][1], x).flatten(1)
        return self.sketch(name, torch.einsum("bto,bti->boi", delta, x).flatten(1))

    def project_full(self, name: str, grad_out_in: torch.Tensor) -> torch.Tensor:
        """Project one explicit (d_out, d_in) gradient the same way; the reference for tests."""
        if self.spec.kind == "logra":
            p_in, p_out = self._params[name]
            return (p_out.T @ grad_out_in @ p_in).flatten()
        return self.sketch(name, grad_out_in.flatten()[None])[0]

    def sketch(self, name: str, flat: torch.Tensor) -> torch.Tensor:
        """CountSketch of flattened (B, d_out * d_in) per-module gradients."""
        import torch

        bucket, sign = self._params[name]
        out = torch.zeros(flat.shape[0], self._widths[name], dtype=flat.dtype)
        return out.index_add_(1, bucket, flat * sign)
