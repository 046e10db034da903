"""The ``shard_embeddings`` stage: one shard's index vectors from the serving encoder."""

from __future__ import annotations

import time

from influcoder_dagster.core.config import Config
from influcoder_dagster.core.hashing import short_hash
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.data.tokenized import shard_entry
from influcoder_dagster.serving.embeddings import ensure_shard, folder, serving_encoder
from influcoder_dagster.stages.result import StageResult


def run_shard_embeddings(cfg: Config, name: str, progress: bool = False) -> StageResult:
    paths = Paths(cfg.home_path)
    encoder = serving_encoder(cfg)
    started = time.perf_counter()
    ids, vectors, embedded = ensure_shard(paths, name, encoder, progress)
    seconds = time.perf_counter() - started
    return StageResult({
        "path": str(folder(paths, encoder.version) / f"{name}.npy"), "encoder_version": encoder.version, "rows": len(ids),
        "rows_embedded": embedded, "dim": int(vectors.shape[1]) if len(ids) else None, "bytes": int(vectors.nbytes),
        "samples_per_s": embedded / seconds if embedded else None,
    }, short_hash(encoder.version, shard_entry(paths.corpus, name)["fingerprint"]))
