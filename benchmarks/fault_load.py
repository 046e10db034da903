"""Reliability under load and faults: readers query while the writer rebuilds, and each stage is SIGKILLed part-way, then rerun.

    python benchmarks/fault_load.py [--readers 2] [--kill-fraction 0.5] [--baseline-s 20] [--no-encoder-kill]
                                    [--no-base-model-kill] [--json PATH]

Everything is real: the ``influcoder`` CLI in a subprocess for every write, the Dagster instance,
DuckDB, MLflow (sqlite) and FAISS files of one storage root in a temporary directory.

1. **Build.** The demo corpus at the tests' size (``tests/conftest.py`` ``TINY_CONFIG``), written to a
   dataset folder this script controls, is materialized in full with ``influcoder materialize``. The
   clean result is kept: every query's top and bottom list (rankings snapshot), each store shard's
   rows and ids (hashes), the corpus's ids and dataset version, the index's ids and encoder, the
   probes' top-5, the base model's record and content.
2. **Load.** ``--readers`` processes (spawned, one thread each) loop until told to stop; each
   iteration opens a fresh ``Attributor`` (so it re-reads the published manifest and index), runs
   ``query(probes, k=5)`` and expects 5 hits per probe, then ``run_query(home, "SELECT count(*) FROM
   scores")``. Every exception is counted with its message and the writer command it overlapped.
   After each reader's first request (imports), a baseline runs with no writer.
3. **Rebuilds under load.** ``[rankings] top_k`` changed (rankings rebuild), ``[index] nprobe`` changed
   (index republished), a dataset file added, removed, added again and removed again (a refresh of
   every asset but the encoder each time), both settings reverted; the state is then compared with
   the clean one.
4. **Kills under load.** Per stage, the stage is made to redo real work, its materialize is SIGKILLed
   ``--kill-fraction`` of the clean build's step time after Dagster records the step's start, and the
   same command is run again to completion:

   * ``tokenized_corpus/projected_gradients``: ``projection.seed`` 1 then back to 0, with the seed-0
     store's shard files deleted (else a finished shard is reused), killed in the largest shard's run;
     compared: store rows and ids per shard, corpus;
   * ``corpus_manifest``: another file added (full refresh), then removed, killed in the manifest step
     of the refresh; compared: corpus, store, rankings top/bottom lists, index ids;
   * ``influence_rankings``: ``top_k`` 24 then back, killed in the rebuild; compared: every list;
   * ``embedding_index``: ``onnx_query_encoder`` off then on, killed in the rebuild (the ONNX export);
     compared: index ids, encoder version, the probes' top-5;
   * ``influcoder_encoder``: ``encoder.seed`` 1, killed once the step's MLflow run is open (the fraction
     of the clean MLflow run's time later); after the rerun the index is refreshed and must serve the
     registered champion;
   * ``base_model``: the tiny decoder's and the adapters' folders deleted (else they are reused), killed
     in training; compared: the decoder's weights hash, the adapters' tensors and config, and the
     recorded model and adapter hashes.

   A rerun that Dagster blocks on the ``duckdb_writer`` pool (a slot still claimed by the killed run)
   is recorded, SIGTERMed then SIGKILLed after ``--blocked-grace`` seconds, the dead runs' slots are
   freed through the instance, and the rerun is tried again; both attempts are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import multiprocessing as mp
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
INFLUCODER = Path(sys.executable).parent / "influcoder"

# tests/conftest.py TINY_CONFIG: every asset in ~3 minutes on 2 cores.
DEMO = {"n_passages": 160, "n_triggers": 3, "planted_per_trigger": 6}
TINY = {
    "k": 10,
    "model": {"epochs": 6, "n_layer": 2, "n_embd": 64, "vocab_size": 1024},
    "projection": {"dim": 1024},
    "rankings": {"anchor_fraction": 0.25, "eval_pool_size": 60},
    "encoder": {"epochs": 1, "anchors_per_step": 8, "max_seq_length": 64, "sketch_epochs": 1},
}
REFRESH = ["tokenized_corpus", "projected_gradients", "corpus_manifest", "influence_rankings", "shard_embeddings", "embedding_index"]
SHARD_STAGE = ["tokenized_corpus", "projected_gradients"]
POOL = "duckdb_writer"
GENERIC_PROBE = "Return a new list containing all items from the iterable in ascending order."


# ---------------------------------------------------------------- the storage root and its config


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


class Root:
    """The work folder: dataset folder, queries, config (rewritten on every change) and storage root."""

    def __init__(self, work: Path) -> None:
        self.work, self.home, self.logs = work, work / "home", work / "logs"
        self.data, self.queries = work / "demo" / "data", work / "demo" / "queries.jsonl"
        self.spare = [work / f"spare{i}.jsonl" for i in (1, 2)]
        self.config = work / "influcoder.toml"
        self.settings: dict[str, Any] = {"home": str(self.home), **copy.deepcopy(TINY),
                                         "dataset": {"path": str(self.data), "queries_path": str(self.queries)}}
        self.logs.mkdir(parents=True, exist_ok=True)

    def write(self) -> None:
        top = [f"{k} = {_toml(v)}" for k, v in self.settings.items() if not isinstance(v, dict)]
        sections = [f"\n[{k}]\n" + "".join(f"{kk} = {_toml(vv)}\n" for kk, vv in v.items())
                    for k, v in self.settings.items() if isinstance(v, dict)]
        self.config.write_text("\n".join(top) + "\n" + "".join(sections))

    def set(self, section: str, key: str, value: Any) -> None:
        self.settings.setdefault(section, {})[key] = value
        self.write()

    def unset(self, section: str, key: str) -> None:
        self.settings.get(section, {}).pop(key, None)
        self.write()


def write_data(root: Root) -> list[str]:
    """The demo's files in a folder we control, a spare file of passages the corpus lacks; returns the probe texts."""
    from influcoder_dagster.core.config import DemoConfig
    from influcoder_dagster.data.demo import docstring_passages, write_demo_dataset

    write_demo_dataset(root.data.parent, DemoConfig(**DEMO), max_chars=20000)
    extra = docstring_passages(DEMO["n_passages"] + 60)[DEMO["n_passages"]:]  # same seeded order: the next 60
    for i, path in enumerate(root.spare):
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in extra[30 * i : 30 * (i + 1)]), encoding="utf-8")
    probes = [json.loads(line)["text"] for line in root.queries.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [*probes, GENERIC_PROBE]


# ---------------------------------------------------------------- the writer: the CLI in a subprocess


@dataclass
class Kill:
    step: str
    delay: float  # seconds after Dagster records the step's start (and ``after`` holds)
    partition: str | None = None  # prefix of the shard partition whose run is killed
    after: Callable[[], bool] | None = None  # a further sign that the work is under way (checked every 0.1 s)


class Writer:
    def __init__(self, root: Root, blocked_grace: float) -> None:
        self.root, self.blocked_grace = root, blocked_grace
        self.env = {k: v for k, v in os.environ.items() if k not in ("INFLUCODER_HOME", "INFLUCODER_CONFIG", "DAGSTER_HOME")}
        self.ops: list[dict[str, Any]] = []  # every writer command: label, start, end (for the readers' failures)
        self._instance: Any = None

    @property
    def instance(self) -> Any:
        import dagster as dg

        if self._instance is None:
            self._instance = dg.DagsterInstance.from_config(str(self.root.home / "dagster_home"))
        return self._instance

    def materialize(self, label: str, select: list[str] | None, timeout: float = 900, kill: Kill | None = None,
                    watch: bool = True) -> dict[str, Any]:
        """One ``influcoder materialize`` (SIGKILLed as ``kill`` says); one blocked on the DuckDB pool is stopped and reported.

        ``watch``: follow the run in the Dagster instance (off for the first build, before the instance exists)."""
        import dagster as dg

        args = [str(INFLUCODER), "--config", str(self.root.config), "materialize", *(["--select", ",".join(select)] if select else [])]
        log = self.root.logs / f"{len(self.ops):02d}-{label.replace('/', '_').replace(' ', '_')}.log"
        before = {r.run_id for r in self.instance.get_runs(limit=200)} if watch else set()
        rec: dict[str, Any] = {"label": label, "select": select, "killed": False, "blocked_on_pool": False, "timed_out": False}
        start_wall, t0 = time.time(), time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.root.work,
                                    start_new_session=True)
        step_seen: tuple[str, float, float] | None = None  # run id, event timestamp, monotonic when seen
        armed: float | None = None  # monotonic time from which the kill delay counts
        blocked_since, last_files = None, None
        while proc.poll() is None:
            now = time.monotonic()
            if now - t0 > timeout:
                rec["timed_out"] = True
                os.killpg(proc.pid, signal.SIGKILL)
                break
            if kill is not None and step_seen is not None and armed is None and (kill.after is None or kill.after()):
                armed = now
            if armed is not None and now - armed >= kill.delay:
                os.killpg(proc.pid, signal.SIGKILL)
                rec.update(killed=True, killed_after_s=round(time.monotonic() - t0, 2),
                           killed_after_step_start_s=round(time.time() - step_seen[1], 2), run_id=step_seen[0])
                break
            files = self._history_files() if watch else None
            if files != last_files:  # Dagster wrote an event: look at the new runs (cheap otherwise)
                last_files = files
                if kill is not None and step_seen is None:
                    found = self._step_started(before, kill.step, kill.partition)
                    step_seen = (*found, time.monotonic()) if found else None
                if blocked_since is None and self._blocked(before):
                    blocked_since = now
                    rec.update(blocked_on_pool=True, blocked_after_s=round(now - t0, 2))
            if blocked_since is not None and now - blocked_since >= self.blocked_grace:
                os.killpg(proc.pid, signal.SIGTERM)  # what `timeout` or a supervisor sends first
                try:
                    proc.wait(10)
                    rec["exited_on_sigterm"] = True
                except subprocess.TimeoutExpired:
                    rec["exited_on_sigterm"] = False
                    os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01 if kill is not None and step_seen is None else 0.1)
        proc.wait()
        rec.update(rc=proc.returncode, wall_s=round(time.monotonic() - t0, 2), start=start_wall, end=time.time(), log=str(log))
        if kill is not None and not rec["killed"]:
            rec["step_seen"], rec["trigger_seen"] = step_seen is not None, armed is not None
        new_runs = [r for r in self.instance.get_runs(limit=200) if r.run_id not in before]
        rec["run_ids"] = [r.run_id for r in new_runs]
        if rec["killed"]:
            done = {e.step_key for e in self.instance.all_logs(rec["run_id"], of_type={dg.DagsterEventType.STEP_SUCCESS,
                                                                                        dg.DagsterEventType.STEP_FAILURE})}
            rec["step_finished_before_kill"] = kill.step in done
            claimed = self.instance.event_log_storage.get_concurrency_info(POOL).claimed_slots
            rec["pool_slot_left_claimed"] = any(s.run_id == rec["run_id"] for s in claimed)
        text = log.read_text(errors="replace")
        rec["failures"] = [ln.strip() for ln in text.splitlines() if ln.startswith(("FAILED", "error:"))]
        rec["gate_held"] = "did not pass its quality gate" in text
        rec["ok"] = proc.returncode == 0 and not rec["killed"] and not rec["blocked_on_pool"] and not rec["timed_out"]
        if not rec["ok"] and not rec["killed"] and not rec["failures"]:
            rec["failures"] = [ln.strip()[-300:] for ln in text.splitlines()[-5:]]
        self.ops.append(rec)
        status = "killed" if rec["killed"] else ("BLOCKED on pool" if rec["blocked_on_pool"] else f"rc={rec['rc']}")
        print(f"  [{len(self.ops):2d}] {label:<44} {status:<16} {rec['wall_s']:7.1f} s", flush=True)
        return rec

    def _history_files(self) -> tuple:
        """Names, sizes and times of the instance's run and event files: they change when Dagster writes."""
        history = self.root.home / "dagster_home" / "history"
        out = []
        for folder in (history, history / "runs"):
            try:
                with os.scandir(folder) as it:
                    out += [(e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in it if e.is_file()]
            except FileNotFoundError:
                pass
        return tuple(sorted(out))

    def _step_started(self, before: set[str], step: str, partition: str | None) -> tuple[str, float] | None:
        import dagster as dg

        for run in self.instance.get_runs(limit=20):
            if run.run_id in before or (partition and not (run.tags.get("dagster/partition") or "").startswith(partition)):
                continue
            for event in self.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START):
                if event.step_key == step:
                    return run.run_id, event.timestamp
        return None

    def _blocked(self, before: set[str]) -> bool:
        import dagster as dg

        for run in self.instance.get_runs(limit=5):
            if run.run_id in before:
                continue
            for event in self.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
                if f"blocked by limit for pool {POOL}" in (event.user_message or ""):
                    return True
        return False

    def free_dead_runs(self, run_ids: list[str]) -> dict[str, Any]:
        """The operator's way out of a pool slot held by a dead run: free its slots, mark it failed."""
        freed = []
        for run_id in run_ids:
            self.instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            run = self.instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                self.instance.report_run_failed(run, "SIGKILLed by benchmarks/fault_load.py")
            freed.append(run_id)
        return {"freed_runs": freed, "pool_after": str(self.instance.event_log_storage.get_concurrency_info(POOL))}

    def step_seconds(self) -> dict[str, float]:
        """Each step's duration in the runs so far ("step" or "step[partition]"), from Dagster's events."""
        import dagster as dg

        out: dict[str, float] = {}
        for run in self.instance.get_runs(limit=200):
            part = run.tags.get("dagster/partition")
            starts: dict[str, float] = {}
            for e in self.instance.all_logs(run.run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}):
                if e.dagster_event.event_type == dg.DagsterEventType.STEP_START:
                    starts[e.step_key] = e.timestamp
                elif e.step_key in starts:
                    out[f"{e.step_key}[{part}]" if part else e.step_key] = e.timestamp - starts[e.step_key]
        return out


