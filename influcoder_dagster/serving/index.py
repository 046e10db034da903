"""The FAISS embedding index: inner product over unit vectors (= cosine), ids = corpus sample ids.

Kinds: ``flat`` (exact) for small corpora; ``ivf_sq8`` (inverted lists over 8-bit scalar-quantised
vectors, trained on a sample, then filled; about 4x smaller than flat, removals supported) or
``hnsw`` (graph, fast, cannot remove) for large ones. ``auto`` picks flat up to ``flat_max``.

Written as ``index/<encoder_version>-<dataset_version>.faiss`` plus ``index/manifest.json``
naming the current file; both are replaced atomically, so a reader loads a consistent pair.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from influcoder_dagster.core.atomic import atomic_path, read_json, write_json
from influcoder_dagster.core.config import IndexConfig
from influcoder_dagster.core.errors import ConfigError, MissingUpstreamError


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


def save_index(index: Any, root: Path, manifest: dict[str, Any]) -> Path:
    import faiss

    root.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{manifest['encoder_version']}-{manifest['dataset_version']}") + ".faiss"
    with atomic_path(root / name) as tmp:
        faiss.write_index(index, str(tmp))
    write_json(root / "manifest.json", {**manifest, "file": name, "count": int(index.ntotal), "kind": index_kind(index)})
    for old in root.glob("*.faiss"):
        if old.name != name:
            old.unlink()
    return root / name


def load_index(root: Path) -> tuple[Any, dict[str, Any]]:
    import faiss

    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        raise MissingUpstreamError(f"no embedding index at {root}", "embedding_index")
    manifest = read_json(manifest_path)
    index = faiss.read_index(str(root / manifest["file"]))
    if "nprobe" in manifest and index_kind(index) == "ivf_sq8":
        faiss.extract_index_ivf(index.index).nprobe = int(manifest["nprobe"])
    return index, manifest


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
