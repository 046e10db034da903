"""Seeded random projections of per-module gradients, applied to the gradient's two factors.

A Linear/Conv1D layer's per-sample weight gradient is ``sum_t delta_t x_t^T`` (delta: output
gradient, x: input). ``logra`` projects both factors first (``P_out^T delta``, ``P_in^T x``), so a
sample costs O(T (d_in k_in + d_out k_out)) and the d_out x d_in gradient is never formed.
``countsketch`` hashes every coordinate of the full gradient into a bucket with a random sign
(unbiased for inner products). A module up to :data:`FACTORED_ABOVE` coordinates forms each
sample's gradient and hashes it; a larger one (a pretrained decoder's output head: 49,152 x 576
for SmolLM2) hashes coordinate ``(o, i)`` to ``(h_out(o) + h_in(i)) mod width`` with sign
``s_out(o) s_in(i)``, the TensorSketch of Pham & Pagh (KDD 2013): the sketch of ``delta x^T`` is
the circular convolution of the two factors' own CountSketches, summed over tokens with one FFT,
and the gradient is never formed. On SmolLM2's whitened head it kept as much of the exact cosines'
order as the full hash, and extraction ran 3.4x faster (docs/results.md); on the tiny decoder's
262k-coordinate head the full hash is faster, hence the bound. Hand-written: scikit-learn's
``PolynomialCountSketch`` sketches a vector's tensor power, not a sum of two vectors' products.
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
    factored: bool = False  # countsketch: the TensorSketch hash (modules above FACTORED_ABOVE coordinates)


@dataclass(frozen=True)
class ProjectionSpec:
    kind: str
    seed: int
    dim: int  # the actual total dimension (sum of module widths)
    normalize_modules: bool
    modules: tuple[ModuleSpec, ...]

    def to_json(self) -> dict[str, Any]:
        """The spec as JSON; ``factored`` only where true, so a spec without a factored module keeps
        the form (and the gradient store its key) it had before factored hashes existed."""
        data = asdict(self)
        data["modules"] = [{k: v for k, v in m.items() if k != "factored" or v} for m in data["modules"]]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProjectionSpec:
        mods = tuple(ModuleSpec(**m) for m in data["modules"])
        return cls(data["kind"], data["seed"], data["dim"], data["normalize_modules"], mods)


FACTORED_ABOVE = 1 << 22  # countsketch: coordinates above which a module's hash is factored (16 samples' gradients: 256 MB)


def plan_projection(kind: str, target_dim: int, seed: int, shapes: list[tuple[str, int, int]], normalize_modules: bool = False,
                    factored_above: int = FACTORED_ABOVE) -> ProjectionSpec:
    """Split ``target_dim`` evenly over the modules ``(name, d_in, d_out)``; CountSketch factors the
    hash of modules with more than ``factored_above`` coordinates."""
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
        factored = kind == "countsketch" and d_in * d_out > factored_above
        mods.append(ModuleSpec(name, d_in, d_out, k_in, k_out, width, offset, factored))
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
        self._factors: dict[str, tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {}
        self._widths = {m.name: m.width for m in spec.modules}
        for m in spec.modules:
            if m.factored:
                g = _generator(spec.seed, m.name, "tensorsketch")
                self._factors[m.name] = (_hash(m.d_out, m.width, g), _hash(m.d_in, m.width, g))
            elif spec.kind == "logra":
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

        if name in self._factors:
            return self._tensor_sketch(name, x, delta)
        if self.spec.kind == "logra":
            return torch.einsum("bto,bti->boi", delta @ self._params[name][1], x).flatten(1)
        return self.sketch(name, torch.einsum("bto,bti->boi", delta, x).flatten(1))

    def _tensor_sketch(self, name: str, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``sum_t CS_out(delta_t) (*) CS_in(x_t)`` (circular convolution): the factored hash's sketch."""
        import torch

        width, (out_hash, in_hash) = self._widths[name], self._factors[name]
        spectrum = torch.fft.rfft(_count_sketch(delta, *out_hash, width)) * torch.fft.rfft(_count_sketch(x, *in_hash, width))
        return torch.fft.irfft(spectrum.sum(1), n=width)

    def project_full(self, name: str, grad_out_in: torch.Tensor) -> torch.Tensor:
        """Project one explicit (d_out, d_in) gradient the same way; the reference for tests."""
        if self.spec.kind == "logra":
            p_in, p_out = self._params[name]
            return (p_out.T @ grad_out_in @ p_in).flatten()
        return self.sketch(name, grad_out_in.flatten()[None])[0]

    def sketch(self, name: str, flat: torch.Tensor) -> torch.Tensor:
        """CountSketch of flattened (B, d_out * d_in) per-module gradients."""
        import torch

        bucket, sign = self._full_hash(name) if name in self._factors else self._params[name]
        out = torch.zeros(flat.shape[0], self._widths[name], dtype=flat.dtype)
        return out.index_add_(1, bucket, flat * sign)

    def _full_hash(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A factored hash spelled out per coordinate (row-major ``(d_out, d_in)``), for explicit gradients."""
        (out_bucket, out_sign), (in_bucket, in_sign) = self._factors[name]
        bucket = (out_bucket[:, None] + in_bucket[None, :]) % self._widths[name]
        return bucket.flatten(), (out_sign[:, None] * in_sign[None, :]).flatten()


def _hash(n: int, width: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` coordinates' buckets in ``[0, width)`` and random signs."""
    import torch

    return torch.randint(0, width, (n,), generator=g), torch.randint(0, 2, (n,), generator=g).float() * 2 - 1


def _count_sketch(v: torch.Tensor, bucket: torch.Tensor, sign: torch.Tensor, width: int) -> torch.Tensor:
    """CountSketch of the last axis of ``v`` into ``width`` buckets."""
    import torch

    return torch.zeros(*v.shape[:-1], width, dtype=v.dtype).index_add_(-1, bucket, v * sign)
