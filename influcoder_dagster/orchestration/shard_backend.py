"""Where per-shard work runs: in the Dagster run's process (``compute.backend = "local"``) or as a
Ray task (``"ray"``). Both run the same stage function; only the process differs.

Ray is called from the asset rather than through dagster-ray's Pipes client. A Ray task reuses a
warm worker, with torch and the engine already imported, where a Ray job starts a new driver for
each shard. The asset's partition stays the one commit point, and Dagster needs no Ray-specific
run launcher: a backfill's concurrent partition runs become concurrent Ray tasks. Every worker
reads and writes the storage root at the path the config names, so that root must be a filesystem
every node mounts at the same path.

A task uses as many torch threads as the submitting process, so its floating-point sums run in the
same order and its rows equal the local backend's bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from influcoder_dagster.core.config import ComputeConfig, Config
from influcoder_dagster.stages.embeddings import run_shard_embeddings
from influcoder_dagster.stages.gradients import run_shard_gradients
from influcoder_dagster.stages.result import StageResult

SHARD_STAGES: dict[str, Callable[..., StageResult]] = {"gradients": run_shard_gradients, "embeddings": run_shard_embeddings}


def run_shard(cfg: Config, stage: str, name: str) -> StageResult:
    """Run one shard of ``stage`` ("gradients" or "embeddings") on the configured backend."""
    if cfg.compute.backend == "local":
        return SHARD_STAGES[stage](cfg, name, progress=False)
    import ray
    import torch

    connect(cfg.compute)
    task = ray.remote(num_cpus=cfg.compute.ray_cpus_per_task, max_retries=0)(_shard_task)
    return ray.get(task.remote(cfg, stage, name, torch.get_num_threads()))


def connect(compute: ComputeConfig) -> None:
    """Join the configured cluster once per process (a local one when no address is set)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=compute.ray_address, include_dashboard=False, log_to_driver=False, configure_logging=False)


def _shard_task(cfg: Config, stage: str, name: str, threads: int) -> StageResult:
    import ray
    import torch

    torch.set_num_threads(threads)
    result = SHARD_STAGES[stage](cfg, name, progress=False)
    result.metadata.update(ray_node=ray.get_runtime_context().get_node_id(), worker_pid=os.getpid())
    return result
