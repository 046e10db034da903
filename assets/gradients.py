"""Projected per-sample gradients of the base model, one fp16 memmap per shard."""

import dagster as dg

from influcoder_dagster import teacher_stages
from influcoder_dagster.resources import InflucoderConfig

from ._wrap import run_stage


@dg.asset(group_name="teacher", deps=["tokenized_corpus", "base_model"], kinds={"pytorch", "numpy"}, code_version="1",
          pool="gradient_store_writer",
          description="gradients/<key>/: row-major fp16 projected gradients plus manifest; resumable, reuses finished shards.")
def projected_gradients(influcoder: InflucoderConfig) -> dg.MaterializeResult:
    return run_stage(lambda: teacher_stages.run_projected_gradients(influcoder.load()))[1]