# ---------------------------------------------------------------- the readers


def _message(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:400]


def reader_main(home: str, probes: list[str], stop: Any, phase: Any, ready: Any, out: Any) -> None:
    """Until ``stop``: a fresh Attributor's top-5 for the probes, then a count on the rankings snapshot."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # a client each; the 2 cores stay shared with the writer
    from influcoder_dagster.core.quiet import quiet_libraries
    from influcoder_dagster.serving.attribute import Attributor
    from influcoder_dagster.teacher.rankings_db import run_query

    quiet_libraries()
    root = Path(home)
    stats: dict[int, dict[str, float]] = {}
    failures: list[tuple[float, int, str, str]] = []
    first = True
    while not stop.is_set():
        p = phase.value
        s = stats.setdefault(p, {"attribute_ok": 0, "attribute_failed": 0, "sql_ok": 0, "sql_failed": 0, "attribute_s": 0.0, "sql_s": 0.0})
        t = time.perf_counter()
        try:
            hits = Attributor(root).query(probes, k=5)
            if len(hits) != len(probes) or any(len(h) != 5 for h in hits):
                raise AssertionError(f"short result: {[len(h) for h in hits]} hits for {len(probes)} probes")
            s["attribute_ok"] += 1
            s["attribute_s"] += time.perf_counter() - t
        except Exception as exc:  # noqa: BLE001 - every failure a user would see is counted
            s["attribute_failed"] += 1
            failures.append((time.time(), p, "attribute", _message(exc)))
        t = time.perf_counter()
        try:
            _, rows = run_query(root, "SELECT count(*) FROM scores")
            if not rows or not rows[0][0]:
                raise AssertionError(f"no score rows: {rows}")
            s["sql_ok"] += 1
            s["sql_s"] += time.perf_counter() - t
        except Exception as exc:  # noqa: BLE001
            s["sql_failed"] += 1
            failures.append((time.time(), p, "sql", _message(exc)))
        if first:
            first = False
            with ready.get_lock():
                ready.value += 1
    out.put({"pid": os.getpid(), "stats": stats, "failures": failures[:1000], "n_failures": len(failures)})


# ---------------------------------------------------------------- the state compared with the clean one


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def capture(home: Path, probes: list[str]) -> dict[str, Any]:
    import numpy as np

    from influcoder_dagster.core.atomic import read_json
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.data.tokenized import read_corpus, read_manifest
    from influcoder_dagster.serving.attribute import Attributor
    from influcoder_dagster.serving.index import index_ids, load_index
    from influcoder_dagster.teacher.rankings_db import run_query
    from influcoder_dagster.teacher.store import open_store

    paths = Paths(home)
    lists: dict[str, dict[str, list]] = {}
    _, rows = run_query(home, "SELECT query_id, kind, sample_id, score FROM scores WHERE kind IN ('top', 'bottom') "
                              'ORDER BY query_id, kind, "rank"')
    for qid, kind, sid, score in rows:
        entry = lists.setdefault(f"{kind}:{qid}", {"ids": [], "scores": []})
        entry["ids"].append(int(sid))
        entry["scores"].append(float(score))
    store = open_store(paths)
    shards = {n: {"rows": _sha(np.ascontiguousarray(store.rows(n)).tobytes()), "ids": _sha(store.ids(n).tobytes()),
                  "fingerprint": store.manifest["shards"][n]["fingerprint"], "excluded": store.manifest["shards"][n].get("excluded", [])}
              for n in store.shard_names}
    manifest = read_manifest(paths.corpus)
    corpus_ids = np.sort(read_corpus(paths.corpus, columns=["sample_id"]).column("sample_id").to_numpy()).astype(np.int64)
    index, imanifest = load_index(paths.index)
    hits = Attributor(home).query(probes, k=5)
    return {
        "base_model": _base_model(paths),
        "lists": lists,
        "store_key": read_json(paths.gradients_pointer)["store_key"], "store_shards": shards,
        "corpus": {"dataset_version": manifest["dataset_version"], "shards": sorted(manifest["shards"]), "ids": _sha(corpus_ids.tobytes()),
                   "n": len(corpus_ids)},
        "index": {"ids": _sha(np.sort(index_ids(index)).tobytes()), "count": int(index.ntotal), "encoder_version": imanifest["encoder_version"],
                  "dataset_version": imanifest["dataset_version"], "folder": imanifest["folder"]},
        "probes": [[h["sample_id"] for h in row] for row in hits], "probe_scores": [[h["score"] for h in row] for row in hits],
    }


def _base_model(paths: Any) -> dict[str, Any]:
    """The base model's record, and what decides its content: the decoder's weights hash, the adapters'
    tensors, and their config with its lists sorted (peft writes ``target_modules`` from a set)."""
    from safetensors.numpy import load_file

    from influcoder_dagster.core.atomic import read_json

    base = read_json(paths.base_model_pointer)
    out = {k: base.get(k) for k in ("model_hash", "adapter_hash", "weights_hash", "path", "adapter")}
    if base.get("adapter"):
        folder = paths.home / base["adapter"]
        h = hashlib.sha256()
        for f in sorted(folder.glob("*.safetensors")):
            for key, value in sorted(load_file(str(f)).items()):
                h.update(f"{f.name}:{key}".encode())
                h.update(value.tobytes())
        config = read_json(folder / "adapter_config.json")
        out["adapter_tensors"] = h.hexdigest()[:16]
        out["adapter_config_sorted"] = _sha(json.dumps({k: sorted(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v
                                                        for k, v in config.items()}, sort_keys=True).encode())
        out["adapter_config_raw"] = _sha((folder / "adapter_config.json").read_bytes())
    return out


BASE_CONTENT = ("weights_hash", "adapter_tensors", "adapter_config_sorted")


def compare(clean: dict[str, Any], now: dict[str, Any], parts: list[str]) -> list[str]:
    """Differences from the clean state in ``parts`` (empty: equal)."""
    diffs = []
    if "base_model" in parts:
        diffs += [f"base_model: {f} {now['base_model'].get(f)!r} != clean {clean['base_model'][f]!r}" for f in clean["base_model"]
                  if f not in ("path", "adapter") and clean["base_model"][f] != now["base_model"].get(f)]
    if "rankings" in parts:
        a, b = clean["lists"], now["lists"]
        if set(a) != set(b):
            diffs.append(f"rankings: {len(set(a) ^ set(b))} lists present in only one of clean/now")
        differ = sorted(k for k in set(a) & set(b) if a[k]["ids"] != b[k]["ids"])
        if differ:
            diffs.append(f"rankings: {len(differ)} of {len(a)} top/bottom lists differ in their ids, e.g. {differ[:3]}")
        worst = max((abs(x - y) for k in set(a) & set(b) if a[k]["ids"] == b[k]["ids"]
                     for x, y in zip(a[k]["scores"], b[k]["scores"], strict=True)), default=0.0)
        if worst > 1e-6:
            diffs.append(f"rankings: scores differ by up to {worst:.2e}")
    if "store" in parts:
        if clean["store_key"] != now["store_key"]:
            diffs.append(f"store: current store {now['store_key']} != clean {clean['store_key']}")
        a, b = clean["store_shards"], now["store_shards"]
        if set(a) != set(b):
            diffs.append(f"store: shards {sorted(b)} != clean {sorted(a)}")
        diffs += [f"store: shard {n} {f} differ" for n in sorted(set(a) & set(b)) for f in a[n] if a[n][f] != b[n][f]]
    if "corpus" in parts:
        diffs += [f"corpus: {f} {now['corpus'][f]!r} != clean {clean['corpus'][f]!r}" for f in clean["corpus"]
                  if clean["corpus"][f] != now["corpus"][f]]
    if "index" in parts:
        diffs += [f"index: {f} {now['index'][f]!r} != clean {clean['index'][f]!r}" for f in ("ids", "count", "encoder_version", "dataset_version")
                  if clean["index"][f] != now["index"][f]]
        if clean["probes"] != now["probes"]:
            diffs.append(f"index: probe top-5 {now['probes']} != clean {clean['probes']}")
        else:
            worst = max(abs(x - y) for r1, r2 in zip(clean["probe_scores"], now["probe_scores"], strict=True)
                        for x, y in zip(r1, r2, strict=True))
            if worst > 1e-4:
                diffs.append(f"index: probe scores differ by up to {worst:.2e}")
    return diffs


def leftovers(home: Path) -> list[str]:
    """Temporaries of interrupted atomic writes still under the root (the Dagster instance and MLflow aside)."""
    skip = {"dagster_home", "mlartifacts"}
    return sorted(str(p.relative_to(home)) for p in home.rglob(".tmp-*") if p.relative_to(home).parts[0] not in skip)


def mlflow_runs(home: Path) -> dict[str, Any]:
    import mlflow

    from influcoder_dagster.student import tracking

    tracking.setup(home)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    versions = sorted(int(v.version) for v in mlflow.MlflowClient().search_model_versions(f"name='{ENCODER_NAME}'"))
    return {"runs_by_status": {s: sum(r.info.status == s for r in runs) for s in sorted({r.info.status for r in runs})},
            "registered_versions": versions, "champion": tracking.champion_version(ENCODER_NAME)}


def mlflow_sql(home: Path, sql: str) -> list[tuple]:
    """A read-only look at MLflow's sqlite store (cheap enough to poll)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{home / 'mlflow.db'}?mode=ro", uri=True, timeout=1)) as con:
        return con.execute(sql).fetchall()


