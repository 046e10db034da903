"""In-process materialization with the real Dagster machinery (used by the CLI and the tests)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg

from .paths import Paths
from .resources import InflucoderConfig

INSTANCE_YAML = """\
# The DuckDB writer pool: one writer at a time, so runs never fight over DuckDB's lock.
concurrency:
  pools:
    default_limit: 1
"""


def instance_for(home: Path) -> dg.DagsterInstance:
    """``$DAGSTER_HOME``'s instance if set, else a persistent one under the storage root.

    Runs made by the CLI then show up in ``dagster dev`` started with the same ``DAGSTER_HOME``.
    """
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    root = Paths(home).dagster_home
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "dagster.yaml").exists():
        (root / "dagster.yaml").write_text(INSTANCE_YAML)
    return dg.DagsterInstance.from_config(str(root))


def materialize(config_path: str | None, home: Path, select: list[str] | None = None,
                instance: dg.DagsterInstance | None = None, log_level: str = "WARNING") -> dg.ExecuteInProcessResult:
    from .definitions import ASSET_CHECKS, ASSETS

    selection = None
    if select:
        known = {k.to_user_string() for a in ASSETS for k in a.keys}
        unknown = [s for s in select if s not in known]
        if unknown:
            raise ValueError(f"unknown asset(s) {unknown}; choose from {sorted(known)}")
        selection = dg.AssetSelection.assets(*select)
    return dg.materialize(
        [*ASSETS, *ASSET_CHECKS],
        selection=selection,
        resources={"influcoder": InflucoderConfig(config_path=config_path)},
        instance=instance or instance_for(home),
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
    )


def materialization_metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    """Asset name -> its materialization metadata as plain values."""
    out: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        out[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
    return out


def failed_steps(result: dg.ExecuteInProcessResult) -> list[str]:
    return [e.step_key for e in result.all_events if e.is_step_failure]


def failure_messages(result: dg.ExecuteInProcessResult) -> list[str]:
    msgs = []
    for e in result.all_events:
        if e.is_step_failure and e.step_failure_data and e.step_failure_data.error:
            err = e.step_failure_data.error
            while err.cause is not None and err.cls_name == "DagsterExecutionStepExecutionError":
                err = err.cause
            msgs.append(f"{e.step_key}: {err.message.strip()}")
    return msgs


def only_gate_failed(result: dg.ExecuteInProcessResult) -> bool:
    """True when the run failed only because a blocking quality check held back what follows it."""
    failures = [e for e in result.all_events if e.is_step_failure]
    return bool(failures) and all(
        e.step_failure_data and e.step_failure_data.error and "DagsterAssetCheckFailedError" in (e.step_failure_data.error.cls_name or "")
        for e in failures
    )


def materialize_with_gate(config_path: str | None, home: Path, select: list[str] | None = None
                          ) -> tuple[dg.ExecuteInProcessResult, dict[str, dict[str, Any]], bool]:
    """Materialize; if only the encoder's blocking quality gate failed, still refresh the index.

    The index is built from the champion, so a failed gate cannot put the new encoder in it, but the
    corpus may have changed: without this, the index would stay stale until the nightly reindex.
    Returns (last result, metadata of everything materialized, whether the gate held).
    """
    result = materialize(config_path, home, select)
    meta = materialization_metadata(result)
    held = only_gate_failed(result)
    if held and (select is None or "embedding_index" in select):
        result = materialize(config_path, home, ["embedding_index"])
        meta.update(materialization_metadata(result))
    return result, meta, held
