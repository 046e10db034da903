import threading

import duckdb
import pyarrow as pa
import pytest

from influcoder_dagster.core.errors import InflucoderError, MissingUpstreamError
from influcoder_dagster.teacher.rankings_db import Update, apply_update, connect_readonly, run_query


def write_database(home, tables: dict) -> None:
    apply_update(home, Update(rebuild=True, state={"run": tables["run"]["run_id"][0].as_py()}, **tables))


def tables(n_scores: int, tag: str) -> dict:
    return {
        "samples": pa.table({"sample_id": pa.array([1, 2], pa.int64()), "source": ["a.jsonl", "b.jsonl"], "row": [1, 1],
                             "text": ["one", "two"], "n_tokens": [2, 2], "truncated": [False, False], "shard": ["a", "b"],
                             "split": ["train", "heldout"], "meta": ["{}", "{}"], "dataset_version": ["d", "d"]}),
        "quarantine": pa.table({"source": ["a.jsonl"], "row": [2], "reason": ["empty 'text'"], "excerpt": [""],
                                "shard": ["a"], "dataset_version": ["d"]}),
        "queries": pa.table({"query_id": ["q"], "kind": ["user"], "text": ["query"], "prompt": [None],
                             "sample_id": pa.array([None], pa.int64()), "split": [None], "meta": ["{}"]}),
        "run": pa.table({"run_id": [tag], "base_model_hash": ["m"], "projection": ["logra"], "dim": [8], "seed": [0],
                         "dataset_version": ["d"], "store_key": ["k"], "mode": ["rebuild"], "preconditioned": [False],
                         "created_at": pa.array([None], pa.timestamp("us")), "dagster_run_id": [None]}),
        "scores": pa.table({"query_id": ["q"] * n_scores, "sample_id": pa.array([1, 2][:n_scores], pa.int64()),
                            "score": pa.array([0.9, 0.1][:n_scores], pa.float32()), "rank": [1, 2][:n_scores],
                            "kind": ["top"] * n_scores, "run_id": [tag] * n_scores}),
    }


def test_views_answer_the_common_questions(tmp_path):
    write_database(tmp_path, tables(2, "r1"))
    con = connect_readonly(tmp_path)
    assert con.execute('SELECT sample_id, "rank", source FROM top_k ORDER BY "rank"').fetchall() == [(1, 1, "a.jsonl"), (2, 2, "b.jsonl")]
    mass = dict(con.execute("SELECT source, influence_mass FROM source_influence").fetchall())
    assert mass["a.jsonl"] == pytest.approx(0.9)
    assert con.execute("SELECT n_queries FROM most_influential WHERE sample_id = 1").fetchone() == (1,)
    with pytest.raises(duckdb.Error):
        con.execute("DELETE FROM scores")
    assert (tmp_path / "rankings" / "scores.parquet").exists()


def test_a_reader_holding_the_snapshot_sees_old_or_new_never_a_failure(tmp_path):
    write_database(tmp_path, tables(1, "old"))
    reader = connect_readonly(tmp_path)
    seen, errors = [], []

    def read_many():
        try:
            for _ in range(50):
                seen.append(reader.execute("SELECT run_id, count(*) FROM scores GROUP BY run_id").fetchall())
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    t = threading.Thread(target=read_many)
    t.start()
    write_database(tmp_path, tables(2, "new"))
    t.join()
    assert not errors
    assert all(s in ([("old", 1)], [("new", 2)]) for s in seen)
    reader.close()  # DuckDB shares one open database per path within a process; a new one sees the new file
    assert connect_readonly(tmp_path).execute("SELECT run_id FROM runs").fetchone() == ("new",)


def test_no_database_gives_a_clear_error(tmp_path):
    with pytest.raises(MissingUpstreamError, match="materialize 'influence_rankings'"):
        connect_readonly(tmp_path)


@pytest.mark.parametrize("attack", [
    "ATTACH '{writer}' AS w (READ_WRITE)",  # then DELETE FROM w.scores: the next incremental run would publish it
    "COPY (SELECT 1) TO '{writer}'",  # overwrites the writer database
    "COPY scores TO '{outside}'",  # writes a file anywhere
    "SELECT * FROM read_csv('/etc/passwd')",  # reads any file
    "SET enable_external_access = true",  # switches the sandbox off
    "INSTALL httpfs",
])
def test_sql_cannot_reach_any_file_but_the_snapshot(tmp_path, attack):
    write_database(tmp_path, tables(2, "r1"))
    writer = tmp_path / "rankings.duckdb"
    before = writer.read_bytes()
    with pytest.raises(duckdb.Error):
        run_query(tmp_path, attack.format(writer=writer, outside=tmp_path / "stolen.csv"))
    assert writer.read_bytes() == before and not (tmp_path / "stolen.csv").exists()
    assert run_query(tmp_path, "SELECT count(*) FROM scores")[1] == [(2,)]


@pytest.mark.parametrize("sql", ["", "   ", "-- only a comment", "/* a block comment */"])
def test_a_query_without_a_statement_gets_a_clear_error(tmp_path, sql):
    write_database(tmp_path, tables(1, "r1"))
    with pytest.raises(InflucoderError, match="no SQL statement"):
        run_query(tmp_path, sql)


def test_duplicate_column_names_survive_and_a_long_query_is_stopped(tmp_path):
    write_database(tmp_path, tables(1, "r1"))
    assert run_query(tmp_path, "SELECT 1 AS a, 2 AS a, 3 AS a_2") == (["a", "a_3", "a_2"], [(1, 2, 3)])
    with pytest.raises(InflucoderError, match="longer than 0.5 s"):
        run_query(tmp_path, "SELECT count(*) FROM range(10000000000) t(x), range(100000) u(y)", timeout_s=0.5)


@pytest.mark.parametrize("terminal", [False, True])
def test_the_progress_bar_shows_only_on_a_terminal(tmp_path, monkeypatch, terminal):
    write_database(tmp_path, tables(2, "r1"))
    monkeypatch.setattr("sys.stdout.isatty", lambda: terminal)
    con = connect_readonly(tmp_path)
    assert con.execute("SELECT current_setting('enable_progress_bar')").fetchone() == (terminal,)


def test_a_second_connection_to_a_locked_snapshot_opens(tmp_path):
    write_database(tmp_path, tables(2, "r1"))
    first = connect_readonly(tmp_path)
    second = connect_readonly(tmp_path)  # the same database instance, its configuration already locked
    assert first.execute("SELECT count(*) FROM samples").fetchone() == second.execute("SELECT count(*) FROM samples").fetchone() == (2,)