ENCODER_NAME = "influcoder-encoder"  # encoder.registered_name (default)


# ---------------------------------------------------------------- the phases


def kill_and_rerun(w: Writer, asset: str, select: list[str], kill: Kill, rerun_timeout: float = 900) -> dict[str, Any]:
    """SIGKILL one materialize part-way, then run it again; a rerun blocked on the pool is stopped, the dead
    runs' slots are freed, and it is run once more."""
    killed = w.materialize(f"KILL {asset}", select, kill=kill)
    entry: dict[str, Any] = {"asset": asset, "select": select, "killed": killed["killed"], "killed_after_s": killed.get("killed_after_s"),
                             "killed_after_step_start_s": killed.get("killed_after_step_start_s"), "kill_delay_s": round(kill.delay, 2),
                             "step_finished_before_kill": killed.get("step_finished_before_kill"),
                             "pool_slot_left_claimed": killed.get("pool_slot_left_claimed"),
                             "writer_lock_free_after_kill": _lock_free(w.root.home),
                             "leftover_tmp_after_kill": leftovers(w.root.home)}
    if not killed["killed"]:
        entry["note"] = (f"not killed: the command ended (rc={killed['rc']}) before the kill point (step seen: {killed.get('step_seen')}, "
                         f"trigger seen: {killed.get('trigger_seen')}); {killed['failures']}")
    rerun = w.materialize(f"rerun {asset}", select, timeout=rerun_timeout)
    entry["rerun_wall_s"] = rerun["wall_s"]
    if rerun["blocked_on_pool"]:
        entry["first_rerun"] = {k: rerun.get(k) for k in ("blocked_on_pool", "blocked_after_s", "exited_on_sigterm", "wall_s", "rc")}
        entry["recovery"] = w.free_dead_runs([r for r in [killed.get("run_id"), *rerun["run_ids"]] if r])
        rerun = w.materialize(f"rerun {asset} (slots freed)", select, timeout=rerun_timeout)
        entry["rerun_wall_s"] = rerun["wall_s"]
    # A blocking quality gate that holds the new encoder back is the stage completing, not failing.
    gate_only = rerun["gate_held"] and rerun["rc"] == 1 and all("DagsterAssetCheckFailedError" in f for f in rerun["failures"])
    entry["gate_held"] = rerun["gate_held"]
    entry["rerun_ok"] = (rerun["ok"] or gate_only) and not entry.get("first_rerun")
    entry["rerun_ok_after_recovery"] = rerun["ok"] or gate_only
    entry["rerun_failures"] = rerun["failures"]
    entry["leftover_tmp_after_rerun"] = leftovers(w.root.home)
    return entry


