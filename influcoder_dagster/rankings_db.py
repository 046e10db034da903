"""The influence-rankings database (DuckDB): schema, writes, views, and the read-only snapshot.

The writer builds ``rankings.duckdb``; once it is complete it is copied to
``rankings.snapshot.duckdb`` through a temporary file and an atomic rename. Readers (the CLI,
notebooks, the ``duckdb`` shell) open the snapshot read-only, so they never wait on the writer's
lock and never see a half-written table.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .atomic import atomic_path

DB_NAME = "rankings.duckdb"
SNAPSHOT_NAME = "rankings.snapshot.duckdb"

SCHEMA = """
CREATE TABLE samples (
    sample_id BIGINT PRIMARY KEY, source VARCHAR, "row" INTEGER, text VARCHAR, n_tokens INTEGER,
    truncated BOOLEAN, shard VARCHAR, split VARCHAR, meta VARCHAR, dataset_version VARCHAR);
CREATE TABLE quarantine (
    source VARCHAR, "row" INTEGER, reason VARCHAR, excerpt VARCHAR, shard VARCHAR, dataset_version VARCHAR);
CREATE TABLE queries (
    query_id VARCHAR PRIMARY KEY, kind VARCHAR, text VARCHAR, prompt VARCHAR, sample_id BIGINT,
    split VARCHAR, meta VARCHAR);
CREATE TABLE runs (
    run_id VARCHAR PRIMARY KEY, base_model_hash VARCHAR, projection VARCHAR, dim INTEGER, seed INTEGER,
    dataset_version VARCHAR, store_key VARCHAR, created_at TIMESTAMP, dagster_run_id VARCHAR);
CREATE TABLE scores (
    query_id VARCHAR, sample_id BIGINT, score FLOAT, "rank" INTEGER, kind VARCHAR, run_id VARCHAR);
"""

VIEWS = """
CREATE VIEW top_k AS
    SELECT q.query_id, q.kind AS query_kind, q.text AS query_text, s."rank", s.score,
           m.sample_id, m.source, m."row", m.text
    FROM scores s JOIN queries q ON q.query_id = s.query_id JOIN samples m ON m.sample_id = s.sample_id
    WHERE s.kind = 'top';
CREATE VIEW source_influence AS
    SELECT s.query_id, m.source, count(*) AS n_in_top_k, sum(greatest(s.score, 0)) AS influence_mass
    FROM scores s JOIN samples m ON m.sample_id = s.sample_id
    WHERE s.kind = 'top'
    GROUP BY ALL;
CREATE VIEW most_influential AS
    SELECT m.sample_id, m.source, m."row", m.text, count(*) AS n_queries, avg(s.score) AS mean_score
    FROM scores s JOIN samples m ON m.sample_id = s.sample_id
    WHERE s.kind = 'top'
    GROUP BY ALL;
"""

TABLES = ("samples", "quarantine", "queries", "runs", "scores")


def write_database(home: Path, tables: dict[str, Any]) -> Path:
    """Replace the database's content with ``tables`` (pyarrow tables by name), then publish the snapshot.

    The caller holds the single-writer pool, so no other writer touches the file meanwhile.
    """
    import duckdb

    missing = set(TABLES) - set(tables)
    if missing:
        raise ValueError(f"missing tables: {sorted(missing)}")
    db = home / DB_NAME
    with atomic_path(db) as tmp:
        tmp.unlink()  # duckdb creates the file itself
        con = duckdb.connect(str(tmp))
        try:
            con.execute(SCHEMA)
            for name in TABLES:
                con.register("incoming", tables[name])
                con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM incoming")
                con.unregister("incoming")
            con.execute(VIEWS)
            con.execute("CHECKPOINT")
        finally:
            con.close()
    publish_snapshot(home)
    export_parquet(home)
    return db


def publish_snapshot(home: Path) -> Path:
    snap = home / SNAPSHOT_NAME
    with atomic_path(snap) as tmp:
        shutil.copyfile(home / DB_NAME, tmp)
    return snap


def export_parquet(home: Path) -> Path:
    """Every table as ``rankings/<table>.parquet`` for other engines."""
    import duckdb

    out = home / "rankings"
    out.mkdir(exist_ok=True)
    con = duckdb.connect(str(home / SNAPSHOT_NAME), read_only=True)
    try:
        for name in TABLES:
            with atomic_path(out / f"{name}.parquet") as tmp:
                con.execute(f"COPY {name} TO '{tmp}' (FORMAT parquet)")
    finally:
        con.close()
    return out


def connect_readonly(home: Path) -> Any:
    """A read-only connection to the published snapshot; a clear error if there is none."""
    import duckdb

    snap = home / SNAPSHOT_NAME
    if not snap.exists():
        raise FileNotFoundError(
            f"no rankings database at {snap}; materialize the 'influence_rankings' asset "
            "(influcoder materialize, or influcoder demo)"
        )
    return duckdb.connect(str(snap), read_only=True)
