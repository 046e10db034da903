import duckdb

from influcoder_dagster.serving.audit import aggregate, write_audit


def hit(rank, sid, score):
    return {"rank": rank, "sample_id": sid, "score": score, "source": "/d/a.jsonl", "row": sid, "text": f"text {sid}"}


HITS = [[hit(1, 7, 0.9), hit(2, 8, 0.5)], [hit(1, 8, 0.6), hit(2, 9, -0.2)], [hit(1, 8, 0.1), hit(2, 7, 0.3)]]


def test_samples_behind_more_outputs_rank_first_then_by_mass():
    rows = aggregate(HITS)
    assert [r["sample_id"] for r in rows] == [8, 7, 9]
    assert rows[0]["n_queries"] == 3 and abs(rows[0]["mass"] - 1.2) < 1e-9 and rows[0]["best_rank"] == 1
    assert rows[2]["mass"] == 0.0 and rows[2]["max_score"] == -0.2  # negative scores add no mass


def test_the_audit_writes_tables_a_report_and_a_plot(tmp_path):
    queries = [{"query_id": f"q{i}"} for i in range(3)]
    files = write_audit(tmp_path / "audit", queries, HITS, "test")
    con = duckdb.connect(str(files["database"]), read_only=True)
    assert con.execute("SELECT count(*) FROM hits").fetchone() == (6,)
    assert con.execute("SELECT sample_id FROM suspects ORDER BY n_queries DESC, mass DESC LIMIT 1").fetchone() == (8,)
    report = files["report"].read_text()
    assert "| 1 | 3/3 | 1.200 |" in report and files["plot"].read_bytes()[:4] == b"\x89PNG"
