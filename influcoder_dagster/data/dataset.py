"""Read a dataset (JSONL, Parquet, CSV, or a folder of them), validate it, cut it into shards.

Every row read ends in exactly one place: a kept sample or a quarantine row with its reason,
so ``rows_read == kept + quarantined`` per shard. A file that cannot be used at all (unknown
format, no text column) raises :class:`DatasetError` naming the file.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from influcoder_dagster.core.config import DatasetConfig
from influcoder_dagster.core.errors import DatasetError

SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".csv", ".tsv")
CSV_FIELD_LIMIT = 2**31 - 1  # the csv module's own limit, set on every read; over-long texts are quarantined by max_chars
MAX_JSON_DEPTH_REASON = "JSON nested too deeply to parse"


@dataclass(frozen=True)
class Sample:
    sample_id: int
    text: str
    source: str
    row: int
    meta: str  # the record's other fields as JSON, e.g. a label or a planted-group tag


@dataclass(frozen=True)
class QuarantineRow:
    source: str
    row: int
    reason: str
    excerpt: str


@dataclass
class Shard:
    """One input file: its samples, its quarantine, and a name keyed by its content."""

    name: str
    source: str
    content_hash: str
    rows_read: int = 0
    samples: list[Sample] = field(default_factory=list)
    quarantine: list[QuarantineRow] = field(default_factory=list)


def sample_id_for(text: str) -> int:
    """Stable 63-bit id from the text's SHA-256: a positive int64 for DuckDB and FAISS alike."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


