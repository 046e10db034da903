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
from .corpus import all_texts, dataset_version, find_shard_file, read_dataset, read_shard, shard_files
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
                               cfg.demo.planted_per_trigger, cfg.dataset.max_chars, cfg.demo.corpus)
    queries = Path(cfg.dataset.queries_path) if cfg.dataset.queries_path else files["queries"]
    return files["dataset"], queries


def data_tag(cfg: Config) -> str:
    """Where the data comes from (for the tiny decoder's recipe): the dataset path or the demo's settings."""
    return cfg.dataset.path or f"demo:{cfg.demo.model_dump_json()}|{cfg.dataset.max_chars}"


def base_model_version(cfg: Config) -> str:
    """The base model's identity before it is loaded: a local model's content hash, or the tiny
    decoder's recipe. The observable source asset reports it; a change re-derives everything."""
    from .decoder import model_dir_hash, tiny_model_key

    if cfg.model.base_model == "tiny":
        return short_hash(tiny_model_key(cfg.model, data_tag(cfg)))
    return model_dir_hash(Path(cfg.model.base_model).expanduser())


def run_base_model(cfg: Config) -> StageResult:
    from .decoder import resolve_base_model

    paths = Paths(cfg.home_path)

    def texts() -> list[str]:
        path, _ = dataset_files(cfg)
        return all_texts(read_dataset(path, cfg.dataset.text_field, cfg.dataset.max_chars, cfg.dataset.min_chars))

    info = resolve_base_model(cfg.model, texts, paths.models, data_tag(cfg))
    record: dict[str, Any] = {"path": str(info.path), "model_hash": info.model_hash, "kind": info.kind, "n_params": info.n_params,
                              "weights_hash": info.model_hash, "adapter": None}
    if cfg.projection.target == "lora":
        record.update(_warm_adapters(cfg, info, texts, paths))
    write_json(paths.base_model_pointer, record)
    return StageResult({**record, "bytes": dir_size(info.path)}, record["model_hash"])


def _warm_adapters(cfg: Config, info: Any, texts: Any, paths: Paths) -> dict[str, Any]:
    """The LoRA adapters the teacher attributes: trained once per (model, recipe) on a sample of the
    corpus; ``model_hash`` then names the model *with* its adapters, so stores never mix."""
    from .decoder import load_decoder, model_dir_hash
    from .lora import LoraRecipe, warm_up

    p = cfg.projection
    recipe = LoraRecipe(p.lora_rank, p.lora_warmup_steps, p.lora_lr, p.batch_size, cfg.model.max_length, p.seed)
    folder = paths.models / f"lora-{short_hash(info.model_hash, recipe.__dict__)}"
    if not (folder / "adapter_config.json").is_file():
        model, tokenizer = load_decoder(info.path)
        warm_up(model, tokenizer, texts(), recipe, folder)
    adapter_hash = model_dir_hash(folder)
    return {"adapter": str(folder), "adapter_hash": adapter_hash, "lora_rank": p.lora_rank,
            "lora_warmup_steps": p.lora_warmup_steps, "model_hash": short_hash(info.model_hash, adapter_hash)}


def base_model_record(paths: Paths) -> dict[str, Any]:
    if not paths.base_model_pointer.exists():
        raise FileNotFoundError(f"{paths.base_model_pointer} missing; materialize the 'base_model' asset first")
    return read_json(paths.base_model_pointer)


# --- shards: the partitions of the tokenized corpus and of the gradients ------------------------


def current_shards(cfg: Config) -> dict[str, Path]:
    """Shard name (the partition key) -> dataset file, as the dataset is now."""
    path, _ = dataset_files(cfg)
    return shard_files(path)


def run_corpus_shard(cfg: Config, name: str) -> StageResult:
    """Validate and tokenize one dataset file: ``corpus/<name>.parquet`` and its quarantine."""
    from transformers import AutoTokenizer

    from .tokenized import write_shard

    paths = Paths(cfg.home_path)
    base = base_model_record(paths)
    path, _ = dataset_files(cfg)
    file = find_shard_file(path, name)
    d = cfg.dataset
    shard = read_shard(file, d.text_field, d.max_chars, d.min_chars, Path(path) if Path(path).is_dir() else None)
    tokenizer = AutoTokenizer.from_pretrained(base["path"])
    entry = write_shard(paths.corpus, shard, tokenizer, cfg.model.max_length, base["model_hash"])
    reasons: dict[str, int] = {}
    for q in shard.quarantine:
        key = re.split(r":| of | at ", q.reason)[0].strip()
        reasons[key] = reasons.get(key, 0) + 1
    return StageResult({"path": str(paths.corpus / f"{name}.parquet"), **entry, "quarantine_reasons": reasons},
                       short_hash(entry["fingerprint"], d.text_field, d.max_chars, d.min_chars))


