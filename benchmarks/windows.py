"""Does scoring a sample by its best token window find planted behaviours in long passages?

    python benchmarks/windows.py --corpus DIR [--n 3000] [--window 32] [--stride 16] [--json PATH]

The planted corpus of ``benchmarks/planted.py`` (whole real passages, a verbatim and a paraphrased
behaviour, 30 samples each). ``base_model`` runs as a user runs it (the tiny decoder, its three
checkpoints and their LoRA warm-ups). Then, with the default teacher's extractors (LoRA + Adam
pool rows, plain probe gradients, CountSketch 2,048 per checkpoint), recall@30 of each probe is
measured two ways: one row per sample (what the store holds), and one row per token window of
``--window`` tokens every ``--stride``, a sample scored by its best window. A planted sentence is
a small part of a long passage; its gradient is diluted by the rest of the passage in the whole
row, not in its own window. Not a pipeline run past the base model: the engine's functions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.planted import PER_BEHAVIOUR, PROBES, K, planted_rows, provenance, real_passages, write_inputs  # noqa: E402


def windows(ids: list[int], size: int, stride: int, bos: int) -> list[list[int]]:
    """Token windows of a BOS-led sample, each led by BOS again (so its first token is predicted)."""
    body = ids[1:]
    starts = range(0, max(len(body) - size, 0) + 1, stride)
    out = [[bos, *body[s : s + size]] for s in starts]
    if len(body) > size and (len(body) - size) % stride:
        out.append([bos, *body[-size:]])
    return [w for w in out if len(w) >= 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--work", type=Path, default=Path("/tmp/windows-bench"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from influcoder_dagster.app.runner import failure_messages, materialize
    from influcoder_dagster.core.config import load_config
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.core.quiet import quiet_libraries
    from influcoder_dagster.data.tokens import Encoded, tokenize_for_loss
    from influcoder_dagster.teacher.base_model import base_model_record
    from influcoder_dagster.teacher.checkpoints import checkpoint_extractor, load_checkpoint_decoders
    from influcoder_dagster.teacher.gradients import compute_gradients, projection_for
    from influcoder_dagster.teacher.scoring import full_scores

    quiet_libraries()
    measured, started = provenance("benchmarks/windows.py"), time.perf_counter()
    texts = real_passages(args.corpus, args.n)
    config = write_inputs(args.work, texts, [])
    cfg = load_config(config)
    runs = materialize(str(config), cfg.home_path, ["base_model"])
    if not runs.success:
        sys.exit("\n".join(failure_messages(runs)))
    plants = planted_rows(texts)
    corpus = texts + [r["text"] for r in plants]
    labels = np.array([""] * len(texts) + [r["planted"] for r in plants])
    decoders = load_checkpoint_decoders(base_model_record(Paths(cfg.home_path)))
    model, tok, _ = decoders[-1]
    spec = projection_for(model, "countsketch", cfg.projection.dim, cfg.projection.seed, target="lora")
    pool, query = checkpoint_extractor(decoders, spec, adam=True), checkpoint_extractor(decoders, spec)
    samples = tokenize_for_loss(tok, corpus, cfg.model.max_length)
    probes = compute_gradients(query, tokenize_for_loss(tok, [f"{t} {c}" for t, c in PROBES.values()], cfg.model.max_length,
                                                        [t for t, _ in PROBES.values()]), 16).numpy()
    whole = full_scores(probes, compute_gradients(pool, samples, 16).numpy())
    owner, parts = [], []
    for i, s in enumerate(samples):
        for w in windows(s.input_ids, args.window, args.stride, tok.bos_token_id):
            owner.append(i)
            parts.append(Encoded(w))
    per_window = full_scores(probes, compute_gradients(pool, parts, 16).numpy())
    best = np.full((len(probes), len(samples)), -np.inf, dtype=np.float32)
    np.maximum.at(best.T, np.array(owner), per_window.T)

    def recall(scores: np.ndarray) -> dict[str, float]:
        return {b: round(float(np.mean(labels[np.argsort(-scores[i])[:K]] == b)) * K / PER_BEHAVIOUR, 3) for i, b in enumerate(PROBES)}

    result = {**measured, "n_real": len(texts), "n_planted": len(corpus) - len(texts), "window": args.window, "stride": args.stride,
              "windows": len(parts), "mean_tokens": round(float(np.mean([len(s.input_ids) for s in samples])), 1),
              "whole_sample": recall(whole), "best_window": recall(best), "wall_s": round(time.perf_counter() - started, 1)}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
