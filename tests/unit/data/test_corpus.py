import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from influcoder_dagster.core.config import DatasetConfig
from influcoder_dagster.core.errors import DatasetError
from influcoder_dagster.data.dataset import dataset_version, read_dataset, sample_id_for


def write_lines(path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_each_bad_row_is_quarantined_with_its_reason_and_counts_reconcile(tmp_path):
    good = json.dumps({"text": "a good line", "label": 1}).encode()
    write_lines(tmp_path / "a.jsonl", [
        good,
        b'{"text": "broken',
        json.dumps({"title": "x"}).encode(),
        json.dumps({"text": "  "}).encode(),
        b'{"text": "caf\xe9"}',
        json.dumps({"text": "y" * 50}).encode(),
        good,
        json.dumps({"text": 7}).encode(),
        b"[1, 2]",
    ])
    (shard,) = read_dataset(tmp_path, DatasetConfig(max_chars=40))
    reasons = {q.row: q.reason for q in shard.quarantine}
    assert reasons[2].startswith("malformed JSON")
    assert reasons[3] == "missing field 'text'"
    assert reasons[4] == "empty 'text'"
    assert reasons[5].startswith("non-UTF-8 bytes")
    assert reasons[6].startswith("over-long: 50 chars")
    assert reasons[7] == "duplicate of line 1"
    assert reasons[8] == "field 'text' is int, not a string"
    assert reasons[9].startswith("not a JSON object")
    assert [s.row for s in shard.samples] == [1]
    assert json.loads(shard.samples[0].meta) == {"label": 1}
    assert shard.rows_read == len(shard.samples) + len(shard.quarantine) == 9


def test_duplicates_across_files_are_quarantined_in_the_later_file(tmp_path):
    write_lines(tmp_path / "a.jsonl", [json.dumps({"text": "same"}).encode()])
    pq.write_table(pa.table({"body": ["same", "other"]}), tmp_path / "b.parquet")
    a, b = read_dataset(tmp_path / "a.jsonl"), read_dataset(tmp_path / "b.parquet", DatasetConfig(text_field="body"))
    assert len(a[0].samples) == 1 and len(b[0].samples) == 2
    (tmp_path / "c.csv").write_text("text,src\nsame,x\nnew one,y\n", encoding="utf-8")
    (tmp_path / "b.parquet").unlink()
    first, second = read_dataset(tmp_path)
    assert [q.reason for q in second.quarantine] == [f"duplicate of {tmp_path / 'a.jsonl'} line 1"]
    assert [s.text for s in second.samples] == ["new one"]
    assert second.samples[0].row == 3  # physical line in the CSV, header is line 1


def test_a_file_without_the_text_column_is_rejected_naming_the_file(tmp_path):
    (tmp_path / "d.csv").write_text("body\nhello\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"d\.csv: line 1: CSV header has no column 'text'"):
        read_dataset(tmp_path / "d.csv")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "e.parquet")
    with pytest.raises(DatasetError, match=r"e\.parquet: no column 'text'"):
        read_dataset(tmp_path / "e.parquet")
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(tmp_path / "missing")


def test_ids_are_stable_content_hashes_and_the_version_follows_the_content(tmp_path):
    assert sample_id_for("hello") == sample_id_for("hello") != sample_id_for("hello ")
    assert 0 < sample_id_for("hello") < 2**63
    write_lines(tmp_path / "a.jsonl", [json.dumps({"text": "one"}).encode()])
    v1 = dataset_version([(s.name, s.content_hash) for s in read_dataset(tmp_path)], DatasetConfig(max_chars=100))
    assert v1 == dataset_version([(s.name, s.content_hash) for s in read_dataset(tmp_path)], DatasetConfig(max_chars=100))
    write_lines(tmp_path / "a.jsonl", [json.dumps({"text": "two"}).encode()])
    assert dataset_version([(s.name, s.content_hash) for s in read_dataset(tmp_path)], DatasetConfig(max_chars=100)) != v1


def test_equal_files_in_two_folders_stay_two_shards(tmp_path):
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        write_lines(tmp_path / d / "train.jsonl", [json.dumps({"text": "same line"}).encode()])
    a, b = read_dataset(tmp_path)
    assert a.name != b.name and a.name.startswith("d1_train") and b.name.startswith("d2_train")
    assert len(a.samples) == 1 and [q.reason.split(" of ")[0] for q in b.quarantine] == ["duplicate"]


def test_csv_with_a_bom_a_multiline_record_and_a_huge_field(tmp_path):
    big = "y" * 200_000
    (tmp_path / "e.csv").write_bytes(("\ufefftext,src\n\"first\nsecond\",x\nplain,y\n" + big + ",z\n").encode("utf-8"))
    (shard,) = read_dataset(tmp_path / "e.csv", DatasetConfig(max_chars=300_000))
    assert [(s.row, s.text) for s in shard.samples] == [(2, "first\nsecond"), (4, "plain"), (5, big)]
    (shard,) = read_dataset(tmp_path / "e.csv", DatasetConfig(max_chars=1000))
    assert [q.row for q in shard.quarantine] == [5] and shard.quarantine[0].reason.startswith("over-long")
