import subprocess
import sys

import dagster as dg

SETTINGS = {"dataset_settings", "projection_settings", "rankings_settings", "encoder_settings", "index_settings"}
ASSETS = {"base_model_files", "base_model", "tokenized_corpus", "projected_gradients", "corpus_manifest", "influence_rankings",
          "influcoder_encoder", "shard_embeddings", "embedding_index"} | SETTINGS


def test_importing_the_code_location_loads_no_heavy_library():
    code = (
        "import sys, influcoder_dagster.definitions\n"
        "heavy = [m for m in ('torch', 'transformers', 'faiss', 'mlflow', 'sentence_transformers') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"heavy modules imported at load time: {out}"


def test_every_asset_is_wired_with_lineage():
    from influcoder_dagster.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == ASSETS
    parents = lambda name: {p.to_user_string() for p in graph.get(dg.AssetKey(name)).parent_keys}  # noqa: E731
    assert parents("base_model") == {"base_model_files"}
    assert parents("tokenized_corpus") == {"base_model", "dataset_settings"}
    assert parents("projected_gradients") == {"tokenized_corpus", "base_model", "projection_settings"}
    assert parents("corpus_manifest") == {"tokenized_corpus", "projected_gradients"}
    assert parents("influence_rankings") == {"corpus_manifest", "base_model", "rankings_settings"}
    assert parents("influcoder_encoder") == {"influence_rankings", "encoder_settings"}
    assert parents("shard_embeddings") == {"tokenized_corpus", "projected_gradients", "influcoder_encoder"}
    assert parents("embedding_index") == {"shard_embeddings", "influcoder_encoder", "corpus_manifest", "index_settings"}
    partitioned = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).is_partitioned}
    assert partitioned == {"tokenized_corpus", "projected_gradients", "shard_embeddings"}
    assert defs.resolve_job_def("reindex") is not None and defs.resolve_job_def("shards").partitions_def is not None
    assert {s.name for s in defs.schedules} == {"nightly_reindex", "weekly_retrain"}


def test_the_rankings_writer_runs_in_the_single_writer_pool():
    from influcoder_dagster.definitions import defs

    node = defs.resolve_assets_def("influence_rankings")
    assert node.node_def.pool == "duckdb_writer"


def test_the_nightly_schedule_requests_the_reindex_job():
    from influcoder_dagster.orchestration.automation import nightly_reindex

    ctx = dg.build_schedule_context()
    data = nightly_reindex.evaluate_tick(ctx)
    assert nightly_reindex.job_name == "reindex" and len(data.run_requests) == 1
