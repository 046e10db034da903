"""Jobs, schedules and the sensor that keeps the assets in step with the dataset and the base model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg

from .corpus import DatasetError, list_dataset_files
from .resources import InflucoderConfig

full_pipeline = dg.define_asset_job("full_pipeline", selection=dg.AssetSelection.all(), description="Every asset, in lineage order.")
refresh = dg.define_asset_job(
    "refresh", selection=dg.AssetSelection.all() - dg.AssetSelection.assets("influcoder_encoder"),
    description="Bring corpus, gradients, rankings and index up to date (incremental); the encoder is retrained on its own schedule.",
)
reindex = dg.define_asset_job("reindex", selection=dg.AssetSelection.assets("embedding_index"),
                              description="Re-embed the corpus with the champion encoder and update the index.")
retrain = dg.define_asset_job("retrain", selection=dg.AssetSelection.assets("influcoder_encoder", "embedding_index"),
                              description="Distil a new encoder from the current rankings; the quality gate decides if it serves.")
nightly_reindex = dg.ScheduleDefinition(job=reindex, cron_schedule="0 2 * * *", name="nightly_reindex",
                                        default_status=dg.DefaultScheduleStatus.STOPPED)
weekly_retrain = dg.ScheduleDefinition(job=retrain, cron_schedule="0 3 * * 0", name="weekly_retrain",
                                       default_status=dg.DefaultScheduleStatus.STOPPED)


def watched_files(config_path: str | None) -> dict[str, list[int]]:
    """path -> [size, mtime_ns] of the dataset files, the query file and a local base model's files.

    Only ``stat`` calls: a tick stays cheap on folders with thousands of files; content hashes are
    the assets' business (an unchanged file keeps its shard and its gradients).
    """
    from .config import load_config

    cfg = load_config(config_path)
    paths: list[Path] = []
    if cfg.dataset.path:
        paths += list_dataset_files(cfg.dataset.path)
    if cfg.dataset.queries_path:
        paths.append(Path(cfg.dataset.queries_path))
    if cfg.model.base_model != "tiny":
        paths += [p for p in Path(cfg.model.base_model).rglob("*") if p.is_file()]
    out = {}
    for p in paths:
        st = p.stat()
        out[str(p)] = [st.st_size, st.st_mtime_ns]
    return out


@dg.sensor(job=refresh, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Requests a 'refresh' run when a dataset file, the query file or a local base model's files change.")
def dataset_sensor(context: dg.SensorEvaluationContext, influcoder: InflucoderConfig) -> dg.SensorResult | dg.SkipReason:
    try:
        state = watched_files(influcoder.config_path)
    except (DatasetError, FileNotFoundError) as exc:
        return dg.SkipReason(f"cannot read the dataset: {exc}")
    if not state:
        return dg.SkipReason("no dataset.path configured: the demo corpus does not change")
    previous = json.loads(context.cursor) if context.cursor else {}
    if state == previous:
        return dg.SkipReason(f"no change in {len(state)} watched files")
    added = sorted(set(state) - set(previous))
    removed = sorted(set(previous) - set(state))
    changed = sorted(p for p in set(state) & set(previous) if state[p] != previous[p])
    key = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]
    summary = {"added": len(added), "removed": len(removed), "changed": len(changed)}
    context.log.info(f"dataset changed: {summary}; first paths: {(added + removed + changed)[:5]}")
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=key, tags={f"influcoder/{k}": str(v) for k, v in summary.items()})],
                           cursor=json.dumps(state, sort_keys=True))
