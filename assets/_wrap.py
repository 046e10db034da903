"""Turning a stage's result into a Dagster ``MaterializeResult``: metadata types and timing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import dagster as dg

from influcoder_dagster.stages.result import StageResult


def metadata(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            out[key] = dg.MetadataValue.null()
        elif key == "path":
            out[key] = dg.MetadataValue.path(str(value))
        elif key == "eval_table":
            out[key] = dg.MetadataValue.md(value)
        elif isinstance(value, (dict, list)):
            out[key] = dg.MetadataValue.json(value)
        else:
            out[key] = value
    return out


def run_stage(fn: Callable[[], StageResult], **extra: Any) -> tuple[StageResult, dg.MaterializeResult]:
    started = time.perf_counter()
    result = fn()
    if result.metadata.get("warning"):
        dg.get_dagster_logger().warning(result.metadata["warning"])
    values = {**result.metadata, "wall_seconds": round(time.perf_counter() - started, 2)}
    return result, dg.MaterializeResult(metadata=metadata(values), data_version=dg.DataVersion(result.data_version), **extra)
