"""The rankings read store rows a block at a time: the block size changes memory, never the scores."""

import numpy as np
from rankings_cases import configure

from influcoder_dagster.stages.base_model import run_base_model
from influcoder_dagster.stages.corpus import run_all_shards
from influcoder_dagster.stages.rankings import run_influence_rankings
from influcoder_dagster.teacher.rankings_db import connect_readonly


def _rows(home, kind):
    return sorted(connect_readonly(home).execute("SELECT query_id, sample_id, score FROM scores WHERE kind = ?", [kind]).fetchall())


def _run(home, data, lm, block_rows):
    cfg = configure(home, data, ["a.jsonl"], lm)
    cfg = cfg.model_copy(update={"rankings": cfg.rankings.model_copy(update={"block_rows": block_rows})})
    run_base_model(cfg)
    run_all_shards(cfg, progress=False)
    run_influence_rankings(cfg, progress=False)


def test_lists_and_random_candidates_are_the_same_a_block_or_all_at_once(tmp_path, local_lm):
    _run(tmp_path / "small", tmp_path / "small-data", local_lm, 5)  # 5 queries a store pass; one anchor's 6 candidates a block
    _run(tmp_path / "big", tmp_path / "big-data", local_lm, 4096)
    assert len({q for q, _, _ in _rows(tmp_path / "small", "top")}) > 5  # more queries than one pass scores
    for kind in ("top", "bottom", "random"):
        small, big = _rows(tmp_path / "small", kind), _rows(tmp_path / "big", kind)
        assert [r[:2] for r in small] == [r[:2] for r in big], kind
        np.testing.assert_allclose([r[2] for r in small], [r[2] for r in big], rtol=1e-5, atol=1e-6)
