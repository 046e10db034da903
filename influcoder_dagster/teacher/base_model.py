"""The base model's record (``models/base_model.json``): the decoder and adapters every teacher stage loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from influcoder_dagster.core.atomic import read_json, write_json
from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.core.paths import Paths

PATH_KEYS = ("path", "adapter", "logit_fisher")  # stored relative to the storage root when inside it, so the root can move


def _map_paths(entry: dict[str, Any], change: Any) -> dict[str, Any]:
    """``entry`` with ``change`` applied to its folders, its checkpoints' included."""
    out = {**entry, **{k: change(entry[k]) for k in PATH_KEYS if entry.get(k)}}
    if entry.get("checkpoints"):
        out["checkpoints"] = [_map_paths(c, change) for c in entry["checkpoints"]]
    return out


def base_model_record(paths: Paths) -> dict[str, Any]:
    """The recorded base model, its folders resolved against the storage root as it is now."""
    if not paths.base_model_pointer.exists():
        raise MissingUpstreamError(f"{paths.base_model_pointer} is missing", "base_model")
    return _map_paths(read_json(paths.base_model_pointer), lambda p: p if Path(p).is_absolute() else str(paths.home / p))


def write_base_model_record(paths: Paths, record: dict[str, Any]) -> None:
    """Write the record with its folders inside the storage root made relative to it."""
    relative = lambda p: str(Path(p).relative_to(paths.home)) if Path(p).is_relative_to(paths.home) else str(p)  # noqa: E731
    write_json(paths.base_model_pointer, _map_paths(record, relative))
