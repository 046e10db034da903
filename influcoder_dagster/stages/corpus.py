"""The corpus stages: ``tokenized_corpus`` (one shard) and ``corpus_manifest`` (the shards published as one corpus).

Every stage reads the upstream files, runs the engine, writes its own files atomically and returns
metadata and a data version; none knows Dagster, so each runs and tests on its own."""

from __future__ import annotations

import re
from pathlib import Path

from influcoder_dagster.core.atomic import write_json
from influcoder_dagster.core.config import Config
from influcoder_dagster.core.errors import DatasetError, MissingUpstreamError
from influcoder_dagster.core.hashing import short_hash
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.data.dataset import dataset_version, find_shard, read_shard, skipped_files
from influcoder_dagster.data.source import current_shards, dataset_files
from influcoder_dagster.data.tokenized import publish_corpus, shard_entry, write_shard
from influcoder_dagster.stages.gradients import run_shard_gradients
from influcoder_dagster.stages.result import StageResult
from influcoder_dagster.teacher.base_model import base_model_record
from influcoder_dagster.teacher.store import GradientStore, requested_projection


def run_corpus_shard(cfg: Config, name: str) -> StageResult:
    """Validate and tokenize one shard (a dataset file or a block of one): ``corpus/<name>.parquet`` and its quarantine."""
    from transformers import AutoTokenizer

    paths = Paths(cfg.home_path)
    base = base_model_record(paths)
    path, _ = dataset_files(cfg)
    d = cfg.dataset
    file, block = find_shard(path, name, d)
    shard = read_shard(file, d, Path(path) if Path(path).is_dir() else None, block)
    tokenizer = AutoTokenizer.from_pretrained(base["path"])
    entry = write_shard(paths.corpus, shard, tokenizer, cfg.model.max_length, base["model_hash"])
    reasons: dict[str, int] = {}
    for q in shard.quarantine:
        key = re.split(r":| of | at ", q.reason)[0].strip()
        reasons[key] = reasons.get(key, 0) + 1
    return StageResult({"path": str(paths.corpus / f"{name}.parquet"), **entry, "quarantine_reasons": reasons},
                       short_hash(entry["fingerprint"], d.text_field, d.max_chars, d.min_chars))


def run_corpus_manifest(cfg: Config, names: list[str]) -> StageResult:
    """Publish the shards ``names`` (the current partitions) as the corpus and the gradient store.

    Every shard must be tokenized for the current base model and have its gradients; the error
    names those that are not. Files of shards no longer listed are deleted, and cross-shard
    duplicates are quarantined, so the counts reconcile: rows read = kept + quarantined.
    """
    if not names:
        raise DatasetError("the dataset has no shards yet: add files to dataset.path (the sensor adds their partitions) "
                           "or run `influcoder materialize`")
    paths = Paths(cfg.home_path)
    base = base_model_record(paths)
    entries = {n: shard_entry(paths.corpus, n) for n in names}
    untokenized = sorted(n for n, e in entries.items() if e is None or e["base_model_hash"] != base["model_hash"]
                         or e["max_length"] != cfg.model.max_length)
    if untokenized:
        raise MissingUpstreamError(f"{len(untokenized)} shard(s) not tokenized for the current base model, e.g. {untokenized[:3]}",
                                   "tokenized_corpus", "projected_gradients")
    version = dataset_version([(n, e["content_hash"]) for n, e in entries.items()], cfg.dataset)
    store = GradientStore.find(paths.gradients, base["model_hash"], requested_projection(cfg))
    missing = sorted(n for n, e in entries.items() if not store.has_shard(n, e["fingerprint"]))
    if missing:
        raise MissingUpstreamError(f"{len(missing)} shard(s) have no gradients for their current tokens, e.g. {missing[:3]}",
                                   "projected_gradients")
    skipped = skipped_files(dataset_files(cfg)[0])
    manifest = publish_corpus(paths.corpus, names, version, base["model_hash"], keep=names, skipped=skipped)
    excluded = {n: e["excluded"] for n, e in manifest["shards"].items() if e["excluded"]}
    dropped = store.publish({n: e["fingerprint"] for n, e in entries.items()}, excluded, keep=names, dataset_version=version)
    write_json(paths.gradients_pointer, {"store_key": store.root.name})  # a folder of gradients/: the root may move
    shards = manifest["shards"].values()
    rows_read, kept, quarantined = (sum(s[k] for s in shards) for k in ("rows_read", "kept", "quarantined"))
    if rows_read != kept + quarantined:  # never publish a corpus whose counts do not reconcile
        raise AssertionError(f"rows read {rows_read} != kept {kept} + quarantined {quarantined}")
    n = store.n_rows()
    return StageResult({
        "path": str(paths.corpus_manifest), "store_path": str(store.root), "dataset_version": version,
        "base_model_hash": base["model_hash"], "store_key": store.root.name, "shards": len(names), "rows_read": rows_read,
        "rows_kept": kept, "rows_quarantined": quarantined, "cross_shard_duplicates": sum(len(v) for v in excluded.values()),
        "rows_truncated": sum(s["truncated"] for s in shards), "gradient_rows": n, "shard_files_deleted": len(dropped),
        "dim": store.dim, "bytes": store.nbytes(), "bytes_per_sample": store.nbytes() / max(n, 1),
        "files_skipped": skipped,
        "warning": f"{len(skipped)} file(s) in the dataset folder were not read, e.g. {skipped[0]['path']}: {skipped[0]['reason']}"
                   if skipped else None,
    }, short_hash(version, store.root.name, sorted((n, e["fingerprint"]) for n, e in entries.items())))


def run_all_shards(cfg: Config, progress: bool = True) -> StageResult:
    """Every current shard's corpus and gradients, then the manifest, in this process: the teacher
    without an orchestrator (tests, benchmarks). ``rows_computed`` counts the gradient rows computed."""
    names = sorted(current_shards(cfg))
    computed = 0
    for name in names:
        run_corpus_shard(cfg, name)
        computed += run_shard_gradients(cfg, name, progress).metadata["rows_computed"]
    result = run_corpus_manifest(cfg, names)
    result.metadata["rows_computed"] = computed
    return result
