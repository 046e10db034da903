"""Incremental materialization through a real Dagster instance (``instance_for_test``) and real files:
the sensor's partitions, new data costing only new work, removals, the base model's lineage, automation."""

import datetime
import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
from rankings_cases import FILES, assert_same_rankings, lists

from influcoder_dagster.app.lineage import stale_resolver
from influcoder_dagster.app.runner import failure_messages, materialization_metadata, materialize, observe_sources
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.data.dataset import shard_files
from influcoder_dagster.data.tokenized import read_corpus
from influcoder_dagster.orchestration.automation import dataset_sensor
from influcoder_dagster.orchestration.resources import InflucoderConfig
from influcoder_dagster.serving.attribute import Attributor
from influcoder_dagster.serving.index import index_ids, load_index
from influcoder_dagster.teacher.rankings_db import connect_readonly

# Everything but the encoder (its training is tested elsewhere): the index then serves the base encoder.
NO_ENCODER = ["base_model", "tokenized_corpus", "projected_gradients", "corpus_manifest", "influence_rankings",
              "shard_embeddings", "embedding_index"]
TEACHER = NO_ENCODER[:5]


def write_files(data, names):
    data.mkdir(parents=True, exist_ok=True)
    for name in names:
        (data / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in FILES[name]))


def write_config(root, lm, out_of_process=False):
    (root / "queries.jsonl").write_text(json.dumps({"query_id": "u1", "text": "sample number 3 talks about topic 3"}) + "\n")
    config = root / "influcoder.toml"
    # The weights teacher: a LoRA teacher warms its adapters on the corpus present when base_model is
    # materialized, so a rebuild on more data would be another teacher and could not be compared.
    config.write_text(
        f'home = "{root / "home"}"\n[dataset]\npath = "{root / "data"}"\nqueries_path = "{root / "queries.jsonl"}"\n'
        f'[model]\nbase_model = "{lm}"\nmax_length = 32\n[projection]\ndim = 256\nkind = "logra"\ntarget = "weights"\nadam_precondition = false\nout_of_process = {str(out_of_process).lower()}\n'
        "[rankings]\nanchor_fraction = 0.2\ntop_k = 8\nn_bottom = 4\nn_random = 6\neval_pool_size = 20\nblock_rows = 16\n"
        "[encoder]\nmax_seq_length = 32\n"
    )
    return str(config)


def run(config, root, instance, select=NO_ENCODER, workers=1):
    runs = materialize(config, root / "home", select, instance=instance, workers=workers)
    assert runs.success, failure_messages(runs)
    return materialization_metadata(runs)


def computed(meta):
    return {k.split("[")[1][:-1]: v["rows_computed"] for k, v in meta.items() if k.startswith("projected_gradients[")}


@pytest.fixture
def lm(tmp_path, local_lm):
    """A private copy of the decoder, so a test may change it."""
    return shutil.copytree(local_lm, tmp_path / "lm")


