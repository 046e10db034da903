"""The FAISS embedding index: inner product over unit vectors (= cosine), ids = corpus sample ids.

Kinds: ``flat`` (exact) for small corpora; ``ivf_sq8`` (inverted lists over 8-bit scalar-quantised
vectors, trained on a sample, then filled; about 4x smaller than flat, removals supported) or
``hnsw`` (graph, fast, cannot remove) for large ones. ``auto`` picks flat up to ``flat_max``.

Each version is a folder ``index/<encoder_version>-<dataset_version>-<ns>/`` holding the index, the
query encoder it was built with and the samples it returns (id, text, source, row); replacing
``index/manifest.json`` to name it is the commit. A reader loads one version whole, so a corpus
refresh under way never shows it an index beside another version's encoder or texts.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from influcoder_dagster.core.atomic import atomic_dir, read_json, write_json
from influcoder_dagster.core.config import IndexConfig
from influcoder_dagster.core.errors import ConfigError, MissingUpstreamError

if TYPE_CHECKING:
    import pyarrow as pa


def build_index(embeddings: np.ndarray, ids: np.ndarray, cfg: IndexConfig, seed: int = 0) -> Any:
    """A FAISS index of ``embeddings`` under ``ids``, of the configured kind ("auto": exact up to ``flat_max``)."""
    import faiss

    n, d = embeddings.shape
    kind, hnsw_m, nprobe = cfg.kind, cfg.hnsw_m, cfg.nprobe
    chosen = kind if kind != "auto" else ("flat" if n <= cfg.flat_max else "ivf_sq8")
    if chosen == "flat":
        base = faiss.IndexFlatIP(d)
    elif chosen == "hnsw":
        base = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    elif chosen == "ivf_sq8":
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 40))  # ~40 training points per list at least
        base = faiss.index_factory(d, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(n, size=min(n, 100 * nlist), replace=False)
        base.train(np.ascontiguousarray(embeddings[sample], dtype=np.float32))
        base.nprobe = nprobe
    else:
        raise ConfigError(f"index.kind={kind!r}: use auto, flat, ivf_sq8 or hnsw")
    index = faiss.IndexIDMap2(base)
    if n:
        index.add_with_ids(np.ascontiguousarray(embeddings, dtype=np.float32), np.asarray(ids, dtype=np.int64))
    return index


def sync_index(index: Any, ids: np.ndarray, embed: Any) -> tuple[int | None, int | None]:
    """Make ``index`` hold exactly ``ids``: remove the missing, embed and add the new ones.

    Returns (added, removed), or (None, None) when this index kind cannot remove (HNSW) and
    something has to go: the caller rebuilds then.
    """
    current = index_ids(index)
    gone = np.setdiff1d(current, ids)
    new = np.setdiff1d(np.asarray(ids, dtype=np.int64), current)
    if len(gone):
        if index_kind(index) == "hnsw":
            return None, None
        index.remove_ids(gone.astype(np.int64))
    if len(new):
        index.add_with_ids(np.ascontiguousarray(embed(new), dtype=np.float32), new.astype(np.int64))
    return len(new), len(gone)


def index_kind(index: Any) -> str:
    import faiss

    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSWFlat):
        return "hnsw"
    return "ivf_sq8" if isinstance(inner, faiss.IndexIVF) else "flat"


MANIFEST = "manifest.json"  # the commit point: names the version folder readers use
INDEX_FILE = "index.faiss"
SAMPLES_FILE = "samples.parquet"  # what a hit returns: sample_id, text, source, row of every indexed sample
SAMPLE_COLUMNS = ["sample_id", "text", "source", "row"]
ENCODER_DIR = "encoder"  # the query encoder the index was built with, its ONNX export and its sketch basis
ENCODER_STAMP = "influcoder_encoder.json"  # inside ENCODER_DIR: which encoder version it is
KEEP_VERSIONS = 2  # the current folder and the one before, which a reader may still be opening


def save_index(index: Any, root: Path, manifest: dict[str, Any], samples: pa.Table,
               write_encoder: Callable[[Path], None] | None = None) -> Path:
    """Publish ``index``, its ``samples`` (the :data:`SAMPLE_COLUMNS` of every id it holds) and, with
    ``write_encoder``, its encoder folder as one new version folder under ``root``, then commit by
    replacing ``root/manifest.json``: a reader sees the old version or the new one, never a mix.
    Returns the new index file."""
    import faiss
    import pyarrow.parquet as pq

    version = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{manifest['encoder_version']}-{manifest['dataset_version']}-{time.time_ns()}")
    with atomic_dir(root / version) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        pq.write_table(samples.select(SAMPLE_COLUMNS), tmp / SAMPLES_FILE, compression="zstd")
        if write_encoder is not None:
            write_encoder(tmp / ENCODER_DIR)
            write_json(tmp / ENCODER_DIR / ENCODER_STAMP, {"encoder_version": manifest["encoder_version"]})
    write_json(root / MANIFEST, {**manifest, "folder": version, "count": int(index.ntotal), "kind": index_kind(index)})
    _sweep(root, keep=version)
    return root / version / INDEX_FILE


def _sweep(root: Path, keep: str) -> None:
    """Delete version folders older than the last ``KEEP_VERSIONS`` and leftovers of interrupted writes."""
    folders = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.stat().st_mtime)
    for old in [d for d in folders if d.name != keep][: max(0, len(folders) - KEEP_VERSIONS)]:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def load_index(root: Path) -> tuple[Any, dict[str, Any]]:
    import faiss

    manifest_path = root / MANIFEST
    if not manifest_path.exists():
        raise MissingUpstreamError(f"no embedding index at {root}", "embedding_index")
    manifest = read_json(manifest_path)
    index = faiss.read_index(str(root / manifest["folder"] / INDEX_FILE))
    if "nprobe" in manifest and index_kind(index) == "ivf_sq8":
        faiss.extract_index_ivf(index.index).nprobe = int(manifest["nprobe"])
    return index, manifest


def encoder_folder(root: Path, manifest: dict[str, Any]) -> Path:
    """The index's own query encoder, checked to be the version the manifest names."""
    folder = root / manifest["folder"] / ENCODER_DIR
    stamp = folder / ENCODER_STAMP
    if not stamp.exists():
        raise MissingUpstreamError(f"{folder} holds no encoder", "embedding_index")
    found = read_json(stamp)["encoder_version"]
    if found != manifest["encoder_version"]:
        raise MissingUpstreamError(f"{folder} holds encoder {found}, but the index was built with {manifest['encoder_version']}",
                                   "embedding_index")
    return folder


