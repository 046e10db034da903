"""Per-shard embeddings from the serving encoder: one partition per shard, the index is built from them."""

import dagster as dg

from influcoder_dagster.orchestration.partitions import corpus_shards
from influcoder_dagster.orchestration.resources import InflucoderConfig
from influcoder_dagster.orchestration.shard_backend import run_shard

from ._wrap import run_stage


@dg.asset(group_name="student", deps=["tokenized_corpus", "projected_gradients", "influcoder_encoder"], partitions_def=corpus_shards,
          kinds={"numpy"}, code_version="1", automation_condition=dg.AutomationCondition.eager(),
          description="embeddings/<encoder version>/<shard>.npy: the shard's index vectors from the MLflow champion (its "
                      "gradient rows in the champion's sketch basis, or a rankings-distilled encoder's text embeddings; the untrained "
                      "encoder before any passes its gate); reused while tokens and encoder are unchanged. A Ray task with compute.backend = 'ray'.")
def shard_embeddings(context: dg.AssetExecutionContext, influcoder: InflucoderConfig) -> dg.MaterializeResult:
    return run_stage(lambda: run_shard(influcoder.load(), "embeddings", context.partition_key))[1]
