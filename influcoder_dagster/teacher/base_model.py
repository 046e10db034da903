"""The base model's record (``models/base_model.json``): the decoder and adapters every teacher stage loads."""

from __future__ import annotations

from typing import Any

from influcoder_dagster.core.atomic import read_json
from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.core.paths import Paths


def base_model_record(paths: Paths) -> dict[str, Any]:
    if not paths.base_model_pointer.exists():
        raise MissingUpstreamError(f"{paths.base_model_pointer} is missing", "base_model")
    return read_json(paths.base_model_pointer)
