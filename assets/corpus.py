"""The tokenized corpus: one partition per dataset file, then the manifest that publishes them together."""

import dagster as dg

from influcoder_dagster.orchestration.partitions import corpus_shards
from influcoder_dagster.orchestration.resources import InflucoderConfig
from influcoder_dagster.stages.corpus import run_corpus_manifest, run_corpus_shard

from ._wrap import run_stage


@dg.asset(group_name="teacher", deps=["base_model", "dataset_settings"], partitions_def=corpus_shards, kinds={"parquet"}, code_version="2",
          automation_condition=dg.AutomationCondition.eager(),
          description="corpus/<shard>.parquet: one file's validated samples (id, text, token ids, source, row); "
                      "bad rows in <shard>.quarantine.parquet with the reason.")
def tokenized_corpus(context: dg.AssetExecutionContext, influcoder: InflucoderConfig) -> dg.MaterializeResult:
    return run_stage(lambda: run_corpus_shard(influcoder.load(), context.partition_key))[1]


@dg.asset(group_name="teacher", deps=["tokenized_corpus", "projected_gradients"], kinds={"json"}, code_version="2",
          automation_condition=dg.AutomationCondition.eager(),
          description="corpus/manifest.json and the gradient store's manifest: the current shards as one corpus, "
                      "cross-file duplicates quarantined. Its data version hashes the shards' versions, so lineage "
                      "reaches the assets below however many partitions there are.")
def corpus_manifest(context: dg.AssetExecutionContext, influcoder: InflucoderConfig) -> dg.MaterializeResult:
    names = context.instance.get_dynamic_partitions(corpus_shards.name)
    return run_stage(lambda: run_corpus_manifest(influcoder.load(), sorted(names)))[1]
