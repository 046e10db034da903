"""Bounded shards through a real Dagster instance: a file larger than ``dataset.shard_rows`` becomes
several partitions; rows appended to it rebuild only its last block and add new ones, and a changed
row rebuilds only its block."""

import json
from pathlib import Path

import dagster as dg
import pytest
from rankings_cases import FILES
from test_incremental_dagster import computed, run, write_config

from influcoder_dagster.data.tokenized import read_corpus

pytestmark = pytest.mark.slow
TEXTS = FILES["a.jsonl"] + FILES["b.jsonl"] + FILES["c.jsonl"]  # 150 distinct rows


def write(root: Path, texts: list[str]) -> None:
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "big.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


def blocks(meta: dict) -> dict[int, int]:
    """Block index -> rows computed, from the partition keys ``big_bNNNNN-<hash>``."""
    return {int(key.split("_b")[1][:5]): rows for key, rows in computed(meta).items()}


def test_appended_rows_cost_only_the_last_block_and_a_changed_row_only_its_block(tmp_path, local_lm):
    write(tmp_path, TEXTS[:90])
    config = Path(write_config(tmp_path, local_lm))
    config.write_text(config.read_text().replace("[dataset]\n", "[dataset]\nshard_rows = 40\n"))
    texts = list(TEXTS)
    with dg.instance_for_test() as instance:
        assert blocks(run(str(config), tmp_path, instance)) == {0: 40, 1: 40, 2: 10}
        write(tmp_path, texts[:125])  # 35 rows appended: block 2 grows to 40, block 3 is new
        assert blocks(run(str(config), tmp_path, instance)) == {2: 40, 3: 5}
        texts[45] = "a row changed in place, in the second block."
        write(tmp_path, texts[:125])
        assert blocks(run(str(config), tmp_path, instance)) == {1: 40}
        corpus = read_corpus(tmp_path / "home" / "corpus", columns=["text"]).column("text").to_pylist()
        assert sorted(corpus) == sorted(texts[:125])
