"""The teacher's stages, one function per asset: base model, tokenized corpus, gradients (rankings: rankings_stage.py).

Each reads the upstream files, runs the engine and writes this stage's files. These are what the Dagster assets call; they take the config and return metadata and a data
version, and know nothing of Dagster, so each stage runs and tests on its own. Stages hand data
to each other only through files under the storage root.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import dir_size, read_json, write_json
from .config import Config
from .corpus import Shard, all_texts, dataset_version, read_dataset
from .paths import Paths


@dataclass
class StageResult:
    metadata: dict[str, Any]
    data_version: str


def short_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- dataset and base model -------------------------------------------------------------------


def dataset_files(cfg: Config) -> tuple[Path, Path | None]:
    """The dataset and query file; without a configured dataset, the demo's (written on first use)."""
    if cfg.dataset.path:
        return Path(cfg.dataset.path), Path(cfg.dataset.queries_path) if cfg.dataset.queries_path else None
    from .demo_data import write_demo_dataset

    files = write_demo_dataset(Paths(cfg.home_path).demo, cfg.demo.n_passages, cfg.demo.n_triggers,
                               cfg.demo.planted_per_trigger, cfg.dataset.max_chars)
    queries = Path(cfg.dataset.queries_path) if cfg.dataset.queries_path else files["queries"]
    return files["dataset"], queries


def read_shards(cfg: Config) -> tuple[list[Shard], str]:
    path, _ = dataset_files(cfg)
    shards = read_dataset(path, cfg.dataset.text_field, cfg.dataset.max_chars, cfg.dataset.min_chars)
    return shards, dataset_version(shards, cfg.dataset.text_field, cfg.dataset.max_chars, cfg.dataset.min_chars)


def run_base_model(cfg: Config) -> StageResult:
    from .decoder import resolve_base_model

    paths = Paths(cfg.home_path)
    shards, version = read_shards(cfg)
    info = resolve_base_model(cfg.model, all_texts(shards), paths.models, version)
    record = {"path": str(info.path), "model_hash": info.model_hash, "kind": info.kind, "n_params": info.n_params,
              "trained_on_dataset_version": version if info.kind == "tiny" else None}
    write_json(paths.base_model_pointer, record)
    return StageResult({**record, "bytes": dir_size(info.path)}, info.model_hash)


def base_model_record(paths: Paths) -> dict[str, Any]:
    if not paths.base_model_pointer.exists():
        raise FileNotFoundError(f"{paths.base_model_pointer} missing; materialize the 'base_model' asset first")
    return read_json(paths.base_model_pointer)


# --- tokenized corpus ---------------------------------------------------------------------------


def run_tokenized_corpus(cfg: Config) -> StageResult:
    from transformers import AutoTokenizer

    from .tokenized import write_corpus

    paths = Paths(cfg.home_path)
    base = base_model_record(paths)
    shards, version = read_shards(cfg)
    tokenizer = AutoTokenizer.from_pretrained(base["path"])
    manifest = write_corpus(paths.corpus, shards, tokenizer, cfg.model.max_length, version, base["model_hash"])
    rows_read = sum(s["rows_read"] for s in manifest["shards"].values())
    kept = sum(s["kept"] for s in manifest["shards"].values())
    quarantined = sum(s["quarantined"] for s in manifest["shards"].values())
    if rows_read != kept + quarantined:  # an invariant of read_dataset; never publish a corpus that breaks it
        raise AssertionError(f"rows read {rows_read} != kept {kept} + quarantined {quarantined}")
    reasons: dict[str, int] = {}
    for shard in shards:
        for q in shard.quarantine:
            key = re.split(r":| of | at ", q.reason)[0].strip()
            reasons[key] = reasons.get(key, 0) + 1
    return StageResult({
        "path": str(paths.corpus), "dataset_version": version, "base_model_hash": base["model_hash"],
        "shards": len(shards), "rows_read": rows_read, "rows_kept": kept, "rows_quarantined": quarantined,
        "rows_truncated": sum(s["truncated"] for s in manifest["shards"].values()),
        "quarantine_reasons": reasons, "bytes": dir_size(paths.corpus),
    }, short_hash(version, base["model_hash"], cfg.model.max_length))


# --- projected gradients ------------------------------------------------------------------------


