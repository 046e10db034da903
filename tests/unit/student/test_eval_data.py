import duckdb
import numpy as np
import pytest

from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.student.eval_data import _eval_matrices, training_anchor_ids
from influcoder_dagster.teacher.rankings_db import SCHEMA


@pytest.fixture
def con(tmp_path):
    con = duckdb.connect(str(tmp_path / "r.duckdb"))
    con.execute(SCHEMA)
    for sid, split in ((3, "heldout"), (1, "heldout"), (7, "train"), (8, "train")):
        con.execute("INSERT INTO samples (sample_id, text, split) VALUES (?, ?, ?)", [sid, f"s{sid}", split])
    for qid, sid, split in (("b", 7, "train"), ("a", 8, "train"), ("z", 1, "heldout")):
        con.execute("INSERT INTO queries (query_id, kind, text, sample_id, split) VALUES (?, 'anchor', ?, ?, ?)",
                    [qid, f"q{qid}", sid, split])
    # written out of order: the matrix is (anchors by id) x (pool samples by id)
    for qid, sid, score in (("b", 3, 0.4), ("a", 3, 0.2), ("b", 1, 0.3), ("a", 1, 0.1)):
        con.execute("INSERT INTO scores (query_id, sample_id, score, kind) VALUES (?, ?, ?, 'eval')", [qid, sid, score])
    return con


def test_the_eval_matrix_puts_each_score_at_its_anchor_and_pool_sample(con):
    anchors, pool_ids, pool_texts, mat = _eval_matrices(con, "eval")
    assert (anchors, pool_ids, pool_texts) == (["qa", "qb"], [1, 3], ["s1", "s3"])
    np.testing.assert_array_equal(mat, np.array([[0.1, 0.2], [0.3, 0.4]], dtype=np.float32))
    assert training_anchor_ids(con).tolist() == [8, 7]  # anchors a, b


def test_a_missing_cell_or_an_unknown_sample_is_a_clear_error(con):
    con.execute("DELETE FROM scores WHERE query_id = 'a' AND sample_id = 1")
    with pytest.raises(MissingUpstreamError, match="incomplete 'eval'"):
        _eval_matrices(con, "eval")
    con.execute("INSERT INTO scores (query_id, sample_id, score, kind) VALUES ('a', 1, 0.1, 'eval'), ('a', 2, 0.5, 'eval')")
    with pytest.raises(MissingUpstreamError, match="missing from the rankings database"):
        _eval_matrices(con, "eval")
