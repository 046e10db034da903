"""The base model's record (``models/base_model.json``): the decoder and adapters every teacher stage loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from influcoder_dagster.core.atomic import read_json, write_json
from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.core.paths import Paths

PATH_KEYS = ("path", "adapter")  # stored relative to the storage root when inside it, so the root can move


def base_model_record(paths: Paths) -> dict[str, Any]:
    """The recorded base model, its folders resolved against the storage root as it is now."""
    if not paths.base_model_pointer.exists():
        raise MissingUpstreamError(f"{paths.base_model_pointer} is missing", "base_model")
    record = read_json(paths.base_model_pointer)
    return {**record, **{k: str(paths.home / record[k]) for k in PATH_KEYS if record.get(k) and not Path(record[k]).is_absolute()}}


def write_base_model_record(paths: Paths, record: dict[str, Any]) -> None:
    """Write the record with its folders inside the storage root made relative to it."""
    stored = dict(record)
    for key in PATH_KEYS:
        if stored.get(key) and Path(stored[key]).is_relative_to(paths.home):
            stored[key] = str(Path(stored[key]).relative_to(paths.home))
    write_json(paths.base_model_pointer, stored)