def test_the_sensor_adds_a_partition_per_new_file_and_deletes_those_of_removed_files(tmp_path, lm):
    write_files(tmp_path / "data", ["a.jsonl"])
    resources = {"influcoder": InflucoderConfig(config_path=write_config(tmp_path, lm))}
    with dg.instance_for_test() as instance:
        def tick(cursor):
            result = dataset_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))
            for request in getattr(result, "dynamic_partitions_requests", None) or []:  # what the daemon does
                if isinstance(request, dg.AddDynamicPartitionsRequest):
                    instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
                else:
                    for key in request.partition_keys:
                        instance.delete_dynamic_partition(request.partitions_def_name, key)
            return result

        first = tick(None)
        (key_a,) = shard_files(tmp_path / "data")
        assert [r.partition_key for r in first.run_requests] == [key_a]
        assert {k.to_user_string() for k in first.run_requests[0].asset_selection} == {
            "tokenized_corpus", "projected_gradients", "shard_embeddings"}
        assert [e.asset_key.to_user_string() for e in first.asset_events] == [
            "base_model_files", "dataset_settings", "projection_settings", "rankings_settings", "encoder_settings", "index_settings"]
        assert isinstance(tick(first.cursor), dg.SkipReason)
        config = tmp_path / "influcoder.toml"
        config.write_text(config.read_text().replace("top_k = 8", "top_k = 9"))
        changed = tick(first.cursor)
        assert [e.asset_key.to_user_string() for e in changed.asset_events] == ["rankings_settings"] and not changed.run_requests
        config.write_text(config.read_text().replace("top_k = 9", "top_k = 8"))

        write_files(tmp_path / "data", ["b.jsonl"])
        added = tick(first.cursor)
        (key_b,) = set(shard_files(tmp_path / "data")) - {key_a}
        assert [r.partition_key for r in added.run_requests] == [key_b] and not added.asset_events
        assert sorted(instance.get_dynamic_partitions("corpus_shards")) == sorted([key_a, key_b])

        (tmp_path / "data" / "a.jsonl").unlink()
        removed = tick(added.cursor)
        assert instance.get_dynamic_partitions("corpus_shards") == [key_b]
        (refresh,) = removed.run_requests
        assert refresh.partition_key is None and {k.to_user_string() for k in refresh.asset_selection} == {
            "corpus_manifest", "influence_rankings", "embedding_index"}

        write_files(tmp_path / "data", ["a.jsonl"])  # back again: the same key, but a new run (not deduplicated by its run key)
        (again,) = tick(removed.cursor).run_requests
        assert again.partition_key == key_a and again.run_key != first.run_requests[0].run_key


@pytest.mark.slow
def test_a_new_file_costs_only_its_rows_and_a_removed_file_leaves_rankings_and_index(tmp_path, lm):
    write_files(tmp_path / "data", ["a.jsonl", "b.jsonl"])
    config = write_config(tmp_path, lm)
    home = tmp_path / "home"
    with dg.instance_for_test() as instance:
        first = run(config, tmp_path, instance)
        assert sum(computed(first).values()) == len(FILES["a.jsonl"]) + len(FILES["b.jsonl"])

        # A new file, its gradients extracted out of process through Dagster Pipes.
        write_files(tmp_path / "data", ["c.jsonl"])
        config = write_config(tmp_path, lm, out_of_process=True)
        second = run(config, tmp_path, instance)
        (key_c,) = set(shard_files(tmp_path / "data")) - {k.split("[")[1][:-1] for k in first if "[" in k}
        assert computed(second) == {key_c: len(FILES["c.jsonl"])}  # only the new shard ran, only its rows
        embedded = {k: v["rows_embedded"] for k, v in second.items() if k.startswith("shard_embeddings[")}
        assert embedded == {f"shard_embeddings[{key_c}]": len(FILES["c.jsonl"])}
        assert second["embedding_index"]["samples_added"] == len(FILES["c.jsonl"]) and second["embedding_index"]["samples_embedded_here"] == 0
        assert second["influence_rankings"]["mode"] == "incremental"
        corpus_ids = set(read_corpus(Paths(home).corpus, columns=["sample_id"]).column("sample_id").to_pylist())
        assert len(corpus_ids) == sum(len(v) for v in FILES.values())
        assert set(index_ids(load_index(Paths(home).index)[0]).tolist()) == corpus_ids
        incremental = lists(home)
        assert incremental[1] == corpus_ids

        # The same three files from scratch, their shards run in parallel: the same rankings.
        with dg.instance_for_test() as fresh:
            rebuild_root = tmp_path / "rebuild"
            write_files(rebuild_root / "data", list(FILES))
            rebuilt = run(write_config(rebuild_root, lm), rebuild_root, fresh, workers=2)
            assert len(computed(rebuilt)) == 3 and sum(k.startswith("shard_embeddings[") for k in rebuilt) == 3
            assert_same_rankings(incremental[0], lists(rebuild_root / "home")[0])

        # Removing a file: its rows leave the rankings and the index.
        rows = read_corpus(Paths(home).corpus, columns=["sample_id", "source"]).to_pylist()
        a_ids = {r["sample_id"] for r in rows if r["source"].endswith("a.jsonl")}
        (tmp_path / "data" / "a.jsonl").unlink()
        third = run(config, tmp_path, instance, TEACHER)
        assert computed(third) == {} and third["corpus_manifest"]["rows_kept"] == len(corpus_ids) - len(a_ids)
        # Mid-refresh (the corpus published, the index not yet): a reader gets the index's own version, whole.
        hits = Attributor(home).query([FILES["a.jsonl"][0]], k=len(corpus_ids))[0]
        assert {h["sample_id"] for h in hits} == corpus_ids and all(h["text"] for h in hits)
        run(config, tmp_path, instance, ["shard_embeddings", "embedding_index"])
        con = connect_readonly(home)
        left = con.execute("SELECT count(*) FROM scores WHERE sample_id IN (SELECT unnest(?))", [sorted(a_ids)]).fetchone()[0]
        assert left == 0 and not a_ids & lists(home)[1]
        assert not a_ids & set(index_ids(load_index(Paths(home).index)[0]).tolist())

        # The same file back: its partition (same key) was forgotten with its files, so it is rebuilt.
        write_files(tmp_path / "data", ["a.jsonl"])
        fourth = run(config, tmp_path, instance)
        assert list(computed(fourth).values()) == [len(FILES["a.jsonl"])]
        assert set(index_ids(load_index(Paths(home).index)[0]).tolist()) == corpus_ids


