"""Gradient extraction on a Ray cluster of 1 and 2 workers, against the local backend.

    python benchmarks/ray_workers.py [--n 1200] [--files 4] [--json PATH]

The demo's docstring passages in ``--files`` shards; the tiny decoder is trained once (not timed).
Each row copies that home and materializes ``tokenized_corpus`` and ``projected_gradients`` for
every shard through ``influcoder materialize``'s runner, two partition runs at once:

* ``local``: the local backend, one partition run at a time (the default);
* ``ray, N CPUs``: ``compute.backend = "ray"`` on a cluster started with ``ray start --num-cpus N``,
  each shard a Ray task of one CPU, so a 1-CPU cluster runs the shards one after another and a
  2-CPU one two at a time.

It prints wall seconds and the speed-up from one Ray worker to two. Results go to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.planted import provenance  # noqa: E402

SELECT = ["tokenized_corpus", "projected_gradients"]
RAY = str(Path(sys.executable).parent / "ray")


def write_inputs(root: Path, n: int, files: int) -> Path:
    from influcoder_dagster.data.demo import docstring_passages

    data = root / "data"
    data.mkdir()
    texts = docstring_passages(n)[:n]
    for i in range(files):
        (data / f"part-{i}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[i::files]))
    return data


def config(root: Path, home: Path, data: Path, compute: str) -> str:
    path = root / f"{home.name}.toml"
    path.write_text(f'home = "{home}"\n[dataset]\npath = "{data}"\n{compute}')
    return str(path)


def timed(config_path: str, home: Path, workers: int) -> float:
    from influcoder_dagster.app.runner import failure_messages, materialize

    start = time.perf_counter()
    runs = materialize(config_path, home, SELECT, workers=workers)
    if not runs.success:
        sys.exit("\n".join(failure_messages(runs)))
    return time.perf_counter() - start


def on_cluster(cpus: int, run) -> float:
    """``run(address)`` against a fresh local Ray cluster of ``cpus`` CPUs."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([RAY, "start", "--head", "--port=6390", f"--num-cpus={cpus}", "--include-dashboard=false"],
                   check=True, capture_output=True, env=env)
    try:
        return run("127.0.0.1:6390")
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1200)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from influcoder_dagster.app.runner import materialize
    from influcoder_dagster.core.quiet import quiet_libraries

    quiet_libraries()
    measured = provenance("benchmarks/ray_workers.py")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_inputs(root, args.n, args.files)
        seed = root / "seed"
        materialize(config(root, seed, data, ""), seed, ["base_model"])  # the decoder, outside the clock

        def fresh(name: str) -> Path:
            shutil.copytree(seed, root / name, ignore=shutil.ignore_patterns("dagster_home", ".writer*"))
            return root / name

        seconds = {"local": timed(config(root, fresh("local"), data, ""), root / "local", 1)}
        for cpus in (1, 2):
            home = fresh(f"ray{cpus}")
            compute = '[compute]\nbackend = "ray"\nray_address = "{}"\n'
            seconds[f"ray, {cpus} CPUs"] = on_cluster(cpus, lambda address, h=home: timed(
                config(root, h, data, compute.format(address)), h, 2))
    speedup = seconds["ray, 1 CPUs"] / seconds["ray, 2 CPUs"]
    for name, s in seconds.items():
        print(f"{name:<14}{s:8.1f} s")
    print(f"speed-up from 1 Ray worker to 2: {speedup:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({**measured, "n": args.n, "files": args.files, "seconds": seconds,
                                         "speedup_1_to_2_workers": speedup}, indent=1))


if __name__ == "__main__":
    main()
