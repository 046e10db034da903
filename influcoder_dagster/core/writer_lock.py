"""One writer per storage root: ``influcoder materialize`` holds ``.writer.lock`` while it runs.

Dagster's DuckDB writer pool serialises runs of one instance only; two processes (two terminals,
a cron job beside the UI) would otherwise write the same store and database at once. Readers
(``attribute``, ``sql``) never take the lock: they read published files.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from influcoder_dagster.core.errors import InflucoderError
from influcoder_dagster.core.paths import Paths


class StorageRootBusy(InflucoderError):
    """Another writer holds the storage root; the message names it."""


@contextlib.contextmanager
def writer_lock(home: Path, wait: bool = False) -> Iterator[None]:
    """Hold the storage root's writer lock; without ``wait``, refuse at once if another process holds it."""
    paths = Paths(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(paths.writer_lock))
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        raise StorageRootBusy(f"{home} is being written by {_holder(paths)}; wait for it to finish, "
                              "or pass --wait to queue behind it") from None
    try:
        paths.writer_holder.write_text(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv[:3]),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
        yield
    finally:
        paths.writer_holder.unlink(missing_ok=True)
        lock.release()


def _holder(paths: Paths) -> str:
    try:
        h = json.loads(paths.writer_holder.read_text())
    except (OSError, ValueError):
        return "another process"
    return f"process {h['pid']} on {h['host']} ({h['command']!r}, since {h['since']})"
