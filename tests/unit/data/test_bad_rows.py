"""Whatever a row holds, it ends as a sample or as a quarantine row with its reason; the file is never aborted."""

import csv
import gzip
import json

import pytest

from influcoder_dagster.core.config import DatasetConfig
from influcoder_dagster.data.dataset import read_dataset, read_shard, skipped_files


def reasons(shard) -> dict[int, str]:
    return {q.row: q.reason for q in shard.quarantine}


def reconciles(shard) -> bool:
    return shard.rows_read == len(shard.samples) + len(shard.quarantine)


def test_jsonl_rows_that_broke_the_reader_are_quarantined_and_the_rest_kept(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": "a first good sample"}),
             '{"text": "\\ud800 a lone surrogate"}',
             "[" * 100_000 + "]" * 100_000,  # nested deeper than the JSON parser recurses
             json.dumps({"text": "a NUL \u0000 inside"}),
             json.dumps({"text": "the last good sample"})]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")  # with a byte-order mark
    (shard,) = read_dataset(path)
    assert [s.text for s in shard.samples] == ["a first good sample", "the last good sample"]
    why = reasons(shard)
    assert why[2].startswith("invalid Unicode in 'text': a lone surrogate")
    assert why[3] == "JSON nested too deeply to parse"
    assert why[4].startswith("NUL character in 'text'")
    assert reconciles(shard) and all("\ud800" not in q.excerpt for q in shard.quarantine)


def test_bare_carriage_returns_end_jsonl_lines(tmp_path):
    path = tmp_path / "mac.jsonl"
    path.write_bytes(b'{"text": "one line"}\r{"text": "two lines"}\r\n{"text": "three lines"}\r')
    (shard,) = read_dataset(path)
    assert [(s.row, s.text) for s in shard.samples] == [(1, "one line"), (2, "two lines"), (3, "three lines")]


def test_an_unclosed_csv_quote_is_one_quarantine_row_not_a_swallowed_file(tmp_path):
    path = tmp_path / "quotes.csv"
    path.write_text('text,label\n"fine",1\n"bad"x,2\n"also fine",3\n"never closed,4\nlast,5\n')
    (shard,) = read_dataset(path)
    assert [s.text for s in shard.samples] == ["fine", "also fine"]
    why = reasons(shard)
    assert why[3].startswith("malformed CSV")
    assert why[5] == "unclosed quote: the record runs from line 5 to the end of the file (line 6)"
    assert reconciles(shard)


def test_an_over_long_csv_field_is_quarantined_whatever_ran_before(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("text\n" + "x" * (128 * 1024) + "\nshort one\n")
    for previous_limit in (1000, 10**9):  # csv.field_size_limit is global: another reader may have set it
        csv.field_size_limit(previous_limit)
        (shard,) = read_dataset(path, DatasetConfig(max_chars=1000))
        assert [s.text for s in shard.samples] == ["short one"]
        assert reasons(shard)[2].startswith("over-long: 131072 chars")


def test_gzipped_jsonl_and_tsv_are_read_and_other_files_are_reported(tmp_path):
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(json.dumps({"text": "from a gzip file"}).encode() + b"\n"))
    (tmp_path / "b.tsv").write_text("label\ttext\n1\ttab, separated, text\n")
    (tmp_path / "notes.docx").write_bytes(b"PK")
    shards = read_dataset(tmp_path)
    assert sorted(s.text for shard in shards for s in shard.samples) == ["from a gzip file", "tab, separated, text"]
    (skipped,) = skipped_files(tmp_path)
    assert skipped["path"].endswith("notes.docx") and "unsupported format .docx" in skipped["reason"]


@pytest.mark.parametrize("raw", [b"\x00\x01 not gzip at all"])
def test_a_broken_gzip_file_names_itself(tmp_path, raw):
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match="broken.jsonl.gz: not a readable gzip file"):
        read_shard(path, DatasetConfig())