def run_projected_gradients(cfg: Config, progress: bool = True) -> StageResult:
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from .decoder import Encoded, length_sorted_batches, load_decoder
    from .gradients import GradientExtractor, projection_for
    from .store import GradientStore
    from .tokenized import read_manifest

    paths = Paths(cfg.home_path)
    base = base_model_record(paths)
    corpus = read_manifest(paths.corpus)
    model, tokenizer = load_decoder(base["path"])
    p = cfg.projection
    spec = projection_for(model, p.kind, p.dim, p.seed, p.normalize_modules)
    store = GradientStore.create(paths.gradients, spec.to_json(), base["model_hash"], dataset_version=corpus["dataset_version"])
    dropped = store.retain(list(corpus["shards"]))
    extractor = GradientExtractor(model, spec, tokenizer.pad_token_id)
    computed, reused, started = 0, 0, time.perf_counter()
    for name in sorted(corpus["shards"]):
        table = pq.read_table(paths.corpus / f"{name}.parquet", columns=["sample_id", "input_ids"])
        fingerprint = shard_fingerprint(table)
        if store.has_shard(name, fingerprint):
            reused += store.manifest["shards"][name]["rows"]
            continue
        writer = store.writer(name, table.column("sample_id").to_numpy(), fingerprint)
        seqs = table.column("input_ids").to_pylist()
        missing = writer.missing_rows()
        batches = list(length_sorted_batches([len(seqs[i]) for i in missing], p.batch_size))
        for batch in tqdm(batches, desc=f"gradients {name}", disable=not progress):
            rows = missing[batch]
            writer.write(rows, extractor.batch([Encoded(seqs[i]) for i in rows]).numpy())
            computed += len(rows)
        writer.finish()
    seconds = time.perf_counter() - started
    write_json(paths.gradients_pointer, {"root": str(store.root), "store_key": store.root.name})
    n = store.n_rows()
    return StageResult({
        "path": str(store.root), "store_key": store.root.name, "rows": n, "rows_computed": computed, "rows_reused": reused,
        "shards_dropped": dropped, "dim": store.dim, "projection": p.kind, "seed": p.seed, "modules": len(spec.modules),
        "base_model_hash": base["model_hash"], "dataset_version": corpus["dataset_version"], "bytes": store.nbytes(),
        "bytes_per_sample": store.nbytes() / max(n, 1), "samples_per_s": computed / seconds if computed else None,
    }, short_hash(store.root.name, corpus["dataset_version"]))


def shard_fingerprint(table: Any) -> str:
    """Hash of a shard's sample ids and token ids: a finished shard is reused only if both are unchanged
    (a file's bytes alone are not enough: cross-file duplicates, min_chars or max_length change its rows)."""
    tokens = table.column("input_ids").combine_chunks()
    h = hashlib.sha256(table.column("sample_id").to_numpy().tobytes())
    h.update(tokens.offsets.to_numpy().astype(np.int64).tobytes())  # where each sample's tokens start
    h.update(tokens.flatten().to_numpy().astype(np.int32).tobytes())
    return h.hexdigest()[:16]


def open_store(paths: Paths) -> Any:
    from .store import GradientStore

    if not paths.gradients_pointer.exists():
        raise FileNotFoundError("no gradient store yet; materialize the 'projected_gradients' asset first")
    return GradientStore.open(Path(read_json(paths.gradients_pointer)["root"]))


# --- queries and planted ground truth -----------------------------------------------------------


def read_queries(path: Path | None, text_field: str = "text") -> list[dict[str, Any]]:
    """User queries from JSONL: ``text`` (required), ``prompt`` and ``query_id`` (optional), other fields kept as meta."""
    if path is None:
        return []
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):  # not splitlines(): U+2028 may sit in a string
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {i}: malformed JSON ({exc.msg})") from exc
        if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str) or not rec[text_field].strip():
            raise ValueError(f"{path}: line {i}: a query needs a non-empty string field {text_field!r}")
        prompt = rec.get("prompt")
        if prompt is not None and not rec[text_field].startswith(prompt):
            raise ValueError(f"{path}: line {i}: 'prompt' must be the beginning of {text_field!r}")
        meta = {k: v for k, v in rec.items() if k not in (text_field, "prompt", "query_id")}
        out.append({"query_id": str(rec.get("query_id", f"user-{i}")), "text": rec[text_field], "prompt": prompt,
                    "meta": json.dumps(meta, sort_keys=True)})
    ids = [q["query_id"] for q in out]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: query_id values must be unique")
    return out


def planted_members(samples_meta: list[str], sample_ids: np.ndarray) -> dict[str, set[int]]:
    """Planted group -> sample ids, from the ``planted_group`` field of the records."""
    groups: dict[str, set[int]] = {}
    for sid, meta in zip(sample_ids, samples_meta, strict=True):
        g = json.loads(meta).get("planted_group") if meta else None
        if g is not None:
            groups.setdefault(str(g), set()).add(int(sid))
    return groups
