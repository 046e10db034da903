"""Atomic file writes: write to a temporary sibling, then rename over the target.

A reader therefore sees either the old file or the new one, never a half-written one. An
interrupted writer leaves only a ``.tmp-<name>-*`` sibling behind, which the next write of the same
target sweeps (one writer per storage root: ``core.writer_lock``). Files and folders follow the
process's umask, as a plain ``open`` would.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


STALE_SECONDS = 3600  # a leftover whose writer's pid cannot be checked (another host) is swept after this


def _sweep_leftovers(target: Path) -> None:
    """Remove what interrupted writes of ``target`` left behind: temporaries whose writer process is
    gone (their names carry its pid), or that are older than ``STALE_SECONDS``."""
    for leftover in target.parent.glob(f".tmp-{glob.escape(target.name)}-*"):
        pid = leftover.name[len(f".tmp-{target.name}-"):].split("-", 1)[0]
        try:
            old = time.time() - leftover.stat().st_mtime > STALE_SECONDS
        except FileNotFoundError:  # finished meanwhile
            continue
        if old or (pid.isdigit() and not _alive(int(pid))):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it to ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(target)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{target.name}-{os.getpid()}-", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``target``; on success it replaces ``target``.

    The swap is two renames (old out, new in), so a reader may find ``target`` missing for an
    instant, never half-written.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-{os.getpid()}-", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(target: str | os.PathLike[str], data: Any) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str), encoding="utf-8")
    return Path(target)


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def hash_files(paths: list[Path], root: Path | None = None) -> str:
    """Content hash over files, named relative to ``root`` so a moved folder keeps its hash."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(root) if root else p.name).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def dir_size(path: str | os.PathLike[str]) -> int:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
