"""The CLI refuses bad arguments with a one-line message and never shows a traceback for a user's mistake."""

import duckdb
import pytest

from influcoder_dagster.app.cli import main


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A storage root with a tiny published snapshot, as the SQL command reads it."""
    con = duckdb.connect(str(tmp_path / "rankings.snapshot.duckdb"))
    con.execute("CREATE TABLE scores AS SELECT 'q' AS query_id, 1 AS sample_id, 0.5::DOUBLE AS score")
    con.close()
    monkeypatch.setenv("INFLUCODER_HOME", str(tmp_path))
    monkeypatch.delenv("INFLUCODER_CONFIG", raising=False)
    return tmp_path


@pytest.mark.parametrize("argv", [["attribute", "text", "-k", "0"], ["attribute", "text", "--rerank", "-5"],
                                  ["audit", "--file", "x.jsonl", "-k", "-1"], ["materialize", "--workers", "0"],
                                  ["sql", "SELECT 1", "--timeout", "0"]])
def test_non_positive_counts_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and "error: argument" in capsys.readouterr().err


def test_a_blank_query_is_refused_before_anything_loads(home, capsys):
    assert main(["attribute", "   "]) == 2
    assert "not blank" in capsys.readouterr().err


def test_sql_answers_from_the_snapshot_and_refuses_other_files_and_empty_queries(home, capsys):
    assert main(["sql", "SELECT score, score FROM scores", "--json"]) == 0
    assert '"score_2": 0.5' in capsys.readouterr().out  # a repeated column name keeps both columns
    assert main(["sql", f"ATTACH '{home / 'other.duckdb'}' AS o"]) == 1
    assert "disabled by configuration" in capsys.readouterr().err and not (home / "other.duckdb").exists()
    assert main(["sql", "-- just a comment"]) == 1
    assert "no SQL statement" in capsys.readouterr().err
