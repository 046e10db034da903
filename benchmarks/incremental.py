"""Adding 5% new data: the incremental update vs a full rebuild, encoder retraining excluded.

    python benchmarks/incremental.py [--n 1200] [--files 4] [--new-fraction 0.05] [--repeat 3] [--json PATH]

Same corpus, same decoder (trained once beforehand, not timed), one run, all measured through
Dagster exactly as ``influcoder materialize`` runs it (shard partitions, then the manifest,
rankings and index):

* ``full``: every shard partition, the rankings and the index from scratch, one run at a time;
* ``full, 2 workers``: the same with two shard partitions materialized at once, each in its own process;
* ``incremental``: a new file with 5% more samples lands next to an already materialized corpus:
  one new partition, its rows merged into the rankings, only its samples embedded.

The full rebuild and the update are each measured ``--repeat`` times (the update from a copy of the
same materialized home) and compared by their medians; the JSON keeps every run's wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.planted import provenance  # noqa: E402

SELECT = ["base_model", "tokenized_corpus", "projected_gradients", "corpus_manifest", "influence_rankings", "shard_embeddings",
          "embedding_index"]


def timed_materialize(root: Path, home: str, workers: int = 1) -> tuple[float, dict[str, float]]:
    from influcoder_dagster.app.demo import seconds_per_asset
    from influcoder_dagster.app.runner import failure_messages, materialization_metadata, materialize

    start = time.perf_counter()
    runs = materialize(str(root / f"{home}.toml"), root / home, SELECT, workers=workers)
    wall = time.perf_counter() - start
    if not runs.success:
        raise SystemExit(f"{home}: {failure_messages(runs)}")
    return wall, seconds_per_asset(materialization_metadata(runs))


def median_run(runs: list[tuple[float, dict[str, float]]]) -> tuple[float, dict[str, float]]:
    """The run whose wall time is the median (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r[0])[(len(runs) - 1) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1200, help="samples before the new file")
    parser.add_argument("--files", type=int, default=4, help="files (shards) the old samples are split into")
    parser.add_argument("--new-fraction", type=float, default=0.05)
    parser.add_argument("--repeat", type=int, default=3, help="runs of the full rebuild and of the update (medians compared)")
    parser.add_argument("--json")
    args = parser.parse_args()

    from influcoder_dagster.core.config import Config
    from influcoder_dagster.data.demo import docstring_passages
    from influcoder_dagster.stages.base_model import run_base_model

    measured = provenance("benchmarks/incremental.py")
    passages = docstring_passages(10_000)
    n_new = max(1, int(args.n * args.new_fraction))
    if len(passages) < args.n + n_new:  # the standard library has ~1.2k passages: extend with numbered variants
        passages = [f"{p} (variant {i})" if i else p for i in range((args.n + n_new) // len(passages) + 1) for p in passages]
    old, new = passages[: args.n], passages[args.n : args.n + n_new]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def setup(home: str, with_new: bool) -> None:
            data = root / f"{home}-data"
            data.mkdir()
            for i in range(args.files):
                (data / f"old-{i}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in old[i :: args.files]))
            if with_new:
                (data / "new.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in new))
            # The weights teacher: a LoRA teacher's warm-up depends on the corpus present when
            # base_model is materialized, so the full and incremental runs would not share a teacher.
            (root / f"{home}.toml").write_text(
                f'home = "{root / home}"\n[dataset]\npath = "{data}"\n[model]\nbase_model = "{root / "lm"}"\n[encoder]\nmax_seq_length = 96\n'
                '[projection]\nkind = "logra"\ntarget = "weights"\nadam_precondition = false\n')

        # The decoder all runs attribute: trained once on the old corpus, outside the clock.
        setup("seed", False)
        seed = Config.model_validate({"home": str(root / "seed"), "dataset": {"path": str(root / "seed-data")},
                                      "projection": {"kind": "logra", "target": "weights", "adam_precondition": False}})
        shutil.copytree(Path(run_base_model(seed).metadata["path"]), root / "lm")

        setup("inc", False)
        timed_materialize(root, "inc")
        shutil.copytree(root / "inc", root / "inc-before")
        (root / "inc-data" / "new.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in new))
        inc_runs = []
        for _ in range(args.repeat):
            shutil.rmtree(root / "inc")
            shutil.copytree(root / "inc-before", root / "inc")
            inc_runs.append(timed_materialize(root, "inc"))
        full_runs = []
        for i in range(args.repeat):
            setup(f"full{i}", True)
            full_runs.append(timed_materialize(root, f"full{i}"))
        setup("par", True)
        par_s, parallel = timed_materialize(root, "par", workers=2)
    inc_s, full_s = statistics.median(w for w, _ in inc_runs), statistics.median(w for w, _ in full_runs)
    incremental, full = median_run(inc_runs)[1], median_run(full_runs)[1]

    print(f"\n{args.n} samples in {args.files} files + {n_new} new ({args.new_fraction:.0%}); seconds (asset bodies, then wall)")
    print(f"{'asset':<22}{'full':>10}{'full, 2 workers':>17}{'incremental':>14}")
    for asset in full:
        print(f"{asset:<22}{full[asset]:>10.2f}{parallel.get(asset, 0):>17.2f}{incremental.get(asset, 0):>14.2f}")
    print(f"{'wall (with Dagster)':<22}{full_s:>10.2f}{par_s:>17.2f}{inc_s:>14.2f}")
    print(f"medians of {args.repeat} runs: incremental / full = {inc_s / full_s:.3f} "
          f"(update {min(w for w, _ in inc_runs):.2f}-{max(w for w, _ in inc_runs):.2f} s, "
          f"rebuild {min(w for w, _ in full_runs):.2f}-{max(w for w, _ in full_runs):.2f} s); "
          f"full with 2 workers / 1 worker = {par_s / full_s:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            **measured, "n_old": args.n, "n_new": n_new, "repeat": args.repeat, "full_s": full_s, "incremental_s": inc_s,
            "ratio": inc_s / full_s, "full_runs_s": [w for w, _ in full_runs], "incremental_runs_s": [w for w, _ in inc_runs],
            "full_2_workers_s": par_s,
            "per_asset": {"full": full, "full_2_workers": parallel, "incremental": incremental}}, indent=2))


if __name__ == "__main__":
    main()
