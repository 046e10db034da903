"""Query gradients cached beside the store, so an update computes only the queries that are new.

``user_queries.npz`` holds the user queries' gradients; ``anchor_queries.npz`` the anchors' plain
gradients when the pool's rows are Adam directions. Both are keyed by (query id, text, prompt).
``eval_ceiling_pool.npz`` holds the held-out pool's rows under the noise ceiling's second seed,
keyed by (sample id, hash of its token ids): the pool is fixed between rebuilds, so an update that
adds held-out anchors extracts only theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from influcoder_dagster.core.atomic import atomic_path
from influcoder_dagster.teacher.pools import anchor_sample_id

QUERY_CACHE = "user_queries.npz"


ANCHOR_CACHE = "anchor_queries.npz"  # anchors' plain gradients, when the pool's rows are Adam directions

CEILING_POOL_CACHE = "eval_ceiling_pool.npz"  # the held-out pool's second-seed rows


def cached_query_gradients(path: Path, queries: list[dict[str, Any]], compute: Callable[[list[dict[str, Any]]], np.ndarray],
                           dim: int) -> dict[str, np.ndarray]:
    """Query gradients cached in ``path`` (beside the store) by (id, text, prompt): only new or changed
    queries are computed, so a new shard needs no model for them."""
    cached: dict[tuple[str, str, str], np.ndarray] = {}
    if path.exists():
        with np.load(path) as z:
            cached = {(q, t, p): g for q, t, p, g in zip(z["query_id"], z["text"], z["prompt"], z["grads"], strict=True)}
    key = lambda q: (q["query_id"], q["text"], q["prompt"] or "")  # noqa: E731
    missing = [q for q in queries if key(q) not in cached]
    if missing:
        cached.update({key(q): g for q, g in zip(missing, compute(missing), strict=True)})
    out = {q["query_id"]: cached[key(q)] for q in queries}
    if missing or len(cached) != len(queries):
        keys = [key(q) for q in queries]
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, query_id=np.array([k[0] for k in keys], dtype=str), text=np.array([k[1] for k in keys], dtype=str),
                         prompt=np.array([k[2] for k in keys], dtype=str),
                         grads=np.stack([cached[k] for k in keys]) if keys else np.zeros((0, dim), np.float32))
    return out


def read_anchor_gradients(store_root: Path) -> dict[int, np.ndarray]:
    """The anchors' plain (query-side) gradients by sample id, as the last rankings run cached them."""
    path = store_root / ANCHOR_CACHE
    if not path.exists():
        return {}
    with np.load(path) as z:
        return {anchor_sample_id(q): g for q, g in zip(z["query_id"], z["grads"], strict=True)}