def statuses(instance):
    resolver = stale_resolver(instance)
    keys = instance.get_dynamic_partitions("corpus_shards")
    out = {name: resolver.get_status(dg.AssetKey(name)).value
           for name in ("base_model", "corpus_manifest", "influence_rankings")}
    for name in ("tokenized_corpus", "projected_gradients"):
        out[name] = {resolver.get_status(dg.AssetKey(name), k).value for k in keys}
    return out


def all_statuses(instance):
    resolver = stale_resolver(instance)
    keys = instance.get_dynamic_partitions("corpus_shards")
    out = {name: resolver.get_status(dg.AssetKey(name)).value
           for name in ("base_model", "corpus_manifest", "influence_rankings", "influcoder_encoder", "embedding_index")}
    out.update({name: {resolver.get_status(dg.AssetKey(name), k).value for k in keys}
                for name in ("tokenized_corpus", "projected_gradients", "shard_embeddings")})
    return out


@pytest.mark.slow
def test_a_changed_setting_makes_exactly_the_asset_it_decides_unsynced(tmp_path, lm):
    write_files(tmp_path / "data", ["a.jsonl"])
    config = Path(write_config(tmp_path, lm))
    config.write_text(config.read_text() + "sketch_epochs = 0\n")  # under [encoder]: the ridge head alone, fast
    original = config.read_text()
    changes = {"tokenized_corpus": ("max_length = 32", "max_length = 30"), "projected_gradients": ("dim = 256", "dim = 128"),
               "influence_rankings": ("top_k = 8", "top_k = 6"), "influcoder_encoder": ("sketch_epochs = 0", "sketch_epochs = 1"),
               "embedding_index": ("[encoder]", "[index]\nnprobe = 8\n[encoder]")}
    with dg.instance_for_test() as instance:
        run(str(config), tmp_path, instance, [*NO_ENCODER, "influcoder_encoder"])
        fresh = all_statuses(instance)
        assert all(v in ("FRESH", {"FRESH"}) for v in fresh.values()), fresh
        for asset, (old, new) in changes.items():
            config.write_text(original.replace(old, new))
            observe_sources(InflucoderConfig(config_path=str(config)).load(), instance)
            stale = {name for name, status in all_statuses(instance).items() if status not in ("FRESH", {"FRESH"})}
            assert stale == {asset}, (old, new, stale)
            config.write_text(original)
            observe_sources(InflucoderConfig(config_path=str(config)).load(), instance)
            assert all_statuses(instance) == fresh


