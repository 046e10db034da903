"""Adding 5% new data: the incremental update vs a full rebuild, encoder retraining excluded.

    python benchmarks/incremental.py [--n 1200] [--new-fraction 0.05] [--json PATH]

Same corpus, same tiny decoder (trained once beforehand, not timed), one run, both measured:

* ``full``: tokenized corpus, projected gradients, rankings and index from scratch for all of it;
* ``incremental``: the same stages after a new file with 5% more samples lands next to an
  already materialized corpus (only the new shard's gradients, the new rows merged into the
  rankings, only the new samples embedded).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def stages(cfg) -> dict[str, float]:
    from influcoder_dagster import rankings_stage, student_stages, teacher_stages

    times = {}
    for name, fn in (("tokenized_corpus", teacher_stages.run_tokenized_corpus), ("projected_gradients", teacher_stages.run_projected_gradients),
                     ("influence_rankings", rankings_stage.run_influence_rankings), ("embedding_index", student_stages.run_embedding_index)):
        start = time.perf_counter()
        fn(cfg) if name == "tokenized_corpus" else fn(cfg, progress=False)
        times[name] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1200, help="samples before the new file")
    parser.add_argument("--new-fraction", type=float, default=0.05)
    parser.add_argument("--json")
    args = parser.parse_args()

    from influcoder_dagster import teacher_stages
    from influcoder_dagster.config import Config
    from influcoder_dagster.demo_data import docstring_passages

    passages = docstring_passages(10_000)
    n_new = max(1, int(args.n * args.new_fraction))
    if len(passages) < args.n + n_new:  # the standard library has ~1.2k passages: extend with numbered variants
        passages = [f"{p} (variant {i})" if i else p for i in range((args.n + n_new) // len(passages) + 1) for p in passages]
    old, new = passages[: args.n], passages[args.n : args.n + n_new]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def config(home: str) -> Config:
            return Config.model_validate({"home": str(root / home), "dataset": {"path": str(root / f"{home}-data")},
                                          "model": {"base_model": str(root / "lm")}, "encoder": {"max_seq_length": 96}})

        def write(home: str, name: str, texts: list[str]) -> None:
            (root / f"{home}-data").mkdir(exist_ok=True)
            (root / f"{home}-data" / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))

        # The decoder both runs attribute: trained once on the old corpus, outside the clock.
        write("seed", "old.jsonl", old)
        seed_cfg = Config.model_validate({"home": str(root / "seed"), "dataset": {"path": str(root / "seed-data")}})
        tiny = Path(teacher_stages.run_base_model(seed_cfg).metadata["path"])
        shutil.copytree(tiny, root / "lm")

        write("inc", "old.jsonl", old)
        teacher_stages.run_base_model(config("inc"))
        stages(config("inc"))
        write("inc", "new.jsonl", new)
        incremental = stages(config("inc"))

        write("full", "old.jsonl", old)
        write("full", "new.jsonl", new)
        teacher_stages.run_base_model(config("full"))
        full = stages(config("full"))

    total_full, total_inc = sum(full.values()), sum(incremental.values())
    print(f"\n{args.n} samples + {n_new} new ({args.new_fraction:.0%}); seconds per stage")
    print(f"{'stage':<22}{'full':>10}{'incremental':>14}")
    for stage in full:
        print(f"{stage:<22}{full[stage]:>10.2f}{incremental[stage]:>14.2f}")
    print(f"{'total':<22}{total_full:>10.2f}{total_inc:>14.2f}   incremental / full = {total_inc / total_full:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"n_old": args.n, "n_new": n_new, "full_s": total_full, "incremental_s": total_inc,
                                               "per_stage": {"full": full, "incremental": incremental}}, indent=2))


if __name__ == "__main__":
    main()
