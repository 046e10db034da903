"""An incremental update of the rankings equals a full rebuild on the same data."""

import shutil

from rankings_cases import assert_same_rankings, build, lists

from influcoder_dagster.teacher.rankings_db import connect_readonly


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