def test_a_changed_base_model_makes_its_dependents_unsynced_and_rebuilds_all_and_an_unchanged_one_nothing(tmp_path, lm):
    import torch
    from safetensors.torch import load_file, save_file

    write_files(tmp_path / "data", ["a.jsonl", "b.jsonl"])
    config = write_config(tmp_path, lm)
    fresh = {"base_model": "FRESH", "corpus_manifest": "FRESH", "influence_rankings": "FRESH",
             "tokenized_corpus": {"FRESH"}, "projected_gradients": {"FRESH"}}
    with dg.instance_for_test() as instance:
        run(config, tmp_path, instance, TEACHER)
        assert statuses(instance) == fresh
        observe_sources(InflucoderConfig(config_path=config).load(), instance)  # same files: nothing stale
        assert statuses(instance) == fresh

        weights = load_file(lm / "model.safetensors")
        name = next(k for k in weights if k.endswith("mlp.c_fc.weight"))
        weights[name] = weights[name] + 0.01 * torch.randn_like(weights[name])
        save_file(weights, lm / "model.safetensors", metadata={"format": "pt"})
        observe_sources(InflucoderConfig(config_path=config).load(), instance)
        # Dagster 1.13 marks the direct dependents of a changed input unsynced; each level's new data
        # version then makes the next level unsynced as it rematerializes (eager automation walks it).
        assert statuses(instance) == {**fresh, "base_model": "STALE"}
        run(config, tmp_path, instance, ["base_model"])
        assert statuses(instance) == {**fresh, "influence_rankings": "STALE", "tokenized_corpus": {"STALE"},
                                      "projected_gradients": {"STALE"}}
        again = run(config, tmp_path, instance, TEACHER)
        assert sum(computed(again).values()) == len(FILES["a.jsonl"]) + len(FILES["b.jsonl"])  # a new store, all rows
        assert again["influence_rankings"]["mode"] == "rebuild"
        assert statuses(instance) == fresh


def test_automation_conditions_request_a_new_partition_eagerly_and_retrain_weekly(tmp_path, lm):
    from influcoder_dagster.definitions import defs

    write_files(tmp_path / "data", ["a.jsonl"])
    config = write_config(tmp_path, lm)
    with dg.instance_for_test() as instance:
        run(config, tmp_path, instance, TEACHER)
        now = datetime.datetime.now(datetime.timezone.utc)
        last_sunday = (now - datetime.timedelta(days=(now.weekday() + 1) % 7 or 7)).replace(hour=3, minute=0, second=0)
        before_tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=last_sunday - datetime.timedelta(hours=1))
        run(config, tmp_path, instance, ["influence_rankings"])
        # Sunday 03:00 has passed since, and the rankings were updated after it: the weekly retrain is due.
        weekly = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before_tick.cursor, evaluation_time=now)
        assert weekly.get_num_requested(dg.AssetKey("influcoder_encoder")) == 1
        assert weekly.get_num_requested(dg.AssetKey("tokenized_corpus")) == 0  # the materialized shards are up to date

        instance.add_dynamic_partitions("corpus_shards", ["b-new"])  # as the sensor does for a new file
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=weekly.cursor)
        assert tick.get_requested_partitions(dg.AssetKey("tokenized_corpus")) == {"b-new"}
        assert tick.get_num_requested(dg.AssetKey("influcoder_encoder")) == 0  # once per week


def test_a_shard_whose_file_changed_since_its_partition_was_added_fails_with_what_to_do(tmp_path, lm):
    from influcoder_dagster.stages.base_model import run_base_model
    from influcoder_dagster.stages.corpus import run_corpus_shard

    write_files(tmp_path / "data", ["a.jsonl"])
    cfg = InflucoderConfig(config_path=write_config(tmp_path, lm)).load()
    run_base_model(cfg)
    (key,) = shard_files(tmp_path / "data")
    (tmp_path / "data" / "a.jsonl").write_text(json.dumps({"text": "changed"}) + "\n")
    with pytest.raises(ValueError, match="sensor replaces its partition"):
        run_corpus_shard(cfg, key)
