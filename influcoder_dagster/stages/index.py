"""The ``embedding_index`` stage: the FAISS index of every corpus sample, from the serving encoder.

With the same encoder, only new and removed samples change; another encoder rebuilds it. Before
any distilled version has passed its gate, the untrained starting encoder serves and the
manifest says so.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from influcoder_dagster.core.atomic import atomic_dir, dir_size
from influcoder_dagster.core.config import Config
from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.data.tokenized import read_corpus, read_manifest
from influcoder_dagster.serving.embeddings import corpus_embeddings, serving_encoder
from influcoder_dagster.serving.index import build_index, index_ids, load_index, save_index, sync_index
from influcoder_dagster.serving.query_encoder import ONNX_NAME, export_onnx
from influcoder_dagster.stages.result import StageResult
from influcoder_dagster.student.sketch import BASIS_FILE


def run_embedding_index(cfg: Config, progress: bool = True) -> StageResult:
    """Index the corpus's per-shard embeddings from the serving encoder; with the same encoder,
    only new and removed samples change. Shards not embedded yet for this encoder are embedded here."""
    paths = Paths(cfg.home_path)
    encoder = serving_encoder(cfg)
    manifest = read_manifest(paths.corpus)
    try:
        index, previous = load_index(paths.index)
    except MissingUpstreamError:
        index, previous = None, {}
    onnx = None
    started = time.perf_counter()
    ids, vectors, embedded = corpus_embeddings(paths, manifest, encoder, progress)
    sketch = encoder.sketch()
    order = np.argsort(ids)

    def embed(wanted: np.ndarray) -> np.ndarray:
        return vectors[order[np.searchsorted(ids, wanted, sorter=order)]]

    same_encoder = index is not None and previous.get("encoder_version") == encoder.version and paths.index_encoder.exists()
    added, removed = sync_index(index, ids, embed) if same_encoder else (None, None)
    if added is None:  # another encoder, no index yet, or an index kind that cannot delete: rebuild
        index = build_index(vectors, ids, cfg.index)
        added, removed = len(ids), 0
        with atomic_dir(paths.index_encoder) as tmp:  # the query path encodes with this very copy
            encoder.model().save(str(tmp))
            if sketch is not None:  # the documents' basis, beside the query side that predicts into it
                sketch.save(tmp / BASIS_FILE)
            onnx = export_onnx(encoder.model(), tmp) if cfg.index.onnx_query_encoder else None
    onnx_path = paths.index_encoder / ONNX_NAME
    if cfg.index.onnx_query_encoder and not onnx_path.exists():  # switched on since the encoder was saved
        onnx = export_onnx(encoder.model(), paths.index_encoder)
    elif not cfg.index.onnx_query_encoder:  # switched off: queries go through torch
        onnx_path.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    path = save_index(index, paths.index, {
        "encoder_name": cfg.encoder.registered_name, "encoder_version": encoder.version, "dataset_version": manifest["dataset_version"],
        "base_model_hash": manifest["base_model_hash"], "dim": int(index.d), "nprobe": cfg.index.nprobe,
        "rerank_nprobe": cfg.index.rerank_nprobe,
        "documents": "gradient_sketch" if sketch is not None else "text_embeddings",
        "sketch": sketch.provenance if sketch is not None else None,
    })
    return StageResult({
        "path": str(path), "count": int(index.ntotal), "encoder_version": encoder.version, "mode": "update" if same_encoder and added is not None else "rebuild",
        "samples_added": added, "samples_removed": removed, "samples_embedded_here": embedded, "seconds": round(seconds, 2),
        "warning": None if encoder.registered_version else "no distilled encoder has passed its quality gate; serving the untrained base encoder",
        "dataset_version": manifest["dataset_version"], "base_model_hash": manifest["base_model_hash"], "bytes": path.stat().st_size,
        "bytes_per_sample": path.stat().st_size / max(int(index.ntotal), 1), "encoder_bytes": dir_size(paths.index_encoder),
        "query_backend": "onnxruntime" if onnx_path.exists() else "torch",
        "documents": "gradient_sketch" if sketch is not None else "text_embeddings",
        "onnx_export_max_abs_diff": onnx["max_abs_diff"] if onnx else None,
    }, f"{encoder.version}-{manifest['dataset_version']}")


def index_matches_corpus(cfg: Config) -> tuple[bool, dict[str, Any]]:
    """Whether the index holds exactly the corpus's sample ids, built for its dataset version."""
    paths = Paths(cfg.home_path)
    index, manifest = load_index(paths.index)
    corpus_ids = np.sort(read_corpus(paths.corpus, columns=["sample_id"]).column("sample_id").to_numpy())
    ids = np.sort(index_ids(index))
    same_version = manifest["dataset_version"] == read_manifest(paths.corpus)["dataset_version"]
    return bool(np.array_equal(ids, corpus_ids) and same_version), {
        "index_count": int(len(ids)), "corpus_count": int(len(corpus_ids)), "same_dataset_version": same_version}
