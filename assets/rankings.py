"""The teacher's influence rankings in DuckDB, published as a read-only snapshot."""

import dagster as dg

from influcoder_dagster.orchestration.resources import InflucoderConfig
from influcoder_dagster.stages.rankings import run_influence_rankings

from ._wrap import run_stage

DUCKDB_WRITER_POOL = "duckdb_writer"


@dg.asset(group_name="teacher", deps=["corpus_manifest", "base_model", "rankings_settings"], kinds={"duckdb"},
          code_version="2", pool=DUCKDB_WRITER_POOL, automation_condition=dg.AutomationCondition.eager(),
          description="rankings.duckdb (+ snapshot, + Parquet): samples, quarantine, queries, scores, runs, views.")
def influence_rankings(context: dg.AssetExecutionContext, influcoder: InflucoderConfig) -> dg.MaterializeResult:
    return run_stage(lambda: run_influence_rankings(influcoder.load(), dagster_run_id=context.run_id))[1]
