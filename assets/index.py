"""The FAISS index of every corpus sample, embedded by the champion encoder, and its check."""

import dagster as dg

from influcoder_dagster.orchestration.resources import InflucoderConfig
from influcoder_dagster.stages.index import index_matches_corpus as check_index
from influcoder_dagster.stages.index import run_embedding_index

from ._wrap import run_stage


@dg.asset(group_name="student", deps=["shard_embeddings", "corpus_manifest", "influcoder_encoder", "index_settings"], kinds={"faiss"}, code_version="2",
          automation_condition=dg.AutomationCondition.eager(),
          description="index/*.faiss + manifest: ids are corpus sample ids; built from the MLflow 'champion' encoder. New samples are added and removed ones dropped in place (cheap, so eager).")
def embedding_index(influcoder: InflucoderConfig) -> dg.MaterializeResult:
    return run_stage(lambda: run_embedding_index(influcoder.load()))[1]


@dg.asset_check(asset=embedding_index, description="The index holds exactly the corpus's sample ids.")
def index_matches_corpus(influcoder: InflucoderConfig) -> dg.AssetCheckResult:
    passed, metadata = check_index(influcoder.load())
    return dg.AssetCheckResult(passed=passed, metadata=metadata)
