import numpy as np
import pytest

from influcoder_dagster.teacher.pools import ScoreRows, anchor_ids, eval_pool, pool_split, random_candidates


def test_split_and_anchors_depend_on_the_id_alone():
    ids = np.arange(20_000, dtype=np.int64) * 7919 + 3
    split = pool_split(ids, 0.2)
    assert 0.18 < (split == "heldout").mean() < 0.22
    np.testing.assert_array_equal(pool_split(ids[::-1], 0.2), split[::-1])
    anchors = anchor_ids(ids, 0.15, seed=0)
    assert 0.13 < len(anchors) / len(ids) < 0.17
    # growing the corpus keeps every old anchor and adds anchors among the new ids only
    grown = anchor_ids(np.concatenate([ids, ids + 1]), 0.15, seed=0)
    assert set(anchors) <= set(grown) and set(grown) - set(anchors) <= set(ids + 1)
    # anchors are not just the held-out split again
    assert 0.1 < (pool_split(anchors, 0.2) == "heldout").mean() < 0.3


def test_eval_pool_and_random_candidates_are_reproducible():
    ids = np.arange(1, 2001, dtype=np.int64) * 101
    split = pool_split(ids, 0.3)
    anchors = set(anchor_ids(ids, 0.1, 0).tolist())
    pool = eval_pool(ids, split, anchors, 50, seed=0)
    assert len(pool) == 50 and all(split[ids == p][0] == "heldout" and int(p) not in anchors for p in pool)
    np.testing.assert_array_equal(pool, eval_pool(ids[::-1], split[::-1], anchors, 50, seed=0))
    a = random_candidates(ids[0], ids, 10, seed=0)
    np.testing.assert_array_equal(a, random_candidates(ids[0], ids, 10, seed=0))
    assert ids[0] not in a and len(set(a.tolist())) == 10


def test_rows_are_ranked_best_first_and_bottom_lists_most_negative_first():
    rows = ScoreRows()
    rows.add("q", np.array([1, 2, 3]), np.array([0.1, 0.9, 0.5]), "top")
    rows.add("q", np.array([4, 5]), np.array([-0.1, -0.7]), "bottom", ascending=True)
    rows.add("p", np.array([6, -1]), np.array([0.3, 0.0]), "random")  # id -1 is padding
    table = rows.table("run")
    assert table.column("sample_id").to_pylist() == [2, 3, 1, 5, 4, 6] and table.column("rank").to_pylist() == [1, 2, 3, 1, 2, 1]
    assert table.column("query_id").to_pylist() == ["q"] * 5 + ["p"] and table.column("kind").to_pylist() == ["top"] * 3 + ["bottom"] * 2 + ["random"]
    assert table.column("score").to_pylist() == pytest.approx([0.9, 0.5, 0.1, -0.7, -0.1, 0.3])
    assert table.column("run_id").to_pylist() == ["run"] * 6 and len(rows) == 6
    assert ScoreRows().table("run").num_rows == 0
