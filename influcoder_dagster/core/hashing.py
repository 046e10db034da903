"""Short content hashes: the data versions and folder names of every asset."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def short_hash(*parts: Any) -> str:
    """16 hex digits of the SHA-256 of ``parts`` as sorted JSON (values that JSON lacks as ``str``)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
