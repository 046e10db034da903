"""Compressed head factors beside the gradient store: one safetensors file per shard.

``<store>/<shard>.head.safetensors`` holds, for each of the store's checkpoints ``c``, the shard's
rows in the store's row order: ``c.offsets`` (rows + 1) into its loss tokens, ``c.ids`` and
``c.values`` (tokens, top_k), ``c.coords`` (tokens, rank), ``c.basis`` (d, rank) and ``c.norms``
(rows: the compressed gradients' squared norms); its metadata the shard's token fingerprint, so a
file of older tokens is never read (:mod:`influcoder_dagster.teacher.head_factors` says what they
are). The basis is fitted on up to :data:`BASIS_SAMPLES` evenly spaced rows of the shard itself,
so a shard's file depends on its own texts only. A file is written whole, atomically; an
interrupted shard is recomputed (a forward pass per row, no backward).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from influcoder_dagster.core.atomic import atomic_path
from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.data.tokens import Encoded, length_sorted_batches
from influcoder_dagster.teacher.head_exact import HeadFactors, TokenFactors, squared_norms
from influcoder_dagster.teacher.head_factors import CompressedFactors, compress, compressed_squared_norms, fit_basis, inner_products

if TYPE_CHECKING:
    import torch

SUFFIX = ".head.safetensors"
BASIS_SAMPLES = 512  # rows of a shard whose hidden states fit its basis


def factors_path(store_root: Path, shard: str) -> Path:
    return store_root / f"{shard}{SUFFIX}"


def written_for(path: Path) -> dict[str, str] | None:
    """The token fingerprint and settings (``top_k``, ``rank``) a shard's factor file was written
    for, or None when there is none."""
    if not path.exists():
        return None
    with safe_open(str(path), framework="numpy") as f:
        return {k: v for k, v in f.metadata().items() if k in ("fingerprint", "top_k", "rank")}


def _current(store: Any, name: str) -> bool:
    written = written_for(factors_path(store.root, name))
    return written is not None and written["fingerprint"] == store.manifest["shards"][name]["fingerprint"]


class ShardFactorWriter:
    """A shard's factor file, filled batch by batch: :meth:`add` takes a batch's full factors at one
    checkpoint's head, from :meth:`HeadFactors.of` or from a pass the gradient extractor ran.

    Each checkpoint's basis is fitted first, on up to :data:`BASIS_SAMPLES` evenly spaced rows (a
    forward pass of each), since no row can be compressed before it exists."""

    def __init__(self, heads: Sequence[HeadFactors], samples: Sequence[Encoded], top_k: int, rank: int, batch_size: int = 16) -> None:
        self.heads, self.top_k, self.n = heads, top_k, len(samples)
        self.bases = [_shard_basis(head, samples, rank, batch_size) for head in heads] if samples else []
        self._rows: list[list[tuple[Any, Any, Any] | None]] = [[None] * self.n for _ in self.bases]  # none for an empty shard
        self._norms = [np.zeros(self.n, dtype=np.float32) for _ in self.bases]

    def add(self, checkpoint: int, rows: np.ndarray, full: TokenFactors) -> None:
        """The compressed factors of ``rows`` (the shard's row numbers, in ``full``'s sample order)."""
        factors = compress(full, self.bases[checkpoint], self.top_k)
        self._norms[checkpoint][rows] = compressed_squared_norms(factors, full.deltas.shape[1]).numpy()
        counts = np.bincount(factors.owner.numpy(), minlength=len(rows)).tolist()
        for i, ids, values, coords in zip(rows, factors.ids.split(counts), factors.values.split(counts), factors.coords.split(counts),
                                          strict=True):
            self._rows[checkpoint][i] = (ids.int(), values.half(), coords.half())  # fp16 as stored; checked on save

    def save(self, path: Path, fingerprint: str, rank: int) -> int:
        """Write the file atomically (every row must have been added); returns its size in bytes."""
        tensors: dict[str, np.ndarray] = {}
        for c, per_row in enumerate(self._rows):
            if any(r is None for r in per_row):
                raise RuntimeError(f"{path.name}: {sum(r is None for r in per_row)} rows have no head factors yet")
            tensors.update(_checkpoint_tensors(c, per_row, self.bases[c], self._norms[c], path))  # type: ignore[arg-type]
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"fingerprint": fingerprint, "checkpoints": str(len(self.heads)),
                                                   "top_k": str(self.top_k), "rank": str(rank)})
        return path.stat().st_size


def write_shard_factors(path: Path, heads: Sequence[HeadFactors], samples: Sequence[Encoded], fingerprint: str,
                        top_k: int, rank: int, batch_size: int = 16, progress: bool = False) -> int:
    """Write the compressed factors of ``samples`` (a shard's rows, in order) at every checkpoint's
    head, a forward pass of their own; returns the file's size in bytes. (The gradients stage
    captures them from its own pass instead when it extracts a shard from scratch.)"""
    writer = ShardFactorWriter(heads, samples, top_k, rank, batch_size)
    for idx in tqdm(list(length_sorted_batches([len(s.input_ids) for s in samples], batch_size)),
                    desc=f"head factors {path.name.split('.')[0]}", disable=not progress):
        for c, head in enumerate(heads):
            writer.add(c, idx, head.of([samples[i] for i in idx]))
    return writer.save(path, fingerprint, rank)


def _shard_basis(head: HeadFactors, samples: Sequence[Encoded], rank: int, batch_size: int) -> torch.Tensor:
    import torch

    rows = np.unique(np.linspace(0, len(samples) - 1, min(len(samples), BASIS_SAMPLES)).astype(int))
    hidden = [head.of([samples[i] for i in rows[j : j + batch_size]]).hidden for j in range(0, len(rows), batch_size)]
    return fit_basis(torch.cat(hidden), rank)


def _checkpoint_tensors(c: int, per_row: list[tuple[Any, Any, Any]], basis: Any, norms: np.ndarray, path: Path
                        ) -> dict[str, np.ndarray]:
    import torch

    offsets = np.concatenate([[0], np.cumsum([len(r[0]) for r in per_row])]).astype(np.int64)
    with np.errstate(over="ignore"):
        values = torch.cat([r[1] for r in per_row]).numpy().astype(np.float16)
        coords = torch.cat([r[2] for r in per_row]).numpy().astype(np.float16)
    if not (np.isfinite(values).all() and np.isfinite(coords).all() and np.isfinite(norms).all()):
        raise FloatingPointError(f"{path.name}: a non-finite or fp16-overflowing head factor")
    return {f"{c}.offsets": offsets, f"{c}.ids": torch.cat([r[0] for r in per_row]).numpy().astype(np.int32),
            f"{c}.values": values, f"{c}.coords": coords, f"{c}.basis": basis.numpy(), f"{c}.norms": norms}


class HeadFactorFiles:
    """The published shards' factor files of one store, each read into memory on first use (a
    SmolLM2 passage holds about 3 KB); rows looked up by sample id."""

    def __init__(self, store: Any) -> None:
        self.paths = {}
        for name in store.shard_names:
            self.paths[name] = factors_path(store.root, name)
            if not _current(store, name):
                raise MissingUpstreamError(f"{self.paths[name]} is missing or was written for other tokens (projection.head_factors "
                                           "= 'on' writes it)", f"projected_gradients[{name}]")
        self.ids = {name: store.ids(name) for name in self.paths}
        self._order = {name: np.argsort(ids, kind="stable") for name, ids in self.ids.items()}  # ids sorted, per shard
        self._loaded: dict[str, dict[str, Any]] = {}

    @staticmethod
    def complete(store: Any) -> bool:
        """Whether every published shard has a factor file for its current tokens."""
        return bool(store.shard_names) and all(_current(store, n) for n in store.shard_names)

    def of(self, sample_ids: np.ndarray, checkpoint: int) -> list[tuple[np.ndarray, CompressedFactors, Any, Any]]:
        """Per shard holding some of ``sample_ids``: their positions in ``sample_ids``, their factors,
        the shard's basis and their compressed squared norms."""
        import torch

        out = []
        for name, ids in self.ids.items():
            order = self._order[name]
            pos = np.clip(np.searchsorted(ids[order], sample_ids), 0, max(len(ids) - 1, 0))
            where = np.flatnonzero(ids[order][pos] == sample_ids) if len(ids) else np.zeros(0, dtype=np.int64)
            if not len(where):
                continue
            rows, t = order[pos[where]], self._tensors(name, checkpoint)
            starts, counts = t["offsets"][rows], t["offsets"][rows + 1] - t["offsets"][rows]
            owner = np.repeat(np.arange(len(rows)), counts)
            tokens = starts[owner] + np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)  # each row's span
            factors = CompressedFactors(torch.from_numpy(t["ids"][tokens]).long(), torch.from_numpy(t["values"][tokens]).float(),
                                        torch.from_numpy(t["coords"][tokens]).float(), torch.from_numpy(owner), len(rows))
            out.append((where, factors, torch.from_numpy(t["basis"]), torch.from_numpy(t["norms"][rows])))
        return out

    def _tensors(self, name: str, checkpoint: int) -> dict[str, np.ndarray]:
        key = f"{name}/{checkpoint}"
        if key not in self._loaded:
            with safe_open(str(self.paths[name]), framework="numpy") as f:
                self._loaded[key] = {k: f.get_tensor(f"{checkpoint}.{k}") for k in ("offsets", "ids", "values", "coords", "basis", "norms")}
        return self._loaded[key]


class StoredFactorScorer:
    """Cosines of queries' exact head gradients with stored samples' compressed ones, the mean over
    the store's checkpoints: a forward pass per query batch, none per candidate."""

    def __init__(self, heads: Sequence[HeadFactors], files: HeadFactorFiles, batch_size: int = 16) -> None:
        self.heads, self.files, self.batch_size = heads, files, batch_size

    def cosines(self, queries: Sequence[Encoded], sample_ids: np.ndarray) -> np.ndarray:
        out = np.zeros((len(queries), len(sample_ids)), dtype=np.float64)
        for c, head in enumerate(self.heads):
            shards = self.files.of(np.asarray(sample_ids, dtype=np.int64), c)
            for start in range(0, len(queries), self.batch_size):
                query = head.of(queries[start : start + self.batch_size])
                norms = squared_norms(query).sqrt()[:, None]
                for where, factors, basis, cand_norms in shards:
                    cos = inner_products(query, factors, basis) / norms / cand_norms.clamp(min=1e-30).sqrt()[None, :]
                    out[start : start + len(cos), where] += cos.double().numpy()
        return out / len(self.heads)
