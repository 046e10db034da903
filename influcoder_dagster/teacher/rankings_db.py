"""The influence-rankings database (DuckDB): schema, writes, views, and the read-only snapshot.

The writer updates ``rankings.duckdb`` in one transaction; once committed it is copied to
``rankings.snapshot.duckdb`` through a temporary file and an atomic rename. Readers (the CLI,
notebooks, the ``duckdb`` shell) open the snapshot read-only, so they never wait on the writer's
lock and never see a half-written table.
"""

from __future__ import annotations

import shutil
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from influcoder_dagster.core.atomic import atomic_dir, atomic_path
from influcoder_dagster.core.errors import InflucoderError, MissingUpstreamError
from influcoder_dagster.core.paths import Paths

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
    dataset_version VARCHAR, store_key VARCHAR, mode VARCHAR, preconditioned BOOLEAN, created_at TIMESTAMP,
    dagster_run_id VARCHAR);
CREATE TABLE scores (
    query_id VARCHAR, sample_id BIGINT, score FLOAT, "rank" INTEGER, kind VARCHAR, run_id VARCHAR);
CREATE TABLE state (key VARCHAR PRIMARY KEY, value VARCHAR);
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

TABLES = ("samples", "quarantine", "queries", "runs", "scores", "state")


@dataclass
class Update:
    """One change to the database, applied in a single transaction.

    ``rebuild`` starts from an empty schema; otherwise rows are deleted as listed, then the new rows
    inserted: samples of ``drop_shards``; queries in ``drop_queries`` with all their scores; the
    ``top``/``bottom`` lists of ``relisted`` queries (replaced by the new rows); and the random/eval
    rows that point at a dropped sample.
    """

    rebuild: bool
    samples: Any
    quarantine: Any
    queries: Any
    scores: Any
    run: Any
    state: dict[str, str]
    drop_shards: list[str] = field(default_factory=list)
    drop_queries: list[str] = field(default_factory=list)
    relisted: list[str] = field(default_factory=list)


