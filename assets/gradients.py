"""Projected per-sample gradients of the base model: one partition (one fp16 memmap) per shard."""

import sys

import dagster as dg

from influcoder_dagster.orchestration.partitions import corpus_shards
from influcoder_dagster.orchestration.resources import InflucoderConfig
from influcoder_dagster.orchestration.shard_backend import run_shard

from ._wrap import run_stage


@dg.asset(group_name="teacher", deps=["tokenized_corpus", "base_model", "projection_settings"], partitions_def=corpus_shards,
          kinds={"pytorch", "numpy"}, code_version="2", automation_condition=dg.AutomationCondition.eager(),
          description="gradients/<key>/<shard>.f16: row-major fp16 projected gradients of one shard; resumable, "
                      "reused when the shard's tokens are unchanged; with projection.head_factors also <shard>.head.safetensors, "
                      "the head's token factors for --rerank N --factors. Runs in a subprocess through Dagster Pipes "
                      "with projection.out_of_process, or as a Ray task with compute.backend = 'ray'.")
def projected_gradients(context: dg.AssetExecutionContext, influcoder: InflucoderConfig) -> dg.MaterializeResult:
    cfg = influcoder.load()
    if not cfg.projection.out_of_process:
        return run_stage(lambda: run_shard(cfg, "gradients", context.partition_key))[1]
    # The same engine call in another process: the pattern for a cluster (swap the client for
    # dagster-k8s' or dagster-ray's Pipes client; the worker stays as it is).
    return dg.PipesSubprocessClient().run(
        command=[sys.executable, "-m", "influcoder_dagster.orchestration.pipes_worker"], context=context,
        extras={"config_path": influcoder.config_path},
    ).get_materialize_result()
