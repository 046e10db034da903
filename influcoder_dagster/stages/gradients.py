"""The ``projected_gradients`` stage: one shard's projected per-sample gradients into the store; resumable."""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from influcoder_dagster.core.config import Config
from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.core.hashing import short_hash
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.data.tokenized import shard_entry
from influcoder_dagster.data.tokens import Encoded, length_sorted_batches
from influcoder_dagster.stages.result import StageResult
from influcoder_dagster.teacher.base_model import base_model_record
from influcoder_dagster.teacher.checkpoints import load_checkpoint_decoders
from influcoder_dagster.teacher.gradients import RowExtractor, projection_for
from influcoder_dagster.teacher.head_exact import exact_head_scorer
from influcoder_dagster.teacher.head_factor_store import ShardFactorWriter, factors_path, write_shard_factors, written_for
from influcoder_dagster.teacher.projection import ProjectionSpec
from influcoder_dagster.teacher.query_gradients import pool_extractor
from influcoder_dagster.teacher.store import GradientStore, StoreError, requested_projection


def run_shard_gradients(cfg: Config, name: str, progress: bool = True) -> StageResult:
    """Projected per-sample gradients of one shard; resumes an interrupted shard, reuses a finished one."""
    paths = Paths(cfg.home_path)
    base = base_model_record(paths)
    entry = shard_entry(paths.corpus, name)
    if entry is None or entry["base_model_hash"] != base["model_hash"]:
        raise MissingUpstreamError(f"shard {name} is not tokenized for the current base model", f"tokenized_corpus[{name}]")
    p = cfg.projection
    started = time.perf_counter()
    try:  # a finished shard is reused without loading the model
        store = GradientStore.find(paths.gradients, base["model_hash"], requested_projection(cfg))
    except StoreError:
        store = None
    computed, factors = 0, "off"
    if store is None or not store.has_shard(name, entry["fingerprint"]):
        store, computed, factors = _extract_shard(cfg, paths, base, name, entry["fingerprint"], progress)
    if factors != "captured" and _keeps_head_factors(cfg, store):
        factors = _head_factors(cfg, paths, store, base, name, entry["fingerprint"], progress)
    factor_file = factors_path(store.root, name)
    seconds = time.perf_counter() - started
    rows = store.finished(name)["rows"]
    return StageResult({
        "path": str(store.root / f"{name}.f16"), "store_key": store.root.name, "rows": rows, "rows_computed": computed,
        "dim": store.dim, "projection": p.kind, "seed": p.seed, "modules": len(store.manifest["projection"]["modules"]),
        "base_model_hash": base["model_hash"],
        "content_hash": entry["content_hash"], "bytes": rows * store.dim * 2,
        "head_factors": factors, "head_factor_bytes": factor_file.stat().st_size if factors != "off" else 0,
        "samples_per_s": computed / seconds if computed else None,
    }, short_hash(store.root.name, entry["fingerprint"]))


def _extract_shard(cfg: Config, paths: Paths, base: dict[str, Any], name: str, fingerprint: str, progress: bool
                   ) -> tuple[GradientStore, int, str]:
    """Fill the shard's rows that are not done yet; returns the store, how many rows were computed and
    ``"captured"`` when the head factors were kept from the same forward passes (a shard extracted
    from scratch), else ``"off"`` (a resumed shard's earlier rows were not recorded)."""
    p = cfg.projection
    decoders = load_checkpoint_decoders(base)
    spec = projection_for(decoders[-1][0], p.kind, p.dim, p.seed, p.normalize_modules, target=p.target)
    extractor = pool_extractor(decoders, spec, cfg)
    store = GradientStore.create(paths.gradients, spec.to_json(), base["model_hash"], dim=extractor.dim,
                                 requested=requested_projection(cfg), checkpoints=len(decoders))
    table = pq.read_table(paths.corpus / f"{name}.parquet", columns=["sample_id", "input_ids"])
    writer = store.writer(name, table.column("sample_id").to_numpy(), fingerprint)
    samples = [Encoded(ids) for ids in table.column("input_ids").to_pylist()]
    missing = writer.missing_rows()
    capture = _FactorCapture(cfg, decoders, samples) if len(missing) == len(samples) > 0 and _keeps_head_factors(cfg, store) else None
    computed = 0
    for batch in tqdm(list(length_sorted_batches([len(samples[i].input_ids) for i in missing], p.batch_size)),
                      desc=f"gradients {name}", disable=not progress):
        rows = missing[batch]
        batch_samples = [samples[i] for i in rows]
        values = extractor.batch(batch_samples) if capture is None else capture.batch(extractor, rows, batch_samples)
        writer.write(rows, values.numpy())
        computed += len(rows)
    writer.finish()
    if capture is None:
        return store, computed, "off"
    capture.factors.save(factors_path(store.root, name), fingerprint, p.head_factors_rank)
    return store, computed, "captured"


class _FactorCapture:
    """The head factors of a shard's rows, recorded from the extractor's own forward passes."""

    def __init__(self, cfg: Config, decoders: list[Any], samples: list[Encoded]) -> None:
        p = cfg.projection
        self.heads = exact_head_scorer(decoders).heads
        self.factors = ShardFactorWriter(self.heads, samples, p.head_factors_top_k, p.head_factors_rank, p.batch_size)

    def batch(self, extractor: RowExtractor, rows: np.ndarray, samples: list[Encoded]) -> Any:
        with ExitStack() as stack:
            seen = [stack.enter_context(head.recording()) for head in self.heads]
            values = extractor.batch(samples)
        for c, (head, recorded) in enumerate(zip(self.heads, seen, strict=True)):
            self.factors.add(c, rows, head.recorded(samples, recorded))
        return values


def _keeps_head_factors(cfg: Config, store: GradientStore) -> bool:
    """``projection.head_factors``: 'on', or 'auto' where the store hashes the head factored (a
    pretrained vocabulary's, whose sketch keeps a small share of the exact top-10)."""
    p = cfg.projection
    modules = ProjectionSpec.from_json(store.manifest["projection"]).modules
    return p.target == "head" and (p.head_factors == "on" or (p.head_factors == "auto" and any(m.factored for m in modules)))


def _head_factors(cfg: Config, paths: Paths, store: GradientStore, base: dict[str, Any], name: str, fingerprint: str, progress: bool
                  ) -> str:
    """The shard's head factor file, written (a forward pass of every row) unless one for its tokens
    and settings exists: ``"computed"`` or ``"reused"``."""
    p, path = cfg.projection, factors_path(store.root, name)
    wanted = {"fingerprint": fingerprint, "top_k": str(p.head_factors_top_k), "rank": str(p.head_factors_rank)}
    if written_for(path) == wanted:
        return "reused"
    table = pq.read_table(paths.corpus / f"{name}.parquet", columns=["sample_id", "input_ids"])
    if not np.array_equal(table.column("sample_id").to_numpy(), store.ids(name)):
        raise StoreError(f"shard {name}: the tokenized rows are not the store's rows; materialize projected_gradients[{name}] again")
    heads = exact_head_scorer(load_checkpoint_decoders(base)).heads
    samples = [Encoded(ids) for ids in table.column("input_ids").to_pylist()]
    write_shard_factors(path, heads, samples, fingerprint, p.head_factors_top_k, p.head_factors_rank, p.batch_size, progress)
    return "computed"
