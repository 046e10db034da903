"""Atomic writes: a reader never sees half a file, leftovers of a killed write are swept, modes follow the umask."""

import os
import stat
import subprocess
import sys

from influcoder_dagster.core.atomic import atomic_dir, atomic_path, write_json


def test_a_write_sweeps_what_a_killed_write_of_the_same_file_left_but_not_a_live_one(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / f".tmp-data.json-{dead}-abc123").write_text("half")  # its writer process is gone
    (tmp_path / f".tmp-data.json-{dead}-dir").mkdir()
    (tmp_path / f".tmp-data.json-{os.getpid()}-live").write_text("being written")  # a writer still at work
    (tmp_path / f".tmp-other.json-{dead}-xyz").write_text("another file's")
    write_json(tmp_path / "data.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".tmp-data.json-{os.getpid()}-live", f".tmp-other.json-{dead}-xyz", "data.json"])


def test_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.bin") as tmp:
            tmp.write_bytes(b"x")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "inside").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
