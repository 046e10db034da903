"""The tokenized corpus on disk: one Parquet file per shard, the quarantine, and a manifest.

Each shard is written on its own (``<shard>.parquet``, ``<shard>.quarantine.parquet``,
``<shard>.json``), so shards are independent partitions that can be written in parallel;
:func:`publish_corpus` then fixes which shards make up the corpus (``manifest.json``, with the
dataset version) and merges the quarantine. Each Parquet file carries its provenance (content
hash, base-model hash) in the schema metadata.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from influcoder_dagster.core.atomic import atomic_path, read_json, write_json
from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.data.dataset import QuarantineRow, Shard
from influcoder_dagster.data.tokens import tokenize_for_loss

if TYPE_CHECKING:
    import pyarrow as pa
    from transformers import PreTrainedTokenizerBase

QUARANTINE_FILE = "quarantine.parquet"
QUARANTINE_SUFFIX = ".quarantine.parquet"


def tokenize_shard(shard: Shard, tokenizer: PreTrainedTokenizerBase, max_length: int) -> pa.Table:
    texts = [s.text for s in shard.samples]
    full = [e.input_ids for e in tokenize_for_loss(tokenizer, texts, max_length=1 << 30)] if texts else []
    return pa.table({
        "sample_id": pa.array([s.sample_id for s in shard.samples], pa.int64()),
        "text": pa.array(texts, pa.string()),
        "input_ids": pa.array([ids[:max_length] for ids in full], pa.list_(pa.int32())),
        "n_tokens": pa.array([min(len(ids), max_length) for ids in full], pa.int32()),
        "truncated": pa.array([len(ids) > max_length for ids in full], pa.bool_()),
        "source": pa.array([s.source for s in shard.samples], pa.string()),
        "row": pa.array([s.row for s in shard.samples], pa.int32()),
        "meta": pa.array([s.meta for s in shard.samples], pa.string()),
        "shard": pa.array([shard.name] * len(texts), pa.string()),
    })


def _quarantine_short(shard: Shard, table: pa.Table) -> pa.Table:
    """A sample of fewer than 2 tokens (e.g. a lone special token) has no next-token loss: quarantine it."""
    short = pc.less(table.column("n_tokens"), 2)
    if not pc.any(short).as_py():
        return table
    gone = set(table.filter(short).column("sample_id").to_pylist())
    for s in shard.samples:
        if s.sample_id in gone:
            shard.quarantine.append(QuarantineRow(s.source, s.row, "fewer than 2 tokens: nothing to predict", s.text[:120]))
    shard.samples = [s for s in shard.samples if s.sample_id not in gone]
    shard.quarantine.sort(key=lambda q: q.row)
    return table.filter(pc.invert(short))


def quarantine_table(rows: list[QuarantineRow], shard: str) -> pa.Table:
    return pa.table({
        "source": pa.array([q.source for q in rows], pa.string()),
        "row": pa.array([q.row for q in rows], pa.int32()),
        "reason": pa.array([q.reason for q in rows], pa.string()),
        "excerpt": pa.array([q.excerpt for q in rows], pa.string()),
        "shard": pa.array([shard] * len(rows), pa.string()),
    })


def _write_parquet(table: pa.Table, path: Path, provenance: dict[str, str]) -> None:
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **{f"influcoder.{k}": v for k, v in provenance.items()}})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_shard(root: Path, shard: Shard, tokenizer: PreTrainedTokenizerBase, max_length: int, model_hash: str) -> dict[str, Any]:
    """One shard's samples, quarantine and entry (``<name>.json``, written last: the shard's commit mark)."""
    root.mkdir(parents=True, exist_ok=True)
    provenance = {"content_hash": shard.content_hash, "base_model_hash": model_hash}
    table = _quarantine_short(shard, tokenize_shard(shard, tokenizer, max_length))
    _write_parquet(table, root / f"{shard.name}.parquet", provenance)
    _write_parquet(quarantine_table(shard.quarantine, shard.name), root / f"{shard.name}{QUARANTINE_SUFFIX}", provenance)
    entry = {
        "source": shard.source, "content_hash": shard.content_hash, "base_model_hash": model_hash,
        "max_length": max_length, "rows_read": shard.rows_read, "kept": len(shard.samples),
        "quarantined": len(shard.quarantine), "truncated": int(sum(table.column("truncated").to_pylist())),
        "fingerprint": fingerprint(table),
    }
    if entry["rows_read"] != entry["kept"] + entry["quarantined"]:  # an invariant of read_shard; never write a shard that breaks it
        raise AssertionError(f"{shard.source}: rows read {entry['rows_read']} != kept {entry['kept']} + quarantined {entry['quarantined']}")
    write_json(root / f"{shard.name}.json", entry)
    return entry


def fingerprint(table: pa.Table) -> str:
    """Hash of a shard's sample ids and token ids: its gradients are reused only if both are unchanged
    (a file's bytes alone are not enough: min_chars or max_length change its rows)."""
    tokens = table.column("input_ids").combine_chunks()
    h = hashlib.sha256(table.column("sample_id").to_numpy().tobytes())
    h.update(tokens.offsets.to_numpy().astype(np.int64).tobytes())  # where each sample's tokens start
    h.update(tokens.flatten().to_numpy().astype(np.int32).tobytes())
    return h.hexdigest()[:16]


def shard_entry(root: Path, name: str) -> dict[str, Any] | None:
    path = root / f"{name}.json"
    return read_json(path) if path.exists() else None


def publish_corpus(root: Path, names: list[str], dataset_version: str, model_hash: str, keep: list[str],
                   skipped: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The corpus as of now: the shards ``names`` (each already written), with duplicates across shards
    quarantined (the first shard in name order keeps a sample), and files of shards not in ``keep`` deleted.

    Writes ``quarantine.parquet`` (every shard's quarantine plus the cross-shard duplicates) and
    ``manifest.json``; ``excluded`` lists, per shard, the rows of its Parquet file that are duplicates, and
    ``skipped_files`` the dataset's files that were not read, with the reason.
    """
    order = sorted(names)
    written = {name: shard_entry(root, name) for name in order}
    missing = [n for n, e in written.items() if e is None]
    if missing:
        raise MissingUpstreamError(f"{root}: shard {missing[0]} was never written", f"tokenized_corpus[{missing[0]}]")
    tables = {name: pq.read_table(root / f"{name}.parquet", columns=["sample_id", "source", "row"]) for name in order}
    # A sample's first occurrence (shards in name order) keeps it; np.unique gives that position.
    ids = np.concatenate([t.column("sample_id").to_numpy() for t in tables.values()]) if order else np.zeros(0, np.int64)
    unique, first = np.unique(ids, return_index=True)
    owner = first[np.searchsorted(unique, ids)]
    sources = [v for t in tables.values() for v in t.column("source").to_pylist()]
    rows = [v for t in tables.values() for v in t.column("row").to_pylist()]
    entries, quarantines, offset = {}, [], 0
    for name in order:
        n = tables[name].num_rows
        excluded = np.flatnonzero(owner[offset : offset + n] != np.arange(offset, offset + n)).tolist()
        quarantines.append(pq.read_table(root / f"{name}{QUARANTINE_SUFFIX}"))
        if excluded:
            texts = pq.read_table(root / f"{name}.parquet", columns=["text"]).column("text")
            dups = [QuarantineRow(sources[offset + i], rows[offset + i],
                                  f"duplicate of {sources[owner[offset + i]]} line {rows[owner[offset + i]]}", texts[i].as_py()[:120])
                    for i in excluded]
            quarantines.append(quarantine_table(dups, name))
        entry = written[name]
        entries[name] = {**entry, "kept": entry["kept"] - len(excluded), "quarantined": entry["quarantined"] + len(excluded),
                         "excluded": excluded}
        offset += n
    quarantine = pa.concat_tables(quarantines) if quarantines else quarantine_table([], "")
    quarantine = quarantine.append_column("dataset_version", pa.array([dataset_version] * quarantine.num_rows, pa.string()))
    _write_parquet(quarantine, root / QUARANTINE_FILE, {"dataset_version": dataset_version, "base_model_hash": model_hash})
    manifest = {"dataset_version": dataset_version, "base_model_hash": model_hash, "shards": entries,
                "skipped_files": skipped or []}
    write_json(root / "manifest.json", manifest)
    for f in root.iterdir():
        name = f.name.split(".", 1)[0]
        if f.is_file() and f.name not in (QUARANTINE_FILE, "manifest.json") and name not in keep:
            f.unlink()
    return manifest


def read_manifest(root: Path) -> dict[str, Any]:
    if not (root / "manifest.json").exists():
        raise MissingUpstreamError(f"no tokenized corpus at {root}", "tokenized_corpus", "corpus_manifest")
    return read_json(root / "manifest.json")


def read_corpus(root: Path, columns: list[str] | None = None) -> pa.Table:
    """All kept samples, shards in name order (the gradient store's order), without cross-shard duplicates."""
    manifest = read_manifest(root)
    wanted = None if columns is None else [c for c in columns if c != "dataset_version"]
    tables = []
    for name in sorted(manifest["shards"]):
        table = pq.read_table(root / f"{name}.parquet", columns=wanted)
        excluded = manifest["shards"][name].get("excluded", [])
        if excluded:
            keep = np.ones(table.num_rows, dtype=bool)
            keep[excluded] = False
            table = table.filter(pa.array(keep))
        tables.append(table)
    if not tables:
        return pa.table({})
    table = pa.concat_tables(tables)
    if columns is None or "dataset_version" in columns:
        table = table.append_column("dataset_version", pa.array([manifest["dataset_version"]] * table.num_rows, pa.string()))
    return table


def read_quarantine(root: Path) -> pa.Table:
    return pq.read_table(root / QUARANTINE_FILE)
