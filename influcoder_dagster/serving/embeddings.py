"""Per-shard encoder embeddings: ``embeddings/<encoder version>/<shard>.npy`` (float32, unit rows)
plus ``<shard>.json`` (rows, the shard's fingerprint), written by the shard's own partition.

The index is assembled from these files, so embedding runs per shard and in parallel; a shard is
re-embedded only when its tokens or the serving encoder change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from influcoder_dagster.core.atomic import atomic_path, read_json, write_json
from influcoder_dagster.core.config import Config
from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.data.tokenized import shard_entry
from influcoder_dagster.student import tracking
from influcoder_dagster.student.encoder import encode, load_encoder
from influcoder_dagster.teacher.store import open_store

if TYPE_CHECKING:
    from pathlib import Path

    from influcoder_dagster.student.sketch import Sketch


@dataclass
class ServingEncoder:
    """The encoder the index serves: the MLflow champion, else the untrained starting encoder."""

    cfg: Config
    registered_version: str | None
    run_id: str | None = None
    _model: Any = None
    _sketch: Any = False  # False: not looked up yet

    def sketch(self) -> Sketch | None:
        """The champion's gradient-sketch basis; None for a rankings-distilled or untrained encoder,
        whose documents are embedded from their text."""
        if self._sketch is False:
            self._sketch = None if self.registered_version is None else tracking.load_sketch(
                self.cfg.encoder.registered_name, self.registered_version, folder(Paths(self.cfg.home_path), self.version))
        return self._sketch

    @property
    def version(self) -> str:
        if self.registered_version is not None:  # the run too: files of another model never match
            return f"v{self.registered_version}-{(self.run_id or '')[:8]}"
        layers = f":{self.cfg.encoder.layers}-layers" if self.cfg.encoder.layers != -1 else ""
        return f"base:{self.cfg.encoder.base or 'all-MiniLM-L6-v2'}{layers}"

    def model(self) -> Any:
        """Loaded on first use: a shard whose embeddings exist needs no encoder."""
        if self._model is None:
            self._model = (tracking.load_registered(self.cfg.home_path, self.cfg.encoder.registered_name, tracking.CHAMPION)
                           if self.registered_version is not None
                           else load_encoder(self.cfg.encoder))
        return self._model


def serving_encoder(cfg: Config) -> ServingEncoder:
    tracking.setup(cfg.home_path)
    champion = tracking.champion_run(cfg.encoder.registered_name)
    return ServingEncoder(cfg, *champion) if champion else ServingEncoder(cfg, None)


def folder(paths: Paths, encoder_version: str) -> Path:
    return paths.embeddings / re.sub(r"[^A-Za-z0-9._-]+", "_", encoder_version)


def ensure_shard(paths: Paths, name: str, encoder: ServingEncoder, progress: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """(sample ids, embeddings, rows embedded now) of shard ``name`` under ``encoder``; embeds only
    if its file is missing or was made from other tokens."""
    entry = shard_entry(paths.corpus, name)
    if entry is None:
        raise MissingUpstreamError(f"shard {name} is not tokenized", f"tokenized_corpus[{name}]")
    root = folder(paths, encoder.version)
    meta = root / f"{name}.json"
    reuse = meta.exists() and read_json(meta)["fingerprint"] == entry["fingerprint"]
    table = pq.read_table(paths.corpus / f"{name}.parquet", columns=["sample_id"] if reuse else ["sample_id", "text"])
    ids = table.column("sample_id").to_numpy()
    if reuse:
        return ids, np.load(root / f"{name}.npy"), 0
    sketch = encoder.sketch()
    if sketch is not None:
        vectors = _sketched_rows(paths, name, ids, sketch)
    else:
        texts = table.column("text").to_pylist()
        vectors = encode(encoder.model(), texts, "document", progress=progress) if len(ids) else np.zeros((0, 1), np.float32)
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(root / f"{name}.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, vectors)
    write_json(meta, {"rows": len(ids), "fingerprint": entry["fingerprint"], "encoder_version": encoder.version})
    return ids, vectors, len(ids)


def _sketched_rows(paths: Paths, name: str, ids: np.ndarray, sketch: Sketch) -> np.ndarray:
    """A gradient-sketch encoder's documents: the shard's own store rows in the sketch basis."""
    store = open_store(paths)
    fitted_on = sketch.provenance.get("store_key")
    if store.root.name != fitted_on:
        raise MissingUpstreamError(f"the serving encoder's gradient sketch was fitted on store {fitted_on}, but the gradient store "
                                   f"is now {store.root.name}", "influence_rankings", "influcoder_encoder")
    if name not in store.shard_names:
        raise MissingUpstreamError(f"shard {name} has no rows in gradient store {store.root.name}", f"projected_gradients[{name}]")
    return sketch.documents(store.lookup(ids)) if len(ids) else np.zeros((0, sketch.dim), np.float32)


def corpus_embeddings(paths: Paths, manifest: dict[str, Any], encoder: ServingEncoder, progress: bool = False
                      ) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids, embeddings, rows embedded now) of the published corpus, cross-shard duplicates left out;
    shards without embeddings for this encoder are embedded here (e.g. by the nightly reindex)."""
    all_ids, all_vectors, embedded = [], [], 0
    for name in sorted(manifest["shards"]):
        ids, vectors, n = ensure_shard(paths, name, encoder, progress)
        keep = np.ones(len(ids), dtype=bool)
        keep[manifest["shards"][name].get("excluded", [])] = False
        all_ids.append(ids[keep])
        all_vectors.append(vectors[keep])
        embedded += n
    nonempty = [v for v in all_vectors if len(v)]
    return (np.concatenate(all_ids) if all_ids else np.zeros(0, np.int64),
            np.concatenate(nonempty) if nonempty else np.zeros((0, 1), np.float32), embedded)