def _lock_free(home: Path) -> bool:
    from filelock import FileLock, Timeout

    lock = FileLock(str(home / ".writer.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    lock.release()
    return True


PHASES = {-1: "warm-up (each reader's first request)", 0: "baseline (no writer)", 1: "rebuilds", 2: "kills"}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    t_start = time.monotonic()
    root = Root(work)
    root.write()
    probes = write_data(root)
    w = Writer(root, args.blocked_grace)

    print("build (every asset, demo corpus at the tests' size)", flush=True)
    clean_copy = work / "clean_home"
    if args.reuse_build and clean_copy.exists():  # development only: the recorded run builds from scratch
        shutil.rmtree(root.home, ignore_errors=True)
        shutil.copytree(clean_copy, root.home, symlinks=True)
        build = {"ok": True, "wall_s": None, "reused": True}
    else:
        build = w.materialize("build", None, timeout=2400, watch=False)
        if not build["ok"]:
            raise SystemExit(f"the clean build failed: {build['failures']}")
        if args.reuse_build:
            shutil.copytree(root.home, clean_copy, symlinks=True)
    step_s = w.step_seconds()
    clean = capture(root.home, probes)
    clean_mlflow_s = mlflow_sql(root.home, "SELECT (end_time - start_time) / 1000.0 FROM runs WHERE status = 'FINISHED' ORDER BY start_time")
    print(f"  clean: {clean['corpus']['n']} samples, {len(clean['lists'])} top/bottom lists, index {clean['index']['encoder_version']}", flush=True)

    def clean_step(name: str, partition: str | None = None) -> float:
        key = next((k for k in step_s if k == name or (partition and k.startswith(f"{name}[{partition}"))), None)
        return step_s[key] if key else 1.0

    ctx = mp.get_context("spawn")
    stop, phase, ready, out = ctx.Event(), ctx.Value("i", -1), ctx.Value("i", 0), ctx.Queue()
    readers = [ctx.Process(target=reader_main, args=(str(root.home), probes, stop, phase, ready, out), daemon=True)
               for _ in range(args.readers)]
    for r in readers:
        r.start()
    phase_times: dict[int, list[float]] = {-1: [time.time()]}

    def next_phase(p: int, title: str) -> None:
        phase_times[phase.value].append(time.time())
        phase.value = p
        phase_times[p] = [time.time()]
        print(title, flush=True)

    deadline = time.monotonic() + 600
    while ready.value < len(readers) and time.monotonic() < deadline and all(r.is_alive() for r in readers):
        time.sleep(0.2)
    next_phase(0, f"{args.readers} readers serving; baseline {args.baseline_s:.0f} s with no writer")
    time.sleep(args.baseline_s)

    # ---- rebuilds under load
    next_phase(1, "rebuilds under load")
    spare, spare2 = root.spare
    root.set("rankings", "top_k", 24)
    w.materialize("rankings top_k 24", ["influence_rankings"])
    root.set("index", "nprobe", 256)
    w.materialize("index nprobe 256", ["embedding_index"])
    shutil.copy(spare, root.data / spare.name)
    w.materialize("add a dataset file, refresh", REFRESH)
    (root.data / spare.name).unlink()
    w.materialize("remove it, refresh", REFRESH)
    shutil.copy(spare, root.data / spare.name)
    w.materialize("add the same file again, refresh", REFRESH)
    (root.data / spare.name).unlink()
    w.materialize("remove it again, refresh", REFRESH)
    root.unset("rankings", "top_k")
    root.unset("index", "nprobe")
    w.materialize("revert top_k and nprobe", ["influence_rankings", "embedding_index"])
    after_rebuilds = compare(clean, capture(root.home, probes), ["rankings", "store", "corpus", "index"])
    print(f"  state after the rebuilds equal to clean: {not after_rebuilds} {after_rebuilds}", flush=True)

    # ---- kills under load
    next_phase(2, "kills under load")
    f, kills = args.kill_fraction, []

    def record(entry: dict[str, Any], parts: list[str]) -> dict[str, Any]:
        now = capture(root.home, probes)
        entry["differences"] = compare(clean, now, parts)
        entry["compared"] = parts
        kills.append(entry)
        return now

    root.set("projection", "seed", 1)
    w.materialize("projection seed 1 (shards)", SHARD_STAGE)
    root.unset("projection", "seed")
    store = root.home / "gradients" / clean["store_key"]
    for shard in clean["store_shards"]:  # a finished shard is reused: delete the seed-0 rows so the stage redoes them
        for suffix in (".f16", ".json"):
            (store / f"{shard}{suffix}").unlink(missing_ok=True)
    part = max((n.rsplit("-", 1)[0] for n in clean["store_shards"]), key=lambda n: clean_step("projected_gradients", n))
    record(kill_and_rerun(w, "tokenized_corpus/projected_gradients", SHARD_STAGE,
                          Kill("projected_gradients", f * clean_step("projected_gradients", part), part)), ["store", "corpus"])

    shutil.copy(spare2, root.data / spare2.name)
    w.materialize("add another dataset file, refresh", REFRESH)
    (root.data / spare2.name).unlink()
    record(kill_and_rerun(w, "corpus_manifest", REFRESH, Kill("corpus_manifest", f * clean_step("corpus_manifest"))),
           ["corpus", "store", "rankings", "index"])

    root.set("rankings", "top_k", 24)
    w.materialize("rankings top_k 24", ["influence_rankings"])
    root.unset("rankings", "top_k")
    record(kill_and_rerun(w, "influence_rankings", ["influence_rankings"], Kill("influence_rankings", f * clean_step("influence_rankings"))),
           ["rankings"])

    root.set("index", "onnx_query_encoder", False)
    w.materialize("index without ONNX", ["embedding_index"])
    root.unset("index", "onnx_query_encoder")
    now = record(kill_and_rerun(w, "embedding_index", ["embedding_index"], Kill("embedding_index", f * clean_step("embedding_index"))),
                 ["index"])
    if not (root.home / "index" / now["index"]["folder"] / "encoder" / "query.onnx").exists():
        kills[-1]["differences"].append("index: the served encoder folder has no query.onnx")

    if not args.no_encoder_kill:
        # Killed while its MLflow run is open (training), f of the clean run's MLflow time after it opened.
        root.set("encoder", "seed", 1)
        def training() -> bool:
            try:
                return bool(mlflow_sql(root.home, "SELECT 1 FROM runs WHERE status = 'RUNNING' LIMIT 1"))
            except Exception:  # noqa: BLE001 - the store busy or not written yet: look again
                return False

        entry = kill_and_rerun(w, "influcoder_encoder", ["influcoder_encoder"],
                               Kill("influcoder_encoder", f * (clean_mlflow_s[0][0] if clean_mlflow_s else clean_step("influcoder_encoder")),
                                    after=training))
        entry["kill_point"] = "after the step's MLflow run opened"
        serve = w.materialize("serve the champion", ["shard_embeddings", "embedding_index"])
        now, ml = capture(root.home, probes), mlflow_runs(root.home)
        entry.update(mlflow=ml, index_encoder_version=now["index"]["encoder_version"], compared=["corpus", "index serves the champion"])
        entry["differences"] = [] if serve["ok"] else [f"index refresh after the encoder failed: {serve['failures']}"]
        if ml["champion"] is None or now["index"]["encoder_version"] != f"v{ml['champion']}" or int(ml["champion"]) not in ml["registered_versions"]:
            entry["differences"].append(f"index serves {now['index']['encoder_version']}, champion {ml['champion']}, "
                                        f"registered {ml['registered_versions']}")
        entry["differences"] += compare(clean, now, ["corpus"])
        kills.append(entry)

    if not args.no_base_model_kill:
        # The tiny decoder and its adapters are trained once and then reused: delete them so the stage trains again.
        for rel in (clean["base_model"]["path"], clean["base_model"]["adapter"]):
            shutil.rmtree(root.home / rel, ignore_errors=True)
        now = record(kill_and_rerun(w, "base_model", ["base_model"], Kill("base_model", f * clean_step("base_model"))), ["base_model"])
        kills[-1]["content_equal_to_clean"] = all(now["base_model"].get(x) == clean["base_model"].get(x) for x in BASE_CONTENT)
    for k in kills:
        k["equal_to_clean"] = not k["differences"]

    # ---- stop the readers
    phase_times[2].append(time.time())
    stop.set()
    results = []
    for _ in readers:
        try:
            results.append(out.get(timeout=180))
        except Exception as exc:  # noqa: BLE001 - a reader that died without reporting
            results.append({"pid": None, "stats": {}, "failures": [(time.time(), -1, "reader", f"no report: {_message(exc)}")], "n_failures": 1})
    for r in readers:
        r.join(30)
    dead = [f"reader process exit code {r.exitcode}" for r in readers if r.exitcode not in (0, None)]
    return summarize(args, w, build, clean, after_rebuilds, kills, results, dead, phase_times, time.monotonic() - t_start)


def summarize(args: argparse.Namespace, w: Writer, build: dict[str, Any], clean: dict[str, Any], after_rebuilds: list[str],
              kills: list[dict[str, Any]], results: list[dict[str, Any]], dead: list[str], phase_times: dict[int, list[float]],
              wall: float) -> dict[str, Any]:
    per_phase: dict[str, dict[str, Any]] = {}
    for p in sorted(PHASES):
        stats = [res["stats"][p] for res in results if p in res["stats"]]
        if not stats:
            continue
        agg = {key: sum(s[key] for s in stats) for key in stats[0]}
        times = phase_times.get(p, [])
        agg["seconds"] = round(times[1] - times[0], 1) if len(times) == 2 else None
        agg["attribute_ms_mean_ok"] = round(1000 * agg.pop("attribute_s") / max(agg["attribute_ok"], 1), 1)
        agg["sql_ms_mean_ok"] = round(1000 * agg.pop("sql_s") / max(agg["sql_ok"], 1), 1)
        per_phase[PHASES[p]] = agg
    requests = sum(a["attribute_ok"] + a["attribute_failed"] + a["sql_ok"] + a["sql_failed"] for a in per_phase.values())

    def during(t: float) -> dict[str, Any] | None:
        return next((o for o in w.ops if o["start"] <= t <= o["end"]), None)

    grouped: dict[tuple[str, str, str], dict[str, Any]] = {}
    for t, p, kind, msg in (f for res in results for f in res["failures"]):
        op = during(t)
        label = op["label"] if op else "between writer commands"
        g = grouped.setdefault((kind, msg, label), {"kind": kind, "message": msg, "during": label, "phase": PHASES.get(p, str(p)), "count": 0,
                                                    "first": t, "last": t, "op_start": op["start"] if op else t})
        g.update(count=g["count"] + 1, first=min(g["first"], t), last=max(g["last"], t))
    messages = []
    for g in sorted(grouped.values(), key=lambda g: -g["count"]):
        g["first_s_after_command_start"] = round(g.pop("first") - g["op_start"], 1)
        g["span_s"] = round(g.pop("last") - g["op_start"] - g["first_s_after_command_start"], 1)
        g.pop("op_start")
        messages.append(g)
    messages += [{"kind": "reader", "message": d, "count": 1} for d in dead]
    load_ops = [o for o in w.ops if o["label"] != "build"]
    stuck = [r.run_id for r in w.instance.get_runs(limit=300) if not r.is_finished]
    git = _git()
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable
    command = shlex.join([python, os.path.relpath(Path(sys.argv[0]).resolve(), ROOT), *sys.argv[1:]])
    return {
        "commit": args.git_at_start["commit"], "working_tree_dirty": bool(args.git_at_start["dirty"]),
        **({"commit_at_end": git["commit"]} if git["commit"] != args.git_at_start["commit"] else {}),
        "command": command, "readers": args.readers,
        "reader_requests": int(requests), "reader_failures": int(sum(res["n_failures"] for res in results) + len(dead)),
        "failure_messages": messages, "reader_phases": per_phase,
        "rebuilds_during_load": sum(1 for o in load_ops if o["ok"]),
        "writer_commands_during_load": [{k: o.get(k) for k in ("label", "select", "rc", "wall_s", "killed", "blocked_on_pool", "gate_held",
                                                                 "failures")} for o in load_ops],
        "writer_commands_failed": [{"label": o["label"], "rc": o["rc"], "failures": o["failures"]} for o in load_ops
                                   if not o["ok"] and not o["killed"] and not o["blocked_on_pool"]
                                   and not (o["gate_held"] and all("DagsterAssetCheckFailedError" in x for x in o["failures"]))],
        "state_after_rebuilds_equal_to_clean": not after_rebuilds, "state_after_rebuilds_differences": after_rebuilds,
        "kills": kills,
        "kill_fraction": args.kill_fraction,
        "dagster_runs_left_unfinished": len(stuck),
        "build_wall_s": build.get("wall_s"),
        "clean": {"samples": clean["corpus"]["n"], "lists": len(clean["lists"]), "index_encoder": clean["index"]["encoder_version"],
                  "store_shards": sorted(clean["store_shards"]), "base_model": clean["base_model"]["model_hash"]},
        "wall_s": round(wall, 1), "cpu_count": os.cpu_count(), "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def _git() -> dict[str, str]:
    return {k: subprocess.run(["git", *cmd], check=False, cwd=ROOT, capture_output=True, text=True).stdout.strip()
            for k, cmd in {"commit": ["rev-parse", "HEAD"], "dirty": ["status", "--porcelain", "--untracked-files=no"]}.items()}


def report(res: dict[str, Any]) -> None:
    print(f"\ncommit {res['commit']}{' (uncommitted changes in the tree)' if res['working_tree_dirty'] else ''}; "
          f"wall {res['wall_s']:.0f} s (build {res['build_wall_s']} s)")
    print("\n| reader phase | seconds | attribute ok / failed | sql ok / failed | attribute ms (mean, ok) | sql ms (mean, ok) |")
    print("|---|---|---|---|---|---|")
    for name, a in res["reader_phases"].items():
        print(f"| {name} | {a['seconds']} | {a['attribute_ok']} / {a['attribute_failed']} | {a['sql_ok']} / {a['sql_failed']} "
              f"| {a['attribute_ms_mean_ok']} | {a['sql_ms_mean_ok']} |")
    print(f"\nreaders {res['readers']}: {res['reader_requests']} requests, {res['reader_failures']} failures; "
          f"{res['rebuilds_during_load']} writer commands completed under load; "
          f"state after the rebuilds equal to clean: {res['state_after_rebuilds_equal_to_clean']} {res['state_after_rebuilds_differences']}")
    for m in res["failure_messages"]:
        print(f"  {m['count']:4d} x {m['kind']} during '{m.get('during')}' (from {m.get('first_s_after_command_start')} s, "
              f"for {m.get('span_s')} s): {m['message']}")
    for o in res["writer_commands_failed"]:
        print(f"  writer command failed: '{o['label']}' rc={o['rc']}: {o['failures']}")
    print("\n| asset | killed after (s) | after step start (s) | step done before kill | pool slot left claimed | rerun ok "
          "| rerun ok after recovery | equal to clean |")
    print("|---|---|---|---|---|---|---|---|")
    for k in res["kills"]:
        print(f"| {k['asset']} | {k['killed_after_s']} | {k['killed_after_step_start_s']} | {k['step_finished_before_kill']} | "
              f"{k['pool_slot_left_claimed']} | {k['rerun_ok']} | {k['rerun_ok_after_recovery']} | {k['equal_to_clean']} |")
        for d in k["differences"]:
            print(f"    difference: {d}")
        if k.get("note"):
            print(f"    {k['note']}")
        if "content_equal_to_clean" in k:
            print(f"    content (decoder weights, adapter tensors, adapter config with sorted lists) equal to clean: {k['content_equal_to_clean']}")
        if k.get("first_rerun"):
            print(f"    first rerun blocked on pool {POOL}: {k['first_rerun']}; recovery: freed the slots of {k['recovery']['freed_runs']}")
    print(f"\nDagster runs left unfinished (a killed run stays STARTED): {res['dagster_runs_left_unfinished']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=2, help="reader processes")
    parser.add_argument("--kill-fraction", type=float, default=0.5, help="kill this share of the clean build's step time after the step starts")
    parser.add_argument("--baseline-s", type=float, default=20.0, help="seconds of reading with no writer first")
    parser.add_argument("--blocked-grace", type=float, default=30.0, help="seconds a rerun may stay blocked on the DuckDB pool before it is stopped")
    parser.add_argument("--no-encoder-kill", action="store_true", help="skip the encoder's kill test")
    parser.add_argument("--no-base-model-kill", action="store_true", help="skip the base model's kill test")
    parser.add_argument("--workdir", help="work here and keep it (default: a temporary directory, removed)")
    parser.add_argument("--reuse-build", action="store_true", help="development: reuse <workdir>/clean_home from an earlier run")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    args.git_at_start = _git()  # the code every writer command runs, unless the tree changes meanwhile
    work = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="fault_load-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        res = run(args, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    report(res)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
