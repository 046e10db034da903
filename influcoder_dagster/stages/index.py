"""The ``embedding_index`` stage: the FAISS index of every corpus sample, from the serving encoder.

With the same encoder, only new and removed samples change; another encoder rebuilds it. Before
any distilled version has passed its gate, the untrained starting encoder serves and the
manifest says so.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from influcoder_dagster.core.atomic import dir_size
from influcoder_dagster.core.config import Config
from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.data.tokenized import read_corpus, read_manifest
from influcoder_dagster.serving.embeddings import corpus_embeddings, serving_encoder
from influcoder_dagster.serving.index import (
    ENCODER_DIR,
    ENCODER_STAMP,
    SAMPLE_COLUMNS,
    build_index,
    encoder_folder,
    index_ids,
    load_index,
    save_index,
    sync_index,
)
from influcoder_dagster.serving.query_encoder import ONNX_NAME, export_onnx, exportable
from influcoder_dagster.stages.result import StageResult
from influcoder_dagster.student.sketch import BASIS_FILE


def run_embedding_index(cfg: Config, progress: bool = True) -> StageResult:
    """Index the corpus's per-shard embeddings from the serving encoder; with the same encoder,
    only new and removed samples change. Shards not embedded yet for this encoder are embedded here.
    The index, its encoder, ONNX export and sketch are published as one version folder."""
    paths = Paths(cfg.home_path)
    encoder = serving_encoder(cfg)
    manifest = read_manifest(paths.corpus)
    index, previous, previous_encoder = _current_index(paths)
    started = time.perf_counter()
    ids, vectors, embedded = corpus_embeddings(paths, manifest, encoder, progress)
    sketch = encoder.sketch()
    order = np.argsort(ids)

    def embed(wanted: np.ndarray) -> np.ndarray:
        return vectors[order[np.searchsorted(ids, wanted, sorter=order)]]

    same_encoder = previous_encoder is not None and previous.get("encoder_version") == encoder.version
    added, removed = sync_index(index, ids, embed) if same_encoder else (None, None)
    if added is None:  # another encoder, no index yet, or an index kind that cannot delete: rebuild
        index = build_index(vectors, ids, cfg.index)
        added, removed = len(ids), 0
    onnx: dict[str, Any] = {}

    def write_encoder(folder: Path) -> None:  # the query path encodes with this very copy
        if same_encoder and added is not None:  # unchanged: hard links to the previous version's files
            shutil.copytree(previous_encoder, folder, copy_function=os.link, ignore=shutil.ignore_patterns(ENCODER_STAMP))
        else:
            encoder.model().save(str(folder))
            if sketch is not None:  # the documents' basis, beside the query side that predicts into it
                sketch.save(folder / BASIS_FILE)
        if not cfg.index.onnx_query_encoder:  # switched off: queries go through torch
            (folder / ONNX_NAME).unlink(missing_ok=True)
        elif not (folder / ONNX_NAME).exists() and exportable(encoder.model()):
            onnx.update(export_onnx(encoder.model(), folder))

    seconds = time.perf_counter() - started
    path = save_index(index, paths.index, {
        "encoder_name": cfg.encoder.registered_name, "encoder_version": encoder.version, "dataset_version": manifest["dataset_version"],
        "base_model_hash": manifest["base_model_hash"], "dim": int(index.d), "nprobe": cfg.index.nprobe,
        "rerank_nprobe": cfg.index.rerank_nprobe,
        "documents": "gradient_sketch" if sketch is not None else "text_embeddings",
        "sketch": sketch.provenance if sketch is not None else None,
    }, read_corpus(paths.corpus, columns=SAMPLE_COLUMNS), write_encoder)
    return StageResult({
        "path": str(path), "count": int(index.ntotal), "encoder_version": encoder.version, "mode": "update" if same_encoder and added is not None else "rebuild",
        "samples_added": added, "samples_removed": removed, "samples_embedded_here": embedded, "seconds": round(seconds, 2),
        "warning": None if encoder.registered_version else "no distilled encoder has passed its quality gate; serving the untrained base encoder",
        "dataset_version": manifest["dataset_version"], "base_model_hash": manifest["base_model_hash"], "bytes": path.stat().st_size,
        "bytes_per_sample": path.stat().st_size / max(int(index.ntotal), 1), "encoder_bytes": dir_size(path.parent / ENCODER_DIR),
        "query_backend": "onnxruntime" if (path.parent / ENCODER_DIR / ONNX_NAME).exists() else "torch",
        "documents": "gradient_sketch" if sketch is not None else "text_embeddings",
        "onnx_export_max_abs_diff": onnx.get("max_abs_diff"),
    }, f"{encoder.version}-{manifest['dataset_version']}")


def _current_index(paths: Paths) -> tuple[Any, dict[str, Any], Path | None]:
    """(index, manifest, encoder folder) as published, or (None, {}, None) without a usable one."""
    try:
        index, manifest = load_index(paths.index)
        return index, manifest, encoder_folder(paths.index, manifest)
    except (MissingUpstreamError, KeyError):  # none yet, or one from before version folders: rebuild
        return None, {}, None


def index_matches_corpus(cfg: Config) -> tuple[bool, dict[str, Any]]:
    """Whether the index holds exactly the corpus's sample ids, built for its dataset version."""
    paths = Paths(cfg.home_path)
    index, manifest = load_index(paths.index)
    corpus_ids = np.sort(read_corpus(paths.corpus, columns=["sample_id"]).column("sample_id").to_numpy())
    ids = np.sort(index_ids(index))
    same_version = manifest["dataset_version"] == read_manifest(paths.corpus)["dataset_version"]
    return bool(np.array_equal(ids, corpus_ids) and same_version), {
        "index_count": int(len(ids)), "corpus_count": int(len(corpus_ids)), "same_dataset_version": same_version}
