"""The gradient store: one row-major fp16 memmap per shard plus a small JSON manifest.

Layout under ``gradients/<key>/`` where ``key`` hashes the base model and the projection, so a
new model or projection never mixes with old rows::

    manifest.json            projection spec, model hash, dataset version, the published shards
    <shard>.ids.npy          int64 sample ids, row i of the shard is sample ids[i]
    <shard>.f16              (rows, dim) float16, complete shards only
    <shard>.json             a finished shard's row count and fingerprint
    <shard>.f16.partial      the same while being filled, with <shard>.done.npy: a row bitmap

Rows are written into the partial memmap and flushed before the bitmap that marks them done is
replaced atomically, so an interrupted run resumes at the first row not marked done and never
trusts a half-written row. A finished shard is renamed to ``<shard>.f16`` and gets its
``<shard>.json``. Shards are written independently (in parallel, by partition runs); only
:meth:`GradientStore.publish` writes the manifest's shard list, which readers go by.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from influcoder_dagster.core.atomic import atomic_path, read_json, write_json
from influcoder_dagster.core.config import Config
from influcoder_dagster.core.errors import InflucoderError, MissingUpstreamError
from influcoder_dagster.core.paths import Paths

MANIFEST = "manifest.json"
SHARD_SUFFIXES = (".f16", ".ids.npy", ".json", ".f16.partial", ".done.npy", ".partial.json", ".head.safetensors")  # <shard><suffix>


def store_key(model_hash: str, projection: dict[str, Any], requested: dict[str, Any] | None = None) -> str:
    """The store's folder name: everything that decides its rows (the requested settings too, e.g.
    the Adam preconditioning, which the projection spec does not hold)."""
    parts = {"model": model_hash, "projection": projection, **({"requested": requested} if requested is not None else {})}
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


class StoreError(InflucoderError, RuntimeError):
    """The gradient store is missing or does not match; the message says what to materialize."""


@dataclass
class ShardWriter:
    """Fills one shard's rows in any order; resumable through the done-bitmap.

    The bitmap is saved (after the rows are flushed) at most every ``checkpoint_seconds``, so an
    interruption loses at most that much work and never marks an unwritten row done.
    """

    store: GradientStore
    name: str
    ids: np.ndarray
    fingerprint: str = ""
    checkpoint_seconds: float = 10.0

    def __post_init__(self) -> None:
        self._last_save = time.monotonic()
        dim = self.store.dim
        self._partial = self.store.root / f"{self.name}.f16.partial"
        self._done_path = self.store.root / f"{self.name}.done.npy"
        ids_path = self.store.root / f"{self.name}.ids.npy"
        started = self.store.root / f"{self.name}.partial.json"  # the fingerprint (tokens) the partial rows came from
        resumable = all(f.exists() for f in (self._partial, self._done_path, ids_path, started))
        if resumable and np.array_equal(np.load(ids_path), self.ids) and read_json(started)["fingerprint"] == self.fingerprint:
            self.done = np.load(self._done_path)
            self._mm = np.memmap(self._partial, dtype=np.float16, mode="r+", shape=(len(self.ids), dim))
        else:  # nothing to resume, or rows of other tokens (same ids): start over
            with atomic_path(ids_path) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, self.ids)
            write_json(started, {"fingerprint": self.fingerprint})
            self.done = np.zeros(len(self.ids), dtype=bool)
            self._save_done()
            self._mm = np.memmap(self._partial, dtype=np.float16, mode="w+", shape=(max(len(self.ids), 1), dim))

    def missing_rows(self) -> np.ndarray:
        return np.flatnonzero(~self.done)

    def write(self, rows: np.ndarray, values: np.ndarray) -> None:
        with np.errstate(over="ignore"):
            values = np.asarray(values, dtype=np.float32).astype(np.float16)
        bad = ~np.isfinite(values).all(1)
        if bad.any():  # checked after the cast: a value beyond fp16's range would be stored as inf
            raise FloatingPointError(f"shard {self.name}: non-finite or fp16-overflowing gradient in rows {rows[bad][:5]}")
        self._mm[rows] = values
        self.done[rows] = True
        if time.monotonic() - self._last_save >= self.checkpoint_seconds:
            self.checkpoint()

    def checkpoint(self) -> None:
        self._mm.flush()
        self._save_done()
        self._last_save = time.monotonic()

    def _save_done(self) -> None:
        with atomic_path(self._done_path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, self.done)

    def finish(self) -> Path:
        if not self.done.all():
            raise StoreError(f"shard {self.name}: {int((~self.done).sum())} rows not computed yet")
        self._mm.flush()
        del self._mm
        final = self.store.root / f"{self.name}.f16"
        os.replace(self._partial, final)
        self._done_path.unlink(missing_ok=True)
        write_json(self.store.root / f"{self.name}.json", {"rows": len(self.ids), "fingerprint": self.fingerprint})
        (self.store.root / f"{self.name}.partial.json").unlink(missing_ok=True)
        return final


class GradientStore:
    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest

    @classmethod
    def create(cls, base: Path, projection: dict[str, Any], model_hash: str, dim: int | None = None, **provenance: Any) -> GradientStore:
        """Open the store for (model, projection) under ``base``, creating it if new; rows have ``dim``
        columns (default the projection's: one checkpoint)."""
        root = base / store_key(model_hash, projection, provenance.get("requested"))
        root.mkdir(parents=True, exist_ok=True)
        if (root / MANIFEST).exists():
            return cls(root, read_json(root / MANIFEST))
        store = cls(root, {"format": 1, "dtype": "float16", "layout": "row-major", "dim": dim or projection["dim"],
                           "projection": projection, "base_model_hash": model_hash, "shards": {}, **provenance})
        store.save()
        return store

    @classmethod
    def find(cls, base: Path, model_hash: str, requested: dict[str, Any]) -> GradientStore:
        """The store made for ``model_hash`` with the projection settings ``requested`` (as given to
        :meth:`create`), found without loading the model."""
        for manifest in sorted(base.glob(f"*/{MANIFEST}")):
            data = read_json(manifest)
            if data.get("base_model_hash") == model_hash and data.get("requested") == requested:
                return cls(manifest.parent, data)
        raise StoreError(f"no gradient store under {base} for base model {model_hash} and projection {requested}; "
                         "materialize projected_gradients")

    @classmethod
    def open(cls, root: Path) -> GradientStore:
        if not (root / MANIFEST).exists():
            raise StoreError(f"no gradient store at {root}; materialize the 'projected_gradients' asset first")
        return cls(root, read_json(root / MANIFEST))

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def shard_names(self) -> list[str]:
        return sorted(self.manifest["shards"])

    def save(self) -> None:
        write_json(self.root / MANIFEST, self.manifest)

    def finished(self, name: str) -> dict[str, Any] | None:
        """A finished shard's entry (rows, fingerprint), published or not."""
        path = self.root / f"{name}.json"
        return read_json(path) if path.exists() and (self.root / f"{name}.f16").exists() else None

    def has_shard(self, name: str, fingerprint: str = "") -> bool:
        """A finished shard whose rows came from the same samples and tokens (``fingerprint``)."""
        entry = self.finished(name)
        return entry is not None and entry["fingerprint"] == fingerprint

    def writer(self, name: str, ids: np.ndarray, fingerprint: str = "", checkpoint_seconds: float = 10.0) -> ShardWriter:
        return ShardWriter(self, name, np.asarray(ids, dtype=np.int64), fingerprint, checkpoint_seconds)

    def publish(self, shards: dict[str, str], excluded: dict[str, list[int]], keep: list[str], **provenance: Any) -> list[str]:
        """Make the finished ``shards`` (name -> expected fingerprint) the store's content, leaving out
        the ``excluded`` rows (cross-shard duplicates); delete files of shards not in ``keep``.

        Returns the names whose files were deleted. Raises :class:`StoreError` naming a shard that is
        not finished or whose rows came from other tokens.
        """
        published = {}
        for name, fingerprint in sorted(shards.items()):
            if not self.has_shard(name, fingerprint):
                raise StoreError(f"shard {name} has no finished gradients for its current tokens; materialize projected_gradients[{name}]")
            published[name] = {"rows": self.finished(name)["rows"], "file": f"{name}.f16", "ids": f"{name}.ids.npy",
                               "fingerprint": fingerprint, "excluded": sorted(excluded.get(name, []))}
        shard_files = [f for f in self.root.iterdir() if f.is_file() and f.name != MANIFEST and f.name.endswith(SHARD_SUFFIXES)]
        dropped = sorted({f.name.split(".", 1)[0] for f in shard_files} - set(keep))
        self.manifest.update(provenance, shards=published)
        self.save()
        for f in shard_files:  # the store's other files (query caches, the preconditioner) stay
            if f.name.split(".", 1)[0] in dropped:
                f.unlink()
        return dropped

    def ids(self, name: str) -> np.ndarray:
        """Every row's sample id, excluded rows included (row i of the file is ids[i])."""
        return np.load(self.root / f"{name}.ids.npy")

    def _kept(self, name: str) -> np.ndarray | None:
        """Row mask of a published shard, or None when it has no excluded rows."""
        excluded = self.manifest["shards"][name].get("excluded", [])
        if not excluded:
            return None
        keep = np.ones(self.manifest["shards"][name]["rows"], dtype=bool)
        keep[excluded] = False
        return keep

    def rows(self, name: str) -> np.ndarray:
        n = self.manifest["shards"][name]["rows"]
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float16)
        return np.memmap(self.root / f"{name}.f16", dtype=np.float16, mode="r", shape=(n, self.dim))

    def all_ids(self) -> np.ndarray:
        """The published samples' ids, in the order :meth:`iter_blocks` yields them."""
        parts = []
        for n in self.shard_names:
            keep = self._kept(n)
            parts.append(self.ids(n) if keep is None else self.ids(n)[keep])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def n_rows(self) -> int:
        return sum(s["rows"] - len(s.get("excluded", [])) for s in self.manifest["shards"].values())

    def iter_blocks(self, block_rows: int, shards: list[str] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, fp16 rows) blocks over all (or the named) shards in name order.

        Each block is its own small memmap, unmapped once the consumer drops it, so the resident
        memory of a scan stays one block, however large the store. Copy-on-write mode makes the
        array writable for zero-copy ``torch.from_numpy`` while the file stays untouched.
        """
        row_bytes = self.dim * np.dtype(np.float16).itemsize
        for name in self.shard_names if shards is None else sorted(shards):
            ids, path, keep = self.ids(name), self.root / f"{name}.f16", self._kept(name)
            for i in range(0, len(ids), block_rows):
                n = min(block_rows, len(ids) - i)
                block = np.memmap(path, dtype=np.float16, mode="c", offset=i * row_bytes, shape=(n, self.dim))
                if keep is None or keep[i : i + n].all():
                    yield ids[i : i + n], block
                else:  # a copy, only for the rare block holding a cross-shard duplicate
                    yield ids[i : i + n][keep[i : i + n]], np.asarray(block[keep[i : i + n]])

    def lookup(self, sample_ids: np.ndarray) -> np.ndarray:
        """float32 rows for the given sample ids (repeats allowed); KeyError names the missing ones."""
        sorted_ids, inverse = np.unique(np.asarray(sample_ids, dtype=np.int64), return_inverse=True)
        out = np.zeros((len(sorted_ids), self.dim), dtype=np.float32)
        found = np.zeros(len(sorted_ids), dtype=bool)
        for name in self.shard_names:
            ids = self.ids(name)
            if not len(sorted_ids) or not len(ids):
                continue
            pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
            hit = sorted_ids[pos] == ids
            if hit.any():
                dst = pos[hit]
                out[dst] = self.rows(name)[np.flatnonzero(hit)]
                found[dst] = True
        if not found.all():
            raise KeyError(f"sample ids not in the gradient store: {sorted_ids[~found][:5].tolist()}")
        return out[inverse]

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.root.iterdir() if f.is_file())


def requested_projection(cfg: Config) -> dict[str, Any]:
    """The projection settings that decide the store's rows (batch size and where it runs do not;
    the LoRA recipe and the checkpoints are in the model hash)."""
    return cfg.projection.model_dump(exclude={"batch_size", "out_of_process", "lora_rank", "lora_warmup_steps", "lora_lr", "checkpoints",
                                              "head_factors", "head_factors_top_k", "head_factors_rank"})


def open_store(paths: Paths) -> GradientStore:
    """The store the corpus was last published with (``gradients/current.json``)."""
    if not paths.gradients_pointer.exists():
        raise MissingUpstreamError("no gradient store yet", "projected_gradients", "corpus_manifest")
    return GradientStore.open(paths.gradients / read_json(paths.gradients_pointer)["store_key"])