def connect(path: Path, read_only: bool = False, **config: Any) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection whose progress bar shows only on a terminal: in a log file or a Dagster
    compute log it would be a stream of carriage-return redraws. ``lock_configuration`` is applied last."""
    locked = config.pop("lock_configuration", False)
    con = duckdb.connect(str(path), read_only=read_only, config=config)
    # Session options, not settable in connect()'s config. A second connection to a file this process
    # already has open shares its database instance, whose configuration another reader may have locked.
    if not con.execute("SELECT current_setting('lock_configuration')").fetchall()[0][0]:  # fetchall: no result left open
        con.execute(f"SET enable_progress_bar = {sys.stdout.isatty()}")
        if locked:
            con.execute("SET lock_configuration = true")
    return con


def apply_update(home: Path, update: Update) -> Path:
    """Apply ``update`` to the writer database, then publish the snapshot and the Parquet export.

    The caller holds the single-writer pool, so no other writer touches the file meanwhile.
    """
    db = Paths(home).rankings_db
    if update.rebuild:
        db.unlink(missing_ok=True)
        Path(f"{db}.wal").unlink(missing_ok=True)
    con = connect(db)
    try:
        if update.rebuild:
            con.execute(SCHEMA)
            con.execute(VIEWS)
        con.execute("BEGIN TRANSACTION")
        lists = {"shards": update.drop_shards, "queries": update.drop_queries, "relisted": update.relisted}
        for name, values in lists.items():
            con.register(f"drop_{name}", pa.table({"v": pa.array(values, pa.string())}))
        con.execute("""
            DELETE FROM scores WHERE kind IN ('random', 'eval', 'eval_ceiling', 'eval_as_queried')
                AND sample_id IN (SELECT sample_id FROM samples WHERE shard IN (SELECT v FROM drop_shards));
            DELETE FROM scores WHERE query_id IN (SELECT v FROM drop_queries);
            DELETE FROM scores WHERE kind IN ('top', 'bottom') AND query_id IN (SELECT v FROM drop_relisted);
            DELETE FROM queries WHERE query_id IN (SELECT v FROM drop_queries);
            DELETE FROM samples WHERE shard IN (SELECT v FROM drop_shards);
            DELETE FROM quarantine;
            DELETE FROM state;
        """)
        for name, table in (("samples", update.samples), ("quarantine", update.quarantine), ("queries", update.queries),
                            ("runs", update.run), ("scores", update.scores)):
            con.register("incoming", table)
            con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM incoming")
            con.unregister("incoming")
        con.executemany("INSERT INTO state VALUES (?, ?)", list(update.state.items()))
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    publish_snapshot(home)
    export_parquet(home)
    return db


def read_state(home: Path) -> dict[str, str] | None:
    """The key/value state the last update left (None without a database)."""
    db = Paths(home).rankings_db
    if not db.exists():
        return None
    con = connect(db, read_only=True)
    try:
        return dict(con.execute("SELECT key, value FROM state").fetchall())
    except duckdb.Error:  # a database from before the state table: rebuild it
        return None
    finally:
        con.close()


def writer_query(home: Path, sql: str, params: list[Any] | None = None) -> list[tuple]:
    """Read from the writer database (the caller holds the writer pool)."""
    con = connect(Paths(home).rankings_db, read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def publish_snapshot(home: Path) -> Path:
    snap = Paths(home).rankings_snapshot
    with atomic_path(snap) as tmp:
        shutil.copyfile(Paths(home).rankings_db, tmp)
    return snap


def export_parquet(home: Path) -> Path:
    """Every table as ``rankings/<table>.parquet`` for other engines, published as one set (one folder swap).

    Read from the writer database: the snapshot may be held open by a sandboxed reader in this process.
    """
    out = Paths(home).rankings_parquet
    con = connect(Paths(home).rankings_db, read_only=True)
    try:
        with atomic_dir(out) as tmp:
            for name in TABLES:
                quoted = str(tmp / f"{name}.parquet").replace("'", "''")
                con.execute(f"COPY {name} TO '{quoted}' (FORMAT parquet)")
    finally:
        con.close()
    return out


# A reader of the snapshot reads its tables and nothing else: no other file (ATTACH, COPY, read_csv),
# no extension, and no way to switch that back on from SQL.
SANDBOX = {"enable_external_access": False, "autoload_known_extensions": False, "autoinstall_known_extensions": False,
           "lock_configuration": True}


def connect_readonly(home: Path, memory_limit: str | None = None) -> Any:
    """A sandboxed, read-only connection to the published snapshot; a clear error if there is none."""
    snap = Paths(home).rankings_snapshot
    if not snap.exists():
        raise MissingUpstreamError(f"no rankings database at {snap}", "influence_rankings")
    config = {**SANDBOX, **({"memory_limit": memory_limit} if memory_limit else {})}
    return connect(snap, read_only=True, **config)


def run_query(home: Path, sql: str, memory_limit: str = "2GB", timeout_s: float = 60.0) -> tuple[list[str], list[tuple]]:
    """A user's SQL on the sandboxed snapshot: (column names, unique in order; rows). Stopped after ``timeout_s``."""
    con = connect_readonly(home, memory_limit)
    try:
        if not con.extract_statements(sql):
            raise InflucoderError("the query holds no SQL statement (only blanks or comments); e.g. SELECT * FROM top_k LIMIT 5")
        timer = threading.Timer(timeout_s, con.interrupt)
        timer.start()
        try:
            cursor = con.execute(sql)
            rows = cursor.fetchall() if cursor.description else []
        except duckdb.InterruptException as exc:
            raise InflucoderError(f"the query ran longer than {timeout_s:g} s and was stopped; narrow it or raise --timeout") from exc
        finally:
            timer.cancel()
        return unique_names([d[0] for d in cursor.description or []]), rows
    finally:
        con.close()


def unique_names(names: list[str]) -> list[str]:
    """Column names made unique (``a``, ``a_2``), so a JSON object per row keeps every column."""
    taken: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 1
        while candidate in taken or (candidate != name and candidate in names):
            n += 1
            candidate = f"{name}_{n}"
        taken.add(candidate)
        out.append(candidate)
    return out
