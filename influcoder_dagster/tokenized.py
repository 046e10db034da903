"""The tokenized corpus on disk: one Parquet file per shard, the quarantine, and a manifest.

Each Parquet file carries its provenance (dataset version, base-model hash) in the schema
metadata as well as in ``corpus/manifest.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import atomic_path, read_json, write_json
from .corpus import QuarantineRow, Shard
from .decoder import tokenize_for_loss

if TYPE_CHECKING:
    import pyarrow as pa
    from transformers import PreTrainedTokenizerBase

QUARANTINE_FILE = "quarantine.parquet"


def tokenize_shard(shard: Shard, tokenizer: PreTrainedTokenizerBase, max_length: int, dataset_version: str) -> pa.Table:
    import pyarrow as pa

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
        "dataset_version": pa.array([dataset_version] * len(texts), pa.string()),
    })


def _quarantine_short(shard: Shard, table: pa.Table) -> pa.Table:
    """A sample of fewer than 2 tokens (e.g. a lone special token) has no next-token loss: quarantine it."""
    import pyarrow.compute as pc

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


def quarantine_table(shards: list[Shard], dataset_version: str) -> pa.Table:
    import pyarrow as pa

    rows = [(q, sh.name) for sh in shards for q in sh.quarantine]
    return pa.table({
        "source": pa.array([q.source for q, _ in rows], pa.string()),
        "row": pa.array([q.row for q, _ in rows], pa.int32()),
        "reason": pa.array([q.reason for q, _ in rows], pa.string()),
        "excerpt": pa.array([q.excerpt for q, _ in rows], pa.string()),
        "shard": pa.array([name for _, name in rows], pa.string()),
        "dataset_version": pa.array([dataset_version] * len(rows), pa.string()),
    })


def _write_parquet(table: pa.Table, path: Path, provenance: dict[str, str]) -> None:
    import pyarrow.parquet as pq

    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **{f"influcoder.{k}": v for k, v in provenance.items()}})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_corpus(root: Path, shards: list[Shard], tokenizer: PreTrainedTokenizerBase, max_length: int,
                 dataset_version: str, model_hash: str) -> dict[str, Any]:
    """Write every shard (and the quarantine), drop files of shards no longer in the dataset."""
    root.mkdir(parents=True, exist_ok=True)
    provenance = {"dataset_version": dataset_version, "base_model_hash": model_hash}
    entries = {}
    for shard in shards:
        table = _quarantine_short(shard, tokenize_shard(shard, tokenizer, max_length, dataset_version))
        _write_parquet(table, root / f"{shard.name}.parquet", provenance)
        entries[shard.name] = {
            "source": shard.source, "content_hash": shard.content_hash, "rows_read": shard.rows_read,
            "kept": len(shard.samples), "quarantined": len(shard.quarantine),
            "truncated": int(sum(table.column("truncated").to_pylist())),
        }
    _write_parquet(quarantine_table(shards, dataset_version), root / QUARANTINE_FILE, provenance)
    for old in root.glob("*.parquet"):
        if old.name != QUARANTINE_FILE and old.stem not in entries:
            old.unlink()
    manifest = {**provenance, "shards": entries}
    write_json(root / "manifest.json", manifest)
    return manifest


def read_manifest(root: Path) -> dict[str, Any]:
    if not (root / "manifest.json").exists():
        raise FileNotFoundError(f"no tokenized corpus at {root}; materialize the 'tokenized_corpus' asset first")
    return read_json(root / "manifest.json")


def read_corpus(root: Path, columns: list[str] | None = None) -> pa.Table:
    """All kept samples, shards in name order (the gradient store's order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = read_manifest(root)
    tables = [pq.read_table(root / f"{name}.parquet", columns=columns) for name in sorted(manifest["shards"])]
    return pa.concat_tables(tables) if tables else pa.table({})


def read_quarantine(root: Path) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(root / QUARANTINE_FILE)
