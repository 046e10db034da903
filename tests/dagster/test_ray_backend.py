"""The Ray backend on a real local Ray cluster (2 CPUs, started with ``ray start``): gradient
extraction and shard embeddings run as Ray tasks in other processes, and the store rows, the
rankings and the index equal the local backend's bit for bit."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from test_incremental_dagster import run, write_config, write_files

from influcoder_dagster.core.paths import Paths
from influcoder_dagster.serving.index import index_ids, load_index
from influcoder_dagster.teacher.rankings_db import connect_readonly
from influcoder_dagster.teacher.store import open_store

pytestmark = [pytest.mark.ray, pytest.mark.slow]
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def ray_address():
    """A head node of 2 CPUs in its own processes, as a cluster would be; stopped after the module."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env)
    yield f"127.0.0.1:{port}"
    import ray

    ray.shutdown()
    subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env)


def build(root: Path, lm: Path, compute: str) -> dict:
    write_files(root / "data", ["a.jsonl", "b.jsonl", "c.jsonl"])
    config = write_config(root, lm)
    Path(config).write_text(Path(config).read_text() + compute)
    with dg.instance_for_test() as instance:
        return run(config, root, instance)


def store_rows(home: Path) -> tuple[np.ndarray, np.ndarray]:
    ids, rows = zip(*open_store(Paths(home)).iter_blocks(4096), strict=True)
    ids, rows = np.concatenate(ids), np.concatenate(rows)
    return ids[np.argsort(ids)], rows[np.argsort(ids)]


def score_rows(home: Path) -> list[tuple]:
    con = connect_readonly(home)
    try:
        return con.execute('SELECT query_id, kind, sample_id, "rank", score FROM scores ORDER BY ALL').fetchall()
    finally:
        con.close()


def index_vectors(home: Path) -> tuple[np.ndarray, np.ndarray]:
    index, _ = load_index(Paths(home).index)  # an IndexIDMap over a flat index at this size
    ids, vectors = index_ids(index), index.index.reconstruct_n(0, index.ntotal)
    order = np.argsort(ids)
    return ids[order], vectors[order]


def test_shard_work_runs_as_ray_tasks_and_equals_the_local_backend_bit_for_bit(tmp_path, local_lm, ray_address, one_thread):
    local = build(tmp_path / "local", local_lm, "")
    remote = build(tmp_path / "ray", local_lm, f'[compute]\nbackend = "ray"\nray_address = "{ray_address}"\n')
    shard_runs = {k: v for k, v in remote.items() if k.startswith(("projected_gradients[", "shard_embeddings["))}
    assert len(shard_runs) == 6  # three shards, two per-shard assets
    assert all(v.get("worker_pid") not in (None, os.getpid()) and v.get("ray_node") for v in shard_runs.values())
    assert not any("worker_pid" in v for v in local.values())
    (ids_a, rows_a), (ids_b, rows_b) = store_rows(tmp_path / "local" / "home"), store_rows(tmp_path / "ray" / "home")
    assert np.array_equal(ids_a, ids_b) and np.array_equal(rows_a, rows_b)
    assert score_rows(tmp_path / "local" / "home") == score_rows(tmp_path / "ray" / "home")
    (ids_a, vec_a), (ids_b, vec_b) = index_vectors(tmp_path / "local" / "home"), index_vectors(tmp_path / "ray" / "home")
    assert np.array_equal(ids_a, ids_b) and np.array_equal(vec_a, vec_b)
