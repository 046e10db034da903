"""An incremental update of the rankings equals a full rebuild on the same data."""

import shutil

import numpy as np
import pytest
from rankings_cases import DEFAULT_TEACHER, LORA_ADAM_TEACHER, assert_same_rankings, build, configure, lists, pair_scores

from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.stages.corpus import run_all_shards
from influcoder_dagster.teacher.preconditioner import read_preconditioner
from influcoder_dagster.teacher.query_cache import CEILING_POOL_CACHE
from influcoder_dagster.teacher.rankings_db import connect_readonly
from influcoder_dagster.teacher.store import open_store


def test_adding_then_removing_a_file_matches_full_rebuilds(tmp_path, local_lm):
    grown = build(tmp_path / "inc", tmp_path / "inc-data", ["a.jsonl", "b.jsonl"], local_lm)
    assert grown.metadata["mode"] == "rebuild"
    added = build(tmp_path / "inc", tmp_path / "inc-data", ["a.jsonl", "b.jsonl", "c.jsonl"], local_lm)
    assert added.metadata["mode"] == "incremental" and len(added.metadata["shards_added"]) == 1
    # only anchors on the new file are scored in full; everything else is merged with the new rows
    assert added.metadata["queries_scored_in_full"] == added.metadata["anchors_train"] + added.metadata["anchors_heldout"] - grown.metadata["anchors_train"] - grown.metadata["anchors_heldout"]
    build(tmp_path / "full", tmp_path / "full-data", ["a.jsonl", "b.jsonl", "c.jsonl"], local_lm)
    inc_lists, inc_samples = lists(tmp_path / "inc")
    full_lists, full_samples = lists(tmp_path / "full")
    assert inc_samples == full_samples
    assert_same_rankings(inc_lists, full_lists)

    removed = build(tmp_path / "inc", tmp_path / "inc-data", ["a.jsonl", "c.jsonl"], local_lm)
    assert removed.metadata["mode"] == "incremental" and len(removed.metadata["shards_removed"]) == 1
    shutil.rmtree(tmp_path / "full")
    build(tmp_path / "full", tmp_path / "full-data", ["a.jsonl", "c.jsonl"], local_lm)
    inc_lists, inc_samples = lists(tmp_path / "inc")
    full_lists, full_samples = lists(tmp_path / "full")
    assert inc_samples == full_samples
    assert_same_rankings(inc_lists, full_lists)
    con = connect_readonly(tmp_path / "inc")
    assert con.execute("SELECT count(*) FROM scores WHERE sample_id NOT IN (SELECT sample_id FROM samples)").fetchone() == (0,)
    assert con.execute("SELECT count(DISTINCT mode) FROM runs").fetchone() == (2,)


def test_nothing_new_scores_nothing_and_preconditioning_changes_the_ranking(tmp_path, local_lm):
    build(tmp_path / "h", tmp_path / "d", ["a.jsonl"], local_lm)
    again = build(tmp_path / "h", tmp_path / "d", ["a.jsonl"], local_lm)
    assert again.metadata["queries_scored_in_full"] == 0 and again.metadata["score_rows_written"] == 0
    plain, _ = lists(tmp_path / "h")
    pre = build(tmp_path / "h", tmp_path / "d", ["a.jsonl"], local_lm, precondition=True)
    assert pre.metadata["mode"] == "rebuild" and pre.metadata["preconditioned"]
    pre_lists, _ = lists(tmp_path / "h")
    assert pre_lists.keys() == plain.keys() and any(pre_lists[k][0] != plain[k][0] for k in plain)


@pytest.mark.slow
@pytest.mark.parametrize("teacher", [DEFAULT_TEACHER, LORA_ADAM_TEACHER], ids=["head_logit_fisher", "lora_adam"])
def test_an_update_equals_a_rebuild_on_the_same_base_model_statistics(tmp_path, local_lm, teacher):
    first = build(tmp_path / "inc", tmp_path / "inc-data", ["a.jsonl", "b.jsonl"], local_lm, projection=teacher)
    cache = open_store(Paths(tmp_path / "inc")).root / CEILING_POOL_CACHE
    pool_rows = dict(np.load(cache))
    added = build(tmp_path / "inc", tmp_path / "inc-data", ["a.jsonl", "b.jsonl", "c.jsonl"], local_lm, projection=teacher)
    assert added.metadata["mode"] == "incremental" and added.metadata["anchors_heldout"] > first.metadata["anchors_heldout"]
    # The new held-out anchors' ceiling rows were extracted; the pool's were read back, not re-extracted.
    with connect_readonly(tmp_path / "inc") as con:
        pool = con.execute("SELECT DISTINCT sample_id FROM scores WHERE kind = 'eval_ceiling'").fetchall()
    assert sorted(int(q) for q in pool_rows["query_id"]) == sorted(p for (p,) in pool)
    assert all(np.array_equal(pool_rows[k], v) for k, v in np.load(cache).items())
    # The adapters and the logits' Fisher are estimated on the corpus present when base_model ran: the rebuild reuses them.
    shutil.copytree(tmp_path / "inc" / "models", tmp_path / "full" / "models")
    build(tmp_path / "full", tmp_path / "full-data", ["a.jsonl", "b.jsonl", "c.jsonl"], local_lm, projection=teacher)
    (inc_lists, inc_samples), (full_lists, full_samples) = lists(tmp_path / "inc"), lists(tmp_path / "full")
    assert inc_samples == full_samples
    assert_same_rankings(inc_lists, full_lists)
    # Evaluation and candidate rows: the held-out pool is drawn at a rebuild, so the two hold different
    # pairs; every pair both hold has the same score.
    inc, full = pair_scores(tmp_path / "inc"), pair_scores(tmp_path / "full")
    shared = inc.keys() & full.keys()
    as_queried = {"eval_as_queried"} if teacher.get("adam_precondition") else set()  # only Adam pool rows differ from queries
    assert {k for _, _, k in shared} >= {"eval", "eval_ceiling", "random"} | as_queried
    np.testing.assert_allclose([inc[p] for p in sorted(shared)], [full[p] for p in sorted(shared)], rtol=1e-5, atol=1e-6)


def test_a_preconditioner_estimated_on_other_data_is_refused(tmp_path, local_lm):
    build(tmp_path / "h", tmp_path / "d", ["a.jsonl", "b.jsonl"], local_lm, precondition=True)
    store = open_store(Paths(tmp_path / "h"))
    assert read_preconditioner(store) is not None  # written with the rankings, for the re-rank
    run_all_shards(configure(tmp_path / "h", tmp_path / "d", ["a.jsonl", "b.jsonl", "c.jsonl"], local_lm, precondition=True),
                   progress=False)  # new data published, the rankings not rebuilt yet
    with pytest.raises(MissingUpstreamError, match="was estimated on data version .* materialize 'influence_rankings'"):
        read_preconditioner(open_store(Paths(tmp_path / "h")))