def run_shard_gradients(cfg: Config, name: str, progress: bool = True) -> StageResult:
    """Projected per-sample gradients of one shard; resumes an interrupted shard, reuses a finished one."""
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from .decoder import Encoded, length_sorted_batches, load_decoder
    from .gradients import projection_for
    from .store import GradientStore, StoreError
    from .tokenized import shard_entry

    paths = Paths(cfg.home_path)
    base = base_model_record(paths)
    entry = shard_entry(paths.corpus, name)
    if entry is None or entry["base_model_hash"] != base["model_hash"]:
        raise FileNotFoundError(f"shard {name} is not tokenized for the current base model; materialize tokenized_corpus[{name}]")
    p = cfg.projection
    started = time.perf_counter()
    try:  # a finished shard is reused without loading the model
        store = GradientStore.find(paths.gradients, base["model_hash"], requested_projection(cfg))
    except StoreError:
        store = None
    computed = 0
    if store is None or not store.has_shard(name, entry["fingerprint"]):
        model, tokenizer = load_decoder(base["path"], base.get("adapter"))
        spec = projection_for(model, p.kind, p.dim, p.seed, p.normalize_modules, lora_only=base.get("adapter") is not None)
        store = GradientStore.create(paths.gradients, spec.to_json(), base["model_hash"], requested=requested_projection(cfg))
        table = pq.read_table(paths.corpus / f"{name}.parquet", columns=["sample_id", "input_ids"])
        writer = store.writer(name, table.column("sample_id").to_numpy(), entry["fingerprint"])
        seqs = table.column("input_ids").to_pylist()
        missing = writer.missing_rows()
        extractor = pool_extractor(model, tokenizer, spec, base, cfg)
        for batch in tqdm(list(length_sorted_batches([len(seqs[i]) for i in missing], p.batch_size)),
                          desc=f"gradients {name}", disable=not progress):
            rows = missing[batch]
            writer.write(rows, extractor.batch([Encoded(seqs[i]) for i in rows]).numpy())
            computed += len(rows)
        writer.finish()
    seconds = time.perf_counter() - started
    rows = store.finished(name)["rows"]
    return StageResult({
        "path": str(store.root / f"{name}.f16"), "store_key": store.root.name, "rows": rows, "rows_computed": computed,
        "dim": store.dim, "projection": p.kind, "seed": p.seed, "modules": len(store.manifest["projection"]["modules"]),
        "base_model_hash": base["model_hash"],
        "content_hash": entry["content_hash"], "bytes": rows * store.dim * 2,
        "samples_per_s": computed / seconds if computed else None,
    }, short_hash(store.root.name, entry["fingerprint"]))


def requested_projection(cfg: Config) -> dict[str, Any]:
    """The projection settings that decide the store's rows (batch size and where it runs do not;
    the LoRA recipe is in the model hash)."""
    return cfg.projection.model_dump(exclude={"batch_size", "out_of_process", "lora_rank", "lora_warmup_steps", "lora_lr"})


def run_corpus_manifest(cfg: Config, names: list[str]) -> StageResult:
    """Publish the shards ``names`` (the current partitions) as the corpus and the gradient store.

    Every shard must be tokenized for the current base model and have its gradients; the error
    names those that are not. Files of shards no longer listed are deleted, and cross-shard
    duplicates are quarantined, so the counts reconcile: rows read = kept + quarantined.
    """
    from .store import GradientStore
    from .tokenized import publish_corpus, shard_entry

    if not names:
        raise RuntimeError("the dataset has no shards yet: add files to dataset.path (the sensor adds their partitions) "
                           "or run `influcoder materialize`")
    paths = Paths(cfg.home_path)
    base = base_model_record(paths)
    entries = {n: shard_entry(paths.corpus, n) for n in names}
    untokenized = sorted(n for n, e in entries.items() if e is None or e["base_model_hash"] != base["model_hash"]
                         or e["max_length"] != cfg.model.max_length)
    if untokenized:
        raise RuntimeError(f"{len(untokenized)} shard(s) not tokenized for the current base model, e.g. {untokenized[:3]}; "
                           "materialize those partitions of tokenized_corpus and projected_gradients first")
    d = cfg.dataset
    version = dataset_version([(n, e["content_hash"]) for n, e in entries.items()], d.text_field, d.max_chars, d.min_chars)
    store = GradientStore.find(paths.gradients, base["model_hash"], requested_projection(cfg))
    missing = sorted(n for n, e in entries.items() if not store.has_shard(n, e["fingerprint"]))
    if missing:
        raise RuntimeError(f"{len(missing)} shard(s) have no gradients for their current tokens, e.g. {missing[:3]}; "
                           "materialize those partitions of projected_gradients first")
    manifest = publish_corpus(paths.corpus, names, version, base["model_hash"], keep=names)
    excluded = {n: e["excluded"] for n, e in manifest["shards"].items() if e["excluded"]}
    dropped = store.publish({n: e["fingerprint"] for n, e in entries.items()}, excluded, keep=names, dataset_version=version)
    write_json(paths.gradients_pointer, {"root": str(store.root), "store_key": store.root.name})
    shards = manifest["shards"].values()
    rows_read, kept, quarantined = (sum(s[k] for s in shards) for k in ("rows_read", "kept", "quarantined"))
    if rows_read != kept + quarantined:  # never publish a corpus whose counts do not reconcile
        raise AssertionError(f"rows read {rows_read} != kept {kept} + quarantined {quarantined}")
    n = store.n_rows()
    return StageResult({
        "path": str(paths.corpus / "manifest.json"), "store_path": str(store.root), "dataset_version": version,
        "base_model_hash": base["model_hash"], "store_key": store.root.name, "shards": len(names), "rows_read": rows_read,
        "rows_kept": kept, "rows_quarantined": quarantined, "cross_shard_duplicates": sum(len(v) for v in excluded.values()),
        "rows_truncated": sum(s["truncated"] for s in shards), "gradient_rows": n, "shard_files_deleted": len(dropped),
        "dim": store.dim, "bytes": store.nbytes(), "bytes_per_sample": store.nbytes() / max(n, 1),
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


def pool_extractor(model: Any, tokenizer: Any, spec: Any, base: dict[str, Any], cfg: Config) -> Any:
    """The extractor of pool samples' rows: with ``projection.adam_precondition``, the warm-up's Adam
    direction. The store's rows and the noise ceiling's second-seed rows both come from here."""
    from .gradients import GradientExtractor
    from .lora import adam_state

    adam = adam_state(Path(base["adapter"]), cfg.projection.adam_momentum) if cfg.projection.adam_precondition else None
    return GradientExtractor(model, spec, tokenizer.pad_token_id, adam)


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
