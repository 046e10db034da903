"""What every stage returns: metadata for the UI and the data version that lineage compares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class StageResult:
    metadata: dict[str, Any]
    data_version: str