def file_kind(path: Path) -> str | None:
    """The dataset format of ``path`` by its name (``.jsonl.gz`` counts as one suffix), or None if unsupported."""
    name = path.name.lower()
    return next((s for s in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def list_dataset_files(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_file():
        if file_kind(p) is None:
            raise DatasetError(f"{p}: unsupported format {p.suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and file_kind(f) is not None)
        if not files:
            raise DatasetError(f"{p}: no {'/'.join(SUPPORTED_SUFFIXES)} files in this folder")
        return files
    raise DatasetError(f"{p}: dataset path does not exist; set dataset.path in the config")


def skipped_files(path: str | Path) -> list[dict[str, str]]:
    """Files in a dataset folder that are not read, each with the reason: reported, never skipped silently."""
    p = Path(path)
    if not p.is_dir():
        return []
    return [{"path": str(f), "reason": f"unsupported format {''.join(f.suffixes[-2:]) or 'without a suffix'}; "
                                      f"use one of {', '.join(SUPPORTED_SUFFIXES)}"}
            for f in sorted(p.rglob("*")) if f.is_file() and file_kind(f) is None and not f.name.startswith(".")]


def shard_name(path: Path, content_hash: str, root: Path | None = None) -> str:
    """The file's path under the dataset root (so equal files in two folders stay two shards) plus its content hash."""
    return f"{shard_stem(path, root)}-{content_hash[:8]}"


def shard_stem(path: Path, root: Path | None = None) -> str:
    rel = path.relative_to(root) if root and root != path else Path(path.name)
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(rel.with_suffix("")))[-60:].strip("_") or "shard"


def _excerpt(value: Any, n: int = 120) -> str:
    """The start of a bad value, always storable: invalid Unicode (lone surrogates) becomes U+FFFD."""
    text = value if isinstance(value, str) else repr(value)
    return text[:n].encode("utf-8", "replace").decode("utf-8", "replace")


def _iter_jsonl(raw: bytes) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (line number, parsed record or raw text, problem or None). Lines end at LF, CRLF or a bare CR
    (JSON strings cannot hold a raw CR or LF, so no record is cut); a UTF-8 byte-order mark is skipped."""
    for i, line in enumerate(raw.removeprefix(b"\xef\xbb\xbf").splitlines(), start=1):
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield i, line.decode("utf-8", "replace"), f"non-UTF-8 bytes at byte {exc.start}"
            continue
        if not decoded.strip():
            yield i, decoded, "blank line"
            continue
        try:
            yield i, json.loads(decoded), None
        except json.JSONDecodeError as exc:
            yield i, decoded, f"malformed JSON: {exc.msg} at column {exc.colno}"
        except RecursionError:
            yield i, decoded, MAX_JSON_DEPTH_REASON


def _iter_csv(raw: bytes, path: Path, text_field: str, delimiter: str = ",") -> Iterator[tuple[int, Any, str | None]]:
    """Yield (line, record, problem or None). Strict parsing: a malformed record (an unclosed quote runs to the
    end of the file) becomes one quarantine row, and the rows after it are still read."""
    text = raw.decode("utf-8", "surrogateescape").removeprefix("\ufeff")  # a BOM, as Excel writes
    csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        fieldnames = reader.fieldnames or []
    except csv.Error as exc:
        raise DatasetError(f"{path}: line 1: unreadable header ({exc})") from exc
    if text_field not in fieldnames:
        raise DatasetError(f"{path}: line 1: CSV header has no column {text_field!r}; set dataset.text_field")
    while True:
        line = reader.line_num + 1  # the physical line where the next record starts; the header is line 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            lines = text.removesuffix("\n").split("\n")  # physical lines as the csv module counts them
            problem = (f"unclosed quote: the record runs from line {line} to the end of the file (line {len(lines)})"
                       if "unexpected end of data" in str(exc) else f"malformed CSV: {exc}")
            yield line, lines[line - 1] if line <= len(lines) else "", problem
            continue
        bad = next((v for v in record.values() if isinstance(v, str) and re.search("[\udc80-\udcff]", v)), None)
        if bad is not None:
            yield line, bad.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), "non-UTF-8 bytes"
        elif None in record:
            yield line, record, "more fields than the header"
        else:
            yield line, record, None


def _iter_parquet(path: Path, text_field: str) -> Iterator[tuple[int, Any, str | None]]:
    table = pq.read_table(path)
    if text_field not in table.column_names:
        raise DatasetError(
            f"{path}: no column {text_field!r} (columns: {', '.join(table.column_names)}); set dataset.text_field"
        )
    for i, record in enumerate(table.to_pylist(), start=1):
        yield i, record, None


def read_file(path: Path, cfg: DatasetConfig, root: Path | None = None) -> list[Shard]:
    """Validate one file into its shards (:func:`file_shards`), parsing it once: the whole file, or
    its blocks of ``cfg.shard_rows`` records. Duplicates within a shard are quarantined here; across
    shards, by :func:`read_dataset` and the corpus manifest."""
    raw = path.read_bytes()
    return [_shard_of(path, records, name, h, cfg) for name, h, records in _split(path, raw, _parsed(path, raw, cfg), cfg, root)]


def read_shard(path: Path, cfg: DatasetConfig, root: Path | None = None, block: int | None = None) -> Shard:
    """One shard of :func:`read_file`: the whole file (``block`` None) or its ``block``-th block,
    validating only that one."""
    raw = path.read_bytes()
    name, h, records = _split(path, raw, _parsed(path, raw, cfg), cfg, root)[block or 0]
    return _shard_of(path, records, name, h, cfg)


def _parsed(path: Path, raw: bytes, cfg: DatasetConfig) -> list[tuple[int, Any, str | None]]:
    return list(_records(path, raw, cfg.text_field))


def _split(path: Path, raw: bytes, records: list[Any] | None, cfg: DatasetConfig, root: Path | None
           ) -> list[tuple[str, str, list[Any] | None]]:
    """(name, content hash, records) of each shard of a file: the whole file (named by its bytes)
    when it holds at most ``cfg.shard_rows`` records (or ``records`` is None: not parsed), else its
    blocks, each named by its index and its own records."""
    if records is None or len(records) <= cfg.shard_rows:
        content_hash = hashlib.sha256(raw).hexdigest()
        return [(shard_name(path, content_hash, root), content_hash, records)]
    return [(block_name(path, b, h := _block_hash(block), root), h, block)
            for b, block in enumerate(_blocks(records, cfg.shard_rows))]


def _shard_of(path: Path, records: list[tuple[int, Any, str | None]], name: str, content_hash: str, cfg: DatasetConfig) -> Shard:
    """Every record of a shard into a kept sample or a quarantine row with its reason."""
    shard = Shard(name=name, source=str(path), content_hash=content_hash)
    seen: dict[int, int] = {}
    for row, record, problem in records:
        shard.rows_read += 1
        reason = problem or _validate(record, cfg.text_field, cfg.max_chars, cfg.min_chars)
        if reason is None:
            text = record[cfg.text_field]
            sid = sample_id_for(text)
            if sid in seen:
                reason = f"duplicate of line {seen[sid]}"
            else:
                seen[sid] = row
                meta = {k: v for k, v in record.items() if k != cfg.text_field}
                shard.samples.append(Sample(sid, text, str(path), row, json.dumps(meta, default=str, sort_keys=True)))
                continue
        shown = record.get(cfg.text_field, record) if isinstance(record, dict) else record
        shard.quarantine.append(QuarantineRow(str(path), row, reason, _excerpt(shown)))
    return shard


def _records(path: Path, raw: bytes, text_field: str) -> Iterable[tuple[int, Any, str | None]]:
    kind = file_kind(path)
    if kind == ".jsonl":
        return _iter_jsonl(raw)
    if kind == ".jsonl.gz":
        try:
            return _iter_jsonl(gzip.decompress(raw))
        except (OSError, EOFError) as exc:
            raise DatasetError(f"{path}: not a readable gzip file ({exc})") from exc
    if kind in (".csv", ".tsv"):
        return _iter_csv(raw, path, text_field, "\t" if kind == ".tsv" else ",")
    if kind == ".parquet":
        return _iter_parquet(path, text_field)
    raise DatasetError(f"{path}: unsupported format {path.suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")


def _validate(record: Any, text_field: str, max_chars: int, min_chars: int) -> str | None:
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__}"
    if text_field not in record:
        return f"missing field {text_field!r}"
    text = record[text_field]
    if text is None:
        return f"field {text_field!r} is null"
    if not isinstance(text, str):
        return f"field {text_field!r} is {type(text).__name__}, not a string"
    if len(text.strip()) < min_chars:
        return f"empty {text_field!r}"
    if len(text) > max_chars:
        return f"over-long: {len(text)} chars > dataset.max_chars={max_chars}"
    if "\x00" in text:
        return f"NUL character in {text_field!r} at character {text.index(chr(0))}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate such as "\ud800", which JSON escapes allow
        return f"invalid Unicode in {text_field!r}: a lone surrogate at character {exc.start}"
    return None


def read_dataset(path: str | Path, cfg: DatasetConfig | None = None) -> list[Shard]:
    """Read every shard; a sample already kept in an earlier shard is quarantined as a duplicate."""
    cfg = cfg or DatasetConfig()
    root = Path(path) if Path(path).is_dir() else None
    shards = [shard for f in list_dataset_files(path) for shard in read_file(f, cfg, root)]
    first_seen: dict[int, tuple[str, int]] = {}
    for shard in shards:
        kept = []
        for s in shard.samples:
            if s.sample_id in first_seen:
                src, row = first_seen[s.sample_id]
                shard.quarantine.append(QuarantineRow(s.source, s.row, f"duplicate of {src} line {row}", _excerpt(s.text)))
            else:
                first_seen[s.sample_id] = (s.source, s.row)
                kept.append(s)
        shard.samples = kept
        shard.quarantine.sort(key=lambda q: q.row)
    return shards


def dataset_version(shards: Iterable[tuple[str, str]], cfg: DatasetConfig) -> str:
    """Hash of the shards' (name, content hash) pairs and the options that change which rows are kept."""
    h = hashlib.sha256(f"{cfg.text_field}|{cfg.max_chars}|{cfg.min_chars}".encode())
    for name, content_hash in sorted(shards):
        h.update(f"{name}|{content_hash}".encode())
    return h.hexdigest()[:16]


def shard_files(path: str | Path, cfg: DatasetConfig | None = None) -> dict[str, Path]:
    """Shard name (the partition key) -> file, for every shard of the dataset."""
    cfg = cfg or DatasetConfig()
    root = Path(path) if Path(path).is_dir() else None
    return {name: f for f in list_dataset_files(path) for name in file_shards(f, cfg, root)}


def file_shards(path: Path, cfg: DatasetConfig, root: Path | None = None) -> dict[str, int | None]:
    """Shard name -> block (None: the whole file) for one file. A file of up to ``cfg.shard_rows``
    records is one shard named by its bytes. A larger one is cut into blocks of ``shard_rows``
    records, each named by its index and its own content: rows appended to the file add blocks (and
    change the last one), and a changed row renames only its block, so only that block is rebuilt."""
    raw = path.read_bytes()
    try:
        records = None if _few_records(path, raw, cfg.shard_rows) else _parsed(path, raw, cfg)
    except DatasetError:  # an unusable file stays one shard: its corpus run reports the error
        records = None
    shards = _split(path, raw, records, cfg, root)
    return {name: b if len(shards) > 1 else None for b, (name, _, _) in enumerate(shards)}


def _blocks(records: list[Any], n: int) -> list[list[Any]]:
    return [records[i : i + n] for i in range(0, len(records), n)]


def _few_records(path: Path, raw: bytes, limit: int) -> bool:
    """True when the file surely holds at most ``limit`` records, known without parsing it (JSONL: its lines)."""
    return file_kind(path) == ".jsonl" and len(raw.removeprefix(b"\xef\xbb\xbf").splitlines()) <= limit


def _block_hash(records: list[tuple[int, Any, str | None]]) -> str:
    h = hashlib.sha256()
    for record in records:
        h.update(json.dumps(record, default=str, sort_keys=True).encode() + b"\n")
    return h.hexdigest()


def block_name(path: Path, block: int, content_hash: str, root: Path | None = None) -> str:
    return f"{shard_stem(path, root)}_b{block:05d}-{content_hash[:8]}"


def find_shard(path: str | Path, name: str, cfg: DatasetConfig) -> tuple[Path, int | None]:
    """The dataset file behind shard ``name`` and its block: only files whose path gives the same stem are read."""
    root = Path(path) if Path(path).is_dir() else None
    stem = name.rsplit("-", 1)[0]
    stems = {stem, re.sub(r"_b\d{5}$", "", stem)}
    for f in list_dataset_files(path):
        if shard_stem(f, root) in stems and name in (shards := file_shards(f, cfg, root)):
            return f, shards[name]
    raise DatasetError(f"{path}: no file has the content of shard {name!r} any more (changed or removed); "
                       "the dataset sensor replaces its partition, or run `influcoder materialize` to sync")


def all_texts(shards: list[Shard]) -> list[str]:
    return [s.text for shard in shards for s in shard.samples]
