"""In-process materialization with the real Dagster machinery (used by the CLI and the tests)."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from influcoder_dagster.app.lineage import stale_resolver
from influcoder_dagster.core.config import load_config
from influcoder_dagster.core.errors import ConfigError
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.core.quiet import quiet_libraries
from influcoder_dagster.core.writer_lock import writer_lock
from influcoder_dagster.data.source import current_shards
from influcoder_dagster.data.tokenized import shard_entry
from influcoder_dagster.definitions import ASSET_CHECKS, ASSETS, defs
from influcoder_dagster.orchestration.partitions import corpus_shards
from influcoder_dagster.orchestration.resources import InflucoderConfig
from influcoder_dagster.stages.base_model import base_model_version
from influcoder_dagster.stages.settings import DECIDES, settings_version
from influcoder_dagster.student import tracking

if TYPE_CHECKING:
    from influcoder_dagster.core.config import Config

INSTANCE_YAML = """\
# The DuckDB writer pool: one writer at a time, so runs never fight over DuckDB's lock.
concurrency:
  pools:
    default_limit: 1
# No usage statistics sent, and no telemetry banner.
telemetry:
  enabled: false
"""


def instance_for(home: Path) -> dg.DagsterInstance:
    """``$DAGSTER_HOME``'s instance if set, else a persistent one under the storage root.

    Runs made by the CLI then show up in ``dagster dev`` started with the same ``DAGSTER_HOME``.
    """
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    root = Paths(home).dagster_home
    root.mkdir(parents=True, exist_ok=True)
    yaml = root / "dagster.yaml"
    if not yaml.exists():
        yaml.write_text(INSTANCE_YAML)
    elif "telemetry:" not in (text := yaml.read_text()):  # written before telemetry was turned off
        yaml.write_text(text.rstrip("\n") + "\ntelemetry:\n  enabled: false\n")
    return dg.DagsterInstance.from_config(str(root))


# Lineage order, a partitioned stage running once per missing or stale shard.
STAGES = [
    (["base_model"], False),
    (["tokenized_corpus", "projected_gradients"], True),
    (["corpus_manifest", "influence_rankings", "influcoder_encoder"], False),
    (["shard_embeddings"], True),
    (["embedding_index"], False),
]
PRELOAD = ["torch", "transformers", "influcoder_dagster.definitions", "influcoder_dagster.teacher.gradients"]


@dataclass
class Runs:
    """The Dagster runs one ``materialize`` call made, read as one result: (success, events) per run."""

    runs: list[tuple[bool, list[dg.DagsterEvent]]] = field(default_factory=list)
    released: list[str] = field(default_factory=list)  # unfinished runs of a killed materialize, marked failed first

    def add(self, result: Any) -> bool:
        self.runs.append((result.success, list(result.all_events)))
        return result.success

    def add_stored(self, instance: dg.DagsterInstance, run_id: str) -> bool:
        """A run made in another process, read back from the instance."""
        run = instance.get_run_by_id(run_id)
        events = [e.dagster_event for e in instance.all_logs(run_id) if e.dagster_event is not None]
        ok = run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        self.runs.append((ok, events))
        return ok

    @property
    def success(self) -> bool:
        return all(ok for ok, _ in self.runs)

    @property
    def all_events(self) -> list[dg.DagsterEvent]:
        return [e for _, events in self.runs for e in events]

    def get_asset_materialization_events(self) -> list[dg.DagsterEvent]:
        return [e for e in self.all_events if e.is_step_materialization]


def shard_job() -> dg.JobDefinition:
    """The per-shard job, reconstructable in another process (for parallel partition runs)."""
    return defs.resolve_job_def("shards")


def sync_partitions(cfg: Config, instance: dg.DagsterInstance) -> tuple[list[str], list[str]]:
    """Make the instance's shard partitions those of the dataset now; returns (added, deleted).

    Deleted partitions' rows leave the corpus when ``corpus_manifest`` next runs.
    """
    wanted = set(current_shards(cfg))
    existing = set(instance.get_dynamic_partitions(corpus_shards.name))
    added, deleted = sorted(wanted - existing), sorted(existing - wanted)
    if added:
        instance.add_dynamic_partitions(corpus_shards.name, added)
    for key in deleted:
        instance.delete_dynamic_partition(corpus_shards.name, key)
    return added, deleted


HOME_TAG = "influcoder/home"  # the storage root a CLI run writes; its writer lock is held for the run's whole life


def writer_tags(home: Path) -> dict[str, str]:
    return {HOME_TAG: str(Path(home).resolve())}


def release_dead_runs(instance: dg.DagsterInstance, home: Path) -> list[str]:
    """Mark failed, and free the pool slots of, this root's CLI runs that never finished.

    Called with the root's writer lock held: no other ``materialize`` on this root is alive, so an
    unfinished run tagged with it belongs to a process that was killed. Left alone, its claimed
    ``duckdb_writer`` slot would block every later rankings run forever."""
    dead = instance.get_runs(dg.RunsFilter(tags=writer_tags(home), statuses=[
        dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]))
    for run in dead:
        instance.report_run_failed(run, "its influcoder materialize process died; marked failed by the next materialize")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    if dead:  # an encoder run among them leaves its MLflow run open
        tracking.end_orphan_runs(home)
    return [run.run_id for run in dead]


def observe_sources(cfg: Config, instance: dg.DagsterInstance) -> dict[str, str]:
    """Record the observable sources' current versions, as the sensor does: the base model's files and the
    settings that decide each asset. Returns source name -> data version."""
    versions = {"base_model_files": base_model_version(cfg), **{f"{s}_settings": settings_version(cfg, s) for s in DECIDES}}
    for key, version in versions.items():
        instance.report_runless_asset_event(dg.AssetObservation(asset_key=key, tags={"dagster/data_version": version}))
    return versions


def _stale_partitions(instance: dg.DagsterInstance, names: list[str], corpus: Path, resolver: Any = None) -> list[str]:
    """Shard partitions where a selected partitioned asset is missing or stale (by Dagster's data versions),
    or whose shard is gone from disk: a file removed and added back keeps its key and Dagster its old
    materializations (OSS Dagster cannot wipe a partition), but ``corpus_manifest`` deleted its files."""
    resolver = resolver or stale_resolver(instance)
    keys = instance.get_dynamic_partitions(corpus_shards.name)
    return sorted(k for k in keys if shard_entry(corpus, k) is None
                  or any(resolver.get_status(dg.AssetKey(n), k).value != "FRESH" for n in names))


def _run_partition(instance_ref: Any, config_path: str | None, home: Path, key: str, selection: list[str], threads: int) -> str:
    """One shard's run in this (spawned) process, with the multiprocess executor; returns its run id."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    quiet_libraries()  # a spawned process starts without the CLI's filters
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        result = dg.execute_job(
            dg.reconstructable(shard_job), instance=instance, asset_selection=[dg.AssetKey(n) for n in selection],
            tags={"dagster/partition": key, **writer_tags(home)},
            run_config={"resources": {"influcoder": {"config": {"config_path": config_path}}},
                        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
                        # Steps start from a fork server that has the heavy libraries loaded already:
                        # each step then starts in milliseconds, not the seconds a fresh import takes.
                        "execution": {"config": {"multiprocess": {"start_method": {"forkserver": {"preload_modules": PRELOAD}}}}}},
        )
        return result.run_id


def materialize(config_path: str | None, home: Path, select: list[str] | None = None,
                instance: dg.DagsterInstance | None = None, log_level: str = "WARNING", workers: int = 1, wait: bool = False) -> Runs:
    """Materialize the selected assets (default all) the way the UI would, in lineage order.

    Holds the storage root's writer lock (refused at once if another process holds it, unless
    ``wait``). Syncs the shard partitions with the dataset, observes the base model. An update that
    touches at most one shard is one run (:func:`_single_run`). Otherwise it runs the stages of
    ``STAGES`` in order: each partitioned one for every shard where it is missing or stale
    (``workers`` runs at once, each in its own process, when above 1), each other one as one run.
    """
    with writer_lock(home, wait):
        return _materialize(config_path, home, select, instance, log_level, workers)


def _materialize(config_path: str | None, home: Path, select: list[str] | None, instance: dg.DagsterInstance | None,
                 log_level: str, workers: int) -> Runs:
    known = [k.to_user_string() for a in ASSETS if isinstance(a, dg.AssetsDefinition) for k in a.keys]
    unknown = [s for s in select or [] if s not in known]
    if unknown:
        raise ConfigError(f"--select: unknown asset(s) {unknown}; choose from {sorted(known)}")
    instance = instance or instance_for(home)
    resources = {"influcoder": InflucoderConfig(config_path=config_path)}
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    runs = Runs()

    def run(names: list[str], partition_key: str | None = None) -> bool:
        return runs.add(dg.materialize([*ASSETS, *ASSET_CHECKS], selection=dg.AssetSelection.assets(*names), resources=resources,
                                       instance=instance, partition_key=partition_key, raise_on_error=False, run_config=run_config,
                                       tags=writer_tags(home)))

    def run_partitions(names: list[str]) -> bool:
        keys = _stale_partitions(instance, names, Paths(home).corpus)
        if workers > 1 and len(keys) > 1:
            threads = max(1, (os.cpu_count() or 1) // workers)
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                run_ids = list(pool.map(_run_partition, *zip(*[(instance.get_ref(), config_path, home, k, names, threads) for k in keys])))
            return all([runs.add_stored(instance, r) for r in run_ids])
        return all(run(names, key) for key in keys)

    cfg = load_config(config_path)
    runs.released = release_dead_runs(instance, home)
    sync_partitions(cfg, instance)
    observe_sources(cfg, instance)
    stages = [([n for n in names if select is None or n in select], partitioned) for names, partitioned in STAGES]
    single = _single_run(instance, home, stages) if workers == 1 else None
    if single is not None:  # an update touching at most one shard: one run, then new embeddings of a new encoder
        names, key = single
        retrained = (run(names, key) and "influcoder_encoder" in names and "shard_embeddings" in names
                     and _stale_partitions(instance, ["shard_embeddings"], Paths(home).corpus))
        if retrained and run_partitions(["shard_embeddings"]) and "embedding_index" in names:
            run(["embedding_index"])
        return runs
    for chosen, partitioned in stages:
        if chosen and not (run_partitions(chosen) if partitioned else run(chosen)):
            break
    return runs


def _single_run(instance: dg.DagsterInstance, home: Path, stages: list[tuple[list[str], bool]]) -> tuple[list[str], str | None] | None:
    """The selection and partition of one run that does the whole update, when at most one shard
    partition is missing or stale: Dagster runs a partition's assets and the unpartitioned ones
    together, in lineage order. An unchanged base model is left out. None: several shards changed."""
    resolver = stale_resolver(instance)
    partitioned = [n for names, p in stages if p for n in names]
    keys = _stale_partitions(instance, partitioned, Paths(home).corpus, resolver) if partitioned else []
    if len(keys) > 1:
        return None
    fresh_base = resolver.get_status(dg.AssetKey("base_model")).value == "FRESH"
    names = [n for names, p in stages if keys or not p for n in names if not (n == "base_model" and fresh_base)]
    return names, keys[0] if keys else None


def materialization_metadata(result: Any) -> dict[str, dict[str, Any]]:
    """Asset name (``asset[partition]`` when partitioned) -> its materialization metadata as plain values."""
    out: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        name = mat.asset_key.to_user_string() + (f"[{mat.partition}]" if mat.partition else "")
        out[name] = {k: v.value for k, v in mat.metadata.items()}
    return out


def failure_messages(result: Runs) -> list[str]:
    msgs = []
    for e in result.all_events:
        if e.is_step_failure and e.step_failure_data and e.step_failure_data.error:
            err = e.step_failure_data.error
            while err.cause is not None and err.cls_name == "DagsterExecutionStepExecutionError":
                err = err.cause
            msgs.append(f"{e.step_key}: {err.message.strip()}")
    return msgs


def only_gate_failed(result: Runs) -> bool:
    """True when the run failed only because a blocking quality check held back what follows it."""
    failures = [e for e in result.all_events if e.is_step_failure]
    return bool(failures) and all(
        e.step_failure_data and e.step_failure_data.error and "DagsterAssetCheckFailedError" in (e.step_failure_data.error.cls_name or "")
        for e in failures
    )


def materialize_with_gate(config_path: str | None, home: Path, select: list[str] | None = None, workers: int = 1,
                          wait: bool = False) -> tuple[Runs, dict[str, dict[str, Any]], bool]:
    """Materialize; if only the encoder's blocking quality gate failed, still refresh the index.

    The index is built from the champion, so a failed gate cannot put the new encoder in it, but the
    corpus may have changed: without this, the index would stay stale until the nightly reindex.
    Returns (last result, metadata of everything materialized, whether the gate held).
    """
    result = materialize(config_path, home, select, workers=workers, wait=wait)
    meta = materialization_metadata(result)
    held = only_gate_failed(result)
    if held and (select is None or "embedding_index" in select):
        released = result.released
        result = materialize(config_path, home, ["shard_embeddings", "embedding_index"], workers=workers, wait=True)
        result.released = released
        meta.update(materialization_metadata(result))
    return result, meta, held
