"""A second writer on the same storage root is refused, naming the process that holds it; readers never wait."""

import subprocess
import sys
import time

import pytest

from influcoder_dagster.core.writer_lock import StorageRootBusy, writer_lock

HOLD = """
import sys, time
from pathlib import Path
from influcoder_dagster.core.writer_lock import writer_lock
with writer_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(30)
"""


def test_a_second_writer_is_refused_with_the_holder_named_and_may_wait_instead(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StorageRootBusy, match=rf"is being written by process {holder.pid} on .*pass --wait"):
            with writer_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    started = time.perf_counter()
    with writer_lock(tmp_path, wait=True):  # the killed holder's lock went with its process
        assert (tmp_path / ".writer.json").exists()
    assert time.perf_counter() - started < 5 and not (tmp_path / ".writer.json").exists()
