"""The rankings' Fisher preconditioner ``(F + lambda I)^-1``, kept beside the store it was estimated on.

Written by the rankings stage when ``rankings.precondition`` is on, so that a re-rank scores a
query as the rankings do without a pass over the store; a stale one (estimated on other data than
the store now holds) is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from influcoder_dagster.core.atomic import atomic_path
from influcoder_dagster.core.errors import MissingUpstreamError

PRECONDITIONER_FILE = "preconditioner.safetensors"  # (F + lambda I)^-1, when the rankings are preconditioned


def write_preconditioner(store: Any, inverse: np.ndarray, damping: float) -> Path:
    """``(F + lambda I)^-1`` beside the store, so that a re-rank scores a query as these rankings do
    without a pass over the store; tagged with the store's data version it was estimated on."""
    with atomic_path(store.root / PRECONDITIONER_FILE) as tmp:
        save_file({"inverse": np.ascontiguousarray(inverse, dtype=np.float32)}, str(tmp),
                  metadata={"dataset_version": str(store.manifest.get("dataset_version")), "damping": str(damping)})
    return store.root / PRECONDITIONER_FILE


def read_preconditioner(store: Any) -> np.ndarray | None:
    """The preconditioner the last rankings run wrote, or None when they are plain cosines;
    raises when it was estimated on other data than the store now holds."""
    path = store.root / PRECONDITIONER_FILE
    if not path.exists():
        return None
    with safe_open(str(path), framework="numpy") as f:
        version = f.metadata().get("dataset_version")
        if version != str(store.manifest.get("dataset_version")):
            raise MissingUpstreamError(f"{path} was estimated on data version {version}, but the store now holds "
                                       f"{store.manifest.get('dataset_version')}", "influence_rankings")
        return f.get_tensor("inverse")


def remove_preconditioner(store: Any) -> None:
    """Rankings without preconditioning leave no preconditioner behind for the re-rank to apply."""
    (store.root / PRECONDITIONER_FILE).unlink(missing_ok=True)