def load_samples(root: Path, manifest: dict[str, Any]) -> pa.Table:
    """The samples the published version returns; an index from before samples were kept must be rebuilt."""
    import pyarrow.parquet as pq

    path = root / manifest["folder"] / SAMPLES_FILE
    if not path.exists():
        raise MissingUpstreamError(f"{path} is missing (an index from an older release)", "embedding_index")
    return pq.read_table(path)


def index_ids(index: Any) -> np.ndarray:
    import faiss

    return faiss.vector_to_array(index.id_map).astype(np.int64)


SERIAL_SEARCH_MAX = 8  # query batches up to this size search on one thread


def search(index: Any, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, ids) per query row; ``nprobe`` overrides an ivf_sq8 index's own for this search.

    A few queries search on one thread: FAISS would spread one query over OpenMP threads that then
    spin-wait and take the cores from the query encoder's next run (measured on 2 cores, encoder +
    exact search at N = 10k: 9.4 ms a query, 2.7 ms serial)."""
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    params = faiss.SearchParametersIVF(nprobe=int(nprobe)) if nprobe is not None and index_kind(index) == "ivf_sq8" else None
    if len(queries) > SERIAL_SEARCH_MAX:
        return index.search(queries, k, params=params)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(queries, k, params=params)
    finally:
        faiss.omp_set_num_threads(threads)


def current_encoder_folder(root: Path) -> Path:
    """The encoder folder of the index published under ``root`` now."""
    if not (root / MANIFEST).exists():
        raise MissingUpstreamError(f"no embedding index at {root}", "embedding_index")
    return encoder_folder(root, read_json(root / MANIFEST))
