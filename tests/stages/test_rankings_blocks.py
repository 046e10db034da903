"""The rankings read store rows a block at a time: the block size changes memory, never the scores."""

import numpy as np
from rankings_cases import build, configure

from influcoder_dagster.stages.base_model import run_base_model
from influcoder_dagster.stages.corpus import run_all_shards
from influcoder_dagster.stages.rankings import run_influence_rankings
from influcoder_dagster.teacher.rankings_db import connect_readonly


def _random_rows(home):
    return sorted(connect_readonly(home).execute("SELECT query_id, sample_id, score FROM scores WHERE kind = 'random'").fetchall())


def test_random_candidates_score_the_same_two_anchors_a_block_or_all_at_once(tmp_path, local_lm):
    build(tmp_path / "small", tmp_path / "small-data", ["a.jsonl"], local_lm)  # block_rows 16, 6 candidates: 2 anchors a block
    cfg = configure(tmp_path / "big", tmp_path / "big-data", ["a.jsonl"], local_lm)
    cfg = cfg.model_copy(update={"rankings": cfg.rankings.model_copy(update={"block_rows": 4096})})
    run_base_model(cfg)
    run_all_shards(cfg, progress=False)
    run_influence_rankings(cfg, progress=False)
    small, big = _random_rows(tmp_path / "small"), _random_rows(tmp_path / "big")
    assert len({q for q, _, _ in small}) > 2  # more anchors than one block holds
    assert [r[:2] for r in small] == [r[:2] for r in big]
    np.testing.assert_allclose([r[2] for r in small], [r[2] for r in big], rtol=1e-5, atol=1e-6)
