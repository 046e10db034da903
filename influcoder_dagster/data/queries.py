"""User queries (the model outputs to attribute) and the planted ground truth recorded with samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from influcoder_dagster.core.errors import DatasetError


def read_queries(path: Path | None, text_field: str = "text") -> list[dict[str, Any]]:
    """User queries from JSONL: ``text`` (required), ``prompt`` and ``query_id`` (optional), other fields kept as meta."""
    if path is None:
        return []
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):  # not splitlines(): U+2028 may sit in a string
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: line {i}: malformed JSON ({exc.msg})") from exc
        if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str) or not rec[text_field].strip():
            raise DatasetError(f"{path}: line {i}: a query needs a non-empty string field {text_field!r}")
        prompt = rec.get("prompt")
        if prompt is not None and not rec[text_field].startswith(prompt):
            raise DatasetError(f"{path}: line {i}: 'prompt' must be the beginning of {text_field!r}")
        meta = {k: v for k, v in rec.items() if k not in (text_field, "prompt", "query_id")}
        out.append({"query_id": str(rec.get("query_id", f"user-{i}")), "text": rec[text_field], "prompt": prompt,
                    "meta": json.dumps(meta, sort_keys=True)})
    ids = [q["query_id"] for q in out]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{path}: query_id values must be unique")
    return out


def planted_members(samples_meta: list[str], sample_ids: np.ndarray) -> dict[str, set[int]]:
    """Planted group -> sample ids, from the ``planted_group`` field of the records."""
    groups: dict[str, set[int]] = {}
    for sid, meta in zip(sample_ids, samples_meta, strict=True):
        g = json.loads(meta).get("planted_group") if meta else None
        if g is not None:
            groups.setdefault(str(g), set()).add(int(sid))
    return groups
