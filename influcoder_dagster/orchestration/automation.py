"""Jobs, schedules and the sensor that keeps the shard partitions in step with the dataset and the base model.

Declarative automation does the rest (see the assets' ``automation_condition``): cheap assets
are eager, so a new shard flows into the manifest, the rankings and the index by itself; the
encoder retrains on a weekly cron, gated by its blocking quality check.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg

from influcoder_dagster.core.config import Config, DatasetConfig
from influcoder_dagster.core.errors import DatasetError
from influcoder_dagster.data.dataset import file_shards, list_dataset_files
from influcoder_dagster.orchestration.partitions import corpus_shards
from influcoder_dagster.orchestration.resources import InflucoderConfig
from influcoder_dagster.stages.base_model import base_model_version
from influcoder_dagster.stages.settings import DECIDES, settings_version

MAX_FILES_HASHED_PER_TICK = 500  # a tick hashes at most this many new or changed files; the rest wait for the next

SHARD_ASSETS = ["tokenized_corpus", "projected_gradients", "shard_embeddings"]
shards = dg.define_asset_job("shards", selection=dg.AssetSelection.assets(*SHARD_ASSETS), partitions_def=corpus_shards,
                             description="Tokenize one shard, extract its gradients and embed it.")
REFRESH_ASSETS = ["corpus_manifest", "influence_rankings", "embedding_index"]
refresh = dg.define_asset_job(
    "refresh", selection=dg.AssetSelection.assets(*REFRESH_ASSETS),
    description="Publish the current shards, update the rankings and the index (incremental); no retraining.",
)
reindex = dg.define_asset_job("reindex", selection=dg.AssetSelection.assets("embedding_index"),
                              description="Re-embed the corpus with the champion encoder and update the index.")
retrain = dg.define_asset_job("retrain", selection=dg.AssetSelection.assets("influcoder_encoder", "embedding_index"),
                              description="Distil a new encoder from the current rankings; the quality gate decides if it serves.")
nightly_reindex = dg.ScheduleDefinition(job=reindex, cron_schedule="0 2 * * *", name="nightly_reindex",
                                        default_status=dg.DefaultScheduleStatus.STOPPED)
weekly_retrain = dg.ScheduleDefinition(job=retrain, cron_schedule="0 3 * * 0", name="weekly_retrain",
                                       default_status=dg.DefaultScheduleStatus.STOPPED)


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def scan_dataset(cfg: DatasetConfig, previous: dict[str, list], budget: int) -> tuple[dict[str, list], int]:
    """path -> [size, mtime_ns, [shard names]] for the dataset's files, reading only new or changed
    ones (at most ``budget``); a file over budget keeps its previous entry, or waits if it is new.
    Returns the entries and how many files were left for the next tick."""
    dataset = str(cfg.path)
    root = Path(dataset) if Path(dataset).is_dir() else None
    out, deferred = {}, 0
    for f in list_dataset_files(dataset):
        stat, old = _stat(f), previous.get(str(f))
        if old and old[:2] == stat and isinstance(old[2], list):  # a cursor from before blocks holds one name
            out[str(f)] = old
        elif budget > 0:
            budget -= 1
            out[str(f)] = [*stat, sorted(file_shards(f, cfg, root))]
        else:
            deferred += 1
            if old:
                out[str(f)] = old
    return out, deferred


def _model_stat(base_model: str) -> list:
    if base_model == "tiny":
        return ["tiny"]
    files = sorted(p for p in Path(base_model).expanduser().rglob("*") if p.is_file())
    return [[str(p), *_stat(p)] for p in files]


@dg.sensor(asset_selection=dg.AssetSelection.assets(*SHARD_ASSETS, *REFRESH_ASSETS),
           minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Adds a shard partition per new or changed shard (a file, or a block of a large one) and requests its run, deletes the "
                       "partitions of removed files, re-ranks when the query file changes, and observes the base model.")
def dataset_sensor(context: dg.SensorEvaluationContext, influcoder: InflucoderConfig) -> dg.SensorResult | dg.SkipReason:
    cfg = influcoder.load()
    if not cfg.dataset.path:
        return dg.SkipReason("no dataset.path configured: the demo corpus does not change")
    cursor = json.loads(context.cursor) if context.cursor else {}
    try:
        files, deferred = scan_dataset(cfg.dataset, cursor.get("files", {}), MAX_FILES_HASHED_PER_TICK)
    except DatasetError as exc:
        return dg.SkipReason(f"cannot read the dataset: {exc}")
    wanted = {name for entry in files.values() for name in entry[2]}
    existing = set(context.instance.get_dynamic_partitions(corpus_shards.name))
    added, deleted = sorted(wanted - existing), sorted(existing - wanted)

    # A file removed and added back has the same key but a new mtime: its run is new, not a duplicate to skip.
    added_at = {name: entry[1] for entry in files.values() for name in entry[2]}
    requests: list[dg.RunRequest] = [
        dg.RunRequest(partition_key=key, run_key=f"{key}@{added_at[key]}", asset_selection=[dg.AssetKey(k) for k in SHARD_ASSETS])
        for key in added
    ]
    queries = cfg.dataset.queries_path
    queries_stat = _stat(Path(queries)) if queries and Path(queries).exists() else None
    if deleted and not added:  # nothing new for eager automation to follow: publish the smaller corpus now
        requests.append(dg.RunRequest(run_key=f"deleted-{hashlib.sha256(''.join(deleted).encode()).hexdigest()[:12]}",
                                      asset_selection=[dg.AssetKey(k) for k in REFRESH_ASSETS]))
    elif "queries" in cursor and queries_stat != cursor["queries"]:
        requests.append(dg.RunRequest(run_key=f"queries-{queries_stat}", asset_selection=[dg.AssetKey("influence_rankings")]))

    events, model_stat, settings = _source_events(cfg, cursor)
    for event in events:
        context.log.info(f"{event.asset_key.to_user_string()} observed: data version {event.tags['dagster/data_version']}")
    new_cursor = json.dumps({"files": files, "queries": queries_stat, "model_stat": model_stat, "settings": settings}, sort_keys=True)
    if not (added or deleted or requests or events) and new_cursor == context.cursor:
        return dg.SkipReason(f"no change in {len(files)} dataset files")
    context.log.info(f"shards: {len(added)} added, {len(deleted)} deleted, {deferred} files left for the next tick")
    partition_requests = []
    if added:
        partition_requests.append(corpus_shards.build_add_request(added))
    if deleted:
        partition_requests.append(corpus_shards.build_delete_request(deleted))
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=partition_requests, asset_events=events,
                           cursor=new_cursor)


def _source_events(cfg: Config, cursor: dict) -> tuple[list[dg.AssetObservation], list, dict[str, str]]:
    """Observations of the sources that changed since the cursor: the base model's files (hashed only when
    their sizes or times moved) and each section's settings."""
    events = []
    model_stat = _model_stat(cfg.model.base_model)
    if model_stat != cursor.get("model_stat"):
        events.append(dg.AssetObservation(asset_key="base_model_files", tags={"dagster/data_version": base_model_version(cfg)}))
    settings = {f"{s}_settings": settings_version(cfg, s) for s in DECIDES}
    events += [dg.AssetObservation(asset_key=key, tags={"dagster/data_version": version})
               for key, version in settings.items() if cursor.get("settings", {}).get(key) != version]
    return events, model_stat, settings
