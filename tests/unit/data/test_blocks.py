"""Bounded shards: a file of more than ``dataset.shard_rows`` records is cut into blocks, each named
by its index and its content, so appending rows or changing one row renames only the blocks touched."""

import json

import pytest

from influcoder_dagster.core.config import DatasetConfig
from influcoder_dagster.core.errors import DatasetError
from influcoder_dagster.data.dataset import file_shards, find_shard, read_dataset, read_shard, shard_files

CFG = DatasetConfig(shard_rows=10)


def write(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


def test_a_file_up_to_shard_rows_is_one_shard_and_a_larger_one_is_cut_into_blocks(tmp_path):
    write(tmp_path / "small.jsonl", [f"row {i}" for i in range(10)])
    write(tmp_path / "big.jsonl", [f"row {i}" for i in range(25)])
    assert list(file_shards(tmp_path / "small.jsonl", CFG).values()) == [None]
    blocks = file_shards(tmp_path / "big.jsonl", CFG)
    assert list(blocks.values()) == [0, 1, 2] and all(name.startswith(f"big_b{b:05d}-") for name, b in blocks.items())
    sizes = [len(read_shard(tmp_path / "big.jsonl", CFG, block=b).samples) for b in blocks.values()]
    assert sizes == [10, 10, 5]


def test_appended_rows_add_blocks_and_a_changed_row_renames_only_its_block(tmp_path):
    path = tmp_path / "data.jsonl"
    texts = [f"row {i}" for i in range(25)]
    write(path, texts)
    before = list(file_shards(path, CFG))
    write(path, [*texts, *(f"new {i}" for i in range(12))])
    appended = list(file_shards(path, CFG))
    assert appended[:2] == before[:2] and appended[2] != before[2] and len(appended) == 4
    texts[13] = "a changed row"
    write(path, texts)
    changed = list(file_shards(path, CFG))
    assert [a == b for a, b in zip(changed, before, strict=True)] == [True, False, True]


def test_blocks_keep_the_files_line_numbers_and_every_row_is_counted_once(tmp_path):
    lines = [json.dumps({"text": f"row {i}"}) for i in range(23)]
    lines[4], lines[15] = "{not json", json.dumps({"text": "row 0"})  # a malformed line; a duplicate of another block's row
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    shards = read_dataset(tmp_path, CFG)
    assert len(shards) == 3 and sum(s.rows_read for s in shards) == 23
    assert sum(len(s.samples) + len(s.quarantine) for s in shards) == 23
    rows = sorted([x.row for s in shards for x in s.samples] + [q.row for s in shards for q in s.quarantine])
    assert rows == list(range(1, 24))
    reasons = {q.row: q.reason for s in shards for q in s.quarantine}
    assert reasons[5].startswith("malformed JSON") and reasons[16].startswith("duplicate of")


def test_a_block_is_found_by_its_name_and_a_stale_name_is_refused(tmp_path):
    write(tmp_path / "data.jsonl", [f"row {i}" for i in range(25)])
    names = shard_files(tmp_path, CFG)
    for name, b in file_shards(tmp_path / "data.jsonl", CFG, tmp_path).items():
        assert find_shard(tmp_path, name, CFG) == (tmp_path / "data.jsonl", b) and name in names
    write(tmp_path / "data.jsonl", [f"other {i}" for i in range(25)])
    with pytest.raises(DatasetError, match="no file has the content of shard"):
        find_shard(tmp_path, next(iter(names)), CFG)
