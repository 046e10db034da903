"""An incremental update of the rankings equals a full rebuild on the same data."""

import json
import shutil

import duckdb
import numpy as np

from influcoder_dagster import teacher_stages
from influcoder_dagster.config import Config
from influcoder_dagster.rankings_stage import run_influence_rankings

FILES = {
    "a.jsonl": [f"sample number {i} talks about topic {i % 7} and ends here." for i in range(60)],
    "b.jsonl": [f"the topic {i % 5} is covered by sample {i} twice." for i in range(50)],
    "c.jsonl": [f"sample {i} ends here about number {i % 3}." for i in range(40)],
}


def build(home, data_dir, names, lm, precondition=False):
    data_dir.mkdir(parents=True, exist_ok=True)
    for f in data_dir.iterdir():
        f.unlink()
    for name in names:
        (data_dir / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in FILES[name]))
    queries = home.parent / f"{home.name}-queries.jsonl"
    queries.write_text(json.dumps({"query_id": "u1", "text": "sample number 3 talks about topic 3", "prompt": "sample number"}) + "\n")
    cfg = Config.model_validate({
        "home": str(home), "dataset": {"path": str(data_dir), "queries_path": str(queries)},
        "model": {"base_model": str(lm), "max_length": 32}, "projection": {"dim": 256, "kind": "logra", "target": "weights", "adam_precondition": False},  # a corpus-independent teacher
        "rankings": {"anchor_fraction": 0.2, "top_k": 8, "n_bottom": 4, "n_random": 6, "eval_pool_size": 20,
                     "block_rows": 16, "precondition": precondition},
    })
    teacher_stages.run_base_model(cfg)
    teacher_stages.run_all_shards(cfg, progress=False)
    return run_influence_rankings(cfg, progress=False)


def lists(home):
    con = duckdb.connect(str(home / "rankings.snapshot.duckdb"), read_only=True)
    rows = con.execute("""SELECT query_id, kind, list(sample_id ORDER BY "rank"), list(score ORDER BY "rank")
                          FROM scores WHERE kind IN ('top', 'bottom') GROUP BY ALL""").fetchall()
    samples = {s for (s,) in con.execute("SELECT sample_id FROM samples").fetchall()}
    return {(q, k): (ids, np.array(s)) for q, k, ids, s in rows}, samples


def assert_same_rankings(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key][0] == b[key][0], key
        np.testing.assert_allclose(a[key][1], b[key][1], rtol=1e-5, atol=1e-6)


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
    con = duckdb.connect(str(tmp_path / "inc" / "rankings.snapshot.duckdb"), read_only=True)
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
