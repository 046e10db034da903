"""The FAISS index of every corpus sample, embedded by the champion encoder."""

import dagster as dg
import numpy as np

from influcoder_dagster import student_stages
from influcoder_dagster.paths import Paths
from influcoder_dagster.resources import InflucoderConfig

from ._wrap import run_stage


@dg.asset(group_name="student", deps=["shard_embeddings", "corpus_manifest", "influcoder_encoder"], kinds={"faiss"}, code_version="2",
          automation_condition=dg.AutomationCondition.eager(),
          description="index/*.faiss + manifest: ids are corpus sample ids; built from the MLflow 'champion' encoder. New samples are added and removed ones dropped in place (cheap, so eager).")
def embedding_index(influcoder: InflucoderConfig) -> dg.MaterializeResult:
    return run_stage(lambda: student_stages.run_embedding_index(influcoder.load()))[1]


@dg.asset_check(asset=embedding_index, description="The index holds exactly the corpus's sample ids.")
def index_matches_corpus(influcoder: InflucoderConfig) -> dg.AssetCheckResult:
    from influcoder_dagster.index import index_ids, load_index
    from influcoder_dagster.tokenized import read_corpus, read_manifest

    paths = Paths(influcoder.load().home_path)
    index, manifest = load_index(paths.index)
    corpus_ids = np.sort(read_corpus(paths.corpus, columns=["sample_id"]).column("sample_id").to_numpy())
    ids = np.sort(index_ids(index))
    same_version = manifest["dataset_version"] == read_manifest(paths.corpus)["dataset_version"]
    return dg.AssetCheckResult(
        passed=bool(np.array_equal(ids, corpus_ids) and same_version),
        metadata={"index_count": int(len(ids)), "corpus_count": int(len(corpus_ids)), "same_dataset_version": same_version},
    )
