"""Which training states find planted samples: recall@30 per checkpoint and for their combinations.

    python benchmarks/checkpoints.py --corpus DIR [--n 3000] [--short] [--json PATH]

The planted corpus of ``benchmarks/planted.py`` (real passages, a verbatim and a paraphrased
behaviour, 30 samples each). The tiny decoder is trained once with the default recipe, keeping its
states after epochs 1, 2, 4 and 8. At each state, every sample's projected gradient is taken two
ways: ``weights`` (every Linear weight, CountSketch 2,048, plain) and ``lora_adam`` (the default
teacher: a 100-step LoRA warm-up on that state, the pool rows in its Adam direction). The probes'
plain gradients are scored against them by cosine, and recall@30 is reported per state and for
sums of the states' cosines: equal weights, and LESS's weights (each epoch's mean learning rate
under the one-cycle schedule). The loss of each probe's continuation is reported per state, to show
when the behaviour was memorized. Not a pipeline run: the engine's own functions, on one corpus.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.planted import PER_BEHAVIOUR, PROBES, K, append_run, planted_rows, provenance, real_passages  # noqa: E402

EPOCHS = (1, 2, 4, 8)
SUBSETS = [(1, 2, 4, 8), (2, 4, 8), (1, 2, 4), (4, 8), (8,)]


def epoch_lrs(cfg, steps_per_epoch: int) -> dict[int, float]:
    """Each epoch's mean learning rate under the tiny decoder's one-cycle schedule."""
    import torch

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.1)
    lrs = []
    for _ in range(cfg.epochs * steps_per_epoch):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return {e: float(np.mean(lrs[(e - 1) * steps_per_epoch : e * steps_per_epoch])) for e in range(1, cfg.epochs + 1)}


def cosines(decoder: Path, samples, probes, variant: str, texts: list[str], cfg) -> np.ndarray:
    from influcoder_dagster.teacher.decoder import load_decoder
    from influcoder_dagster.teacher.gradients import GradientExtractor, compute_gradients, projection_for
    from influcoder_dagster.teacher.lora import LoraRecipe, adam_state, warm_up

    if variant == "weights":
        model, tok = load_decoder(decoder)
        spec = projection_for(model, "countsketch", 2048, 0)
        pool = query = GradientExtractor(model, spec, tok.pad_token_id)
    else:
        adapter = decoder.parent / f"{decoder.name}-lora"
        if not (adapter / "adapter_config.json").exists():
            model, tok = load_decoder(decoder)
            warm_up(model, tok, texts, LoraRecipe(8, 100, 2e-4, 16, cfg.max_length, 0), adapter, progress=False)
        model, tok = load_decoder(decoder, adapter)
        spec = projection_for(model, "countsketch", 2048, 0, target="lora")
        pool = GradientExtractor(model, spec, tok.pad_token_id, adam_state(adapter, False))
        query = GradientExtractor(model, spec, tok.pad_token_id)
    g, q = compute_gradients(pool, samples, 16).numpy(), compute_gradients(query, probes, 16).numpy()
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
    return unit(q) @ unit(g).T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--short", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/checkpoints-bench"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from influcoder_dagster.core.config import ModelConfig
    from influcoder_dagster.core.quiet import quiet_libraries
    from influcoder_dagster.data.tokens import Encoded, length_sorted_batches, tokenize_for_loss
    from influcoder_dagster.teacher.decoder import epochs_folder, load_decoder, train_tiny_decoder

    quiet_libraries()
    texts = real_passages(args.corpus, args.n, short=args.short)
    plants = planted_rows(texts)
    corpus = texts + [r["text"] for r in plants]
    labels = np.array([""] * len(texts) + [r["planted"] for r in plants])
    cfg = ModelConfig()
    final = args.work / "tiny"
    if not (final / "config.json").exists():
        train_tiny_decoder(corpus, cfg, final, keep_epochs=EPOCHS)
    folders = {e: epochs_folder(final) / f"epoch-{e}" for e in EPOCHS if e < cfg.epochs} | {cfg.epochs: final}
    _, tok = load_decoder(final)
    samples = [Encoded(e.input_ids) for e in tokenize_for_loss(tok, corpus, cfg.max_length)]
    probes = tokenize_for_loss(tok, [f"{t} {c}" for t, c in PROBES.values()], cfg.max_length, [t for t, _ in PROBES.values()])
    lrs = epoch_lrs(cfg, len(list(length_sorted_batches([len(s.input_ids) for s in samples], cfg.batch_size))))

    def recall(scores: np.ndarray) -> dict[str, float]:
        return {b: round(float(np.mean(labels[np.argsort(-scores[i])[:K]] == b)) * K / PER_BEHAVIOUR, 3) for i, b in enumerate(PROBES)}

    out: dict = {"n_real": len(texts), "n_planted": len(plants), "short": args.short, "epoch_lr": lrs, "per_checkpoint": {}, "sums": {}}
    for variant in ("weights", "lora_adam"):
        cos = {e: cosines(folders[e], samples, probes, variant, corpus, cfg) for e in EPOCHS}
        out["per_checkpoint"][variant] = {e: recall(c) for e, c in cos.items()}
        out["sums"][variant] = {f"{'+'.join(map(str, s))} {w}": recall(sum((lrs[e] if w == 'lr' else 1.0) * cos[e] for e in s))
                                for s in SUBSETS for w in ("equal", "lr")}
        print(variant, json.dumps(out["per_checkpoint"][variant]), json.dumps(out["sums"][variant]), flush=True)
    out.update(provenance("benchmarks/checkpoints.py"))
    print(json.dumps(out, indent=1))
    if args.json:
        append_run(args.json, out)


if __name__ == "__main__":
    main()
