"""Scoring throughput: our streaming top-k over the fp16 gradient store vs the in-memory bound.

    python benchmarks/rankings.py [--n 100000] [--d 8192] [--queries 128] [--k 32] [--json PATH]

One run, same data, side by side:

* ``ours``: ``scoring.stream_topk`` over ``GradientStore.iter_blocks`` (fp16 memmap on disk,
  block by block, cosine, running top-k) — what the ``influence_rankings`` asset does;
* ``bound``: ``torch.topk(Q @ G.T)`` with G already unit-normalised float32 in memory — the
  physical limit, which needs the whole store in RAM.

Each method runs in its own process, so ``peak_rss_mb`` is that method's own high-water mark;
ours is also measured at N/4 to show whether memory grows with N.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def peak_rss_mb() -> float:
    """This process's resident high-water mark (VmHWM). Unlike ru_maxrss it starts afresh at exec,
    so a spawned child does not inherit the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_store(root: Path, n: int, d: int, seed: int = 0) -> Path:
    from influcoder_dagster.teacher.store import GradientStore

    store = GradientStore.create(root, {"kind": "synthetic", "dim": d, "seed": seed}, f"bench-{n}-{d}")
    rng = np.random.default_rng(seed)
    writer = store.writer("bench", np.arange(n, dtype=np.int64))
    chunk = 8192
    for i in range(0, n, chunk):
        rows = np.arange(i, min(i + chunk, n))
        writer.write(rows, rng.standard_normal((len(rows), d), dtype=np.float32))
    writer.finish()
    store.publish({"bench": ""}, {}, ["bench"])
    return store.root


def _ours(root: str, queries: np.ndarray, k: int, n_rows: int, block_rows: int, out: mp.Queue) -> None:
    import torch  # noqa: F401 - imported before the clock starts, as for the bound

    from influcoder_dagster.teacher.scoring import stream_topk
    from influcoder_dagster.teacher.store import GradientStore

    store = GradientStore.open(Path(root))
    start = time.perf_counter()
    top, _ = stream_topk(queries, store.iter_blocks(block_rows), k)
    seconds = time.perf_counter() - start
    out.put({"seconds": seconds, "pairs_per_s": len(queries) * n_rows / seconds,
             "peak_rss_mb": peak_rss_mb(), "ids": top.ids.tolist()})


def _bound(root: str, queries: np.ndarray, k: int, n_rows: int, out: mp.Queue) -> None:
    import torch

    from influcoder_dagster.teacher.store import GradientStore

    store = GradientStore.open(Path(root))
    g = torch.nn.functional.normalize(torch.from_numpy(np.asarray(store.rows("bench"), dtype=np.float32)), dim=1)
    q = torch.nn.functional.normalize(torch.from_numpy(queries), dim=1)
    start = time.perf_counter()
    _, ids = torch.topk(q @ g.T, k, dim=1)
    seconds = time.perf_counter() - start
    out.put({"seconds": seconds, "pairs_per_s": len(queries) * n_rows / seconds,
             "peak_rss_mb": peak_rss_mb(), "ids": ids.tolist()})


def run_in_process(fn, *args) -> dict:
    """Run ``fn(*args, queue)`` in a fresh (spawned) process and return what it puts on the queue."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, out))
    p.start()
    result = out.get()
    p.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=8192)
    parser.add_argument("--queries", type=int, default=128)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--block-rows", type=int, default=4096)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    queries = np.random.default_rng(1).standard_normal((args.queries, args.d), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"writing a {args.n} x {args.d} fp16 store ({args.n * args.d * 2 / 2**30:.1f} GiB)...", flush=True)
        root = make_store(Path(tmp) / "big", args.n, args.d)
        small = make_store(Path(tmp) / "small", args.n // 4, args.d)
        ours = run_in_process(_ours, str(root), queries, args.k, args.n, args.block_rows)
        ours_small = run_in_process(_ours, str(small), queries, args.k, args.n // 4, args.block_rows)
        bound = run_in_process(_bound, str(root), queries, args.k, args.n)
    agree = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ours.pop("ids"), bound.pop("ids"), strict=True)])
    ours_small.pop("ids")
    print(f"\nN={args.n}, d={args.d}, {args.queries} queries, top-{args.k} (top-k agreement with the bound: {agree:.4f})")
    print(f"{'method':<28}{'pairs/s':>14}{'seconds':>10}{'peak RSS MB':>14}")
    for name, r in ((f"ours (N={args.n})", ours), (f"ours (N={args.n // 4})", ours_small), ("bound: topk(Q @ G.T) in RAM", bound)):
        print(f"{name:<28}{r['pairs_per_s']:>14,.0f}{r['seconds']:>10.2f}{r['peak_rss_mb']:>14,.0f}")
    print(f"\nours / bound throughput: {ours['pairs_per_s'] / bound['pairs_per_s']:.2f}x;"
          f" ours peak RSS at N vs N/4: {ours['peak_rss_mb']:,.0f} vs {ours_small['peak_rss_mb']:,.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"n": args.n, "d": args.d, "pairs_per_s": ours["pairs_per_s"],
                                               "bound_pairs_per_s": bound["pairs_per_s"], "peak_rss_mb": ours["peak_rss_mb"],
                                               "peak_rss_mb_quarter_n": ours_small["peak_rss_mb"],
                                               "bound_peak_rss_mb": bound["peak_rss_mb"], "topk_agreement": agree}, indent=2))


if __name__ == "__main__":
    main()
