"""Per-sample gradient extraction throughput: ours vs a plain training step vs a naive per-sample loop.

    python benchmarks/teacher.py [--home influcoder_home] [--n 256] [--dim 2048] [--json PATH]

Same model (the demo's base model with --home, else a 4-layer GPT-2 built here), same texts, same
parameter set (the weights of every Linear/Conv1D but the LM head) and the same projection dim:

* ``ours``: hook-based batched extraction with the LoGra two-sided projection (what the
  ``projected_gradients`` asset runs);
* ``train_step``: forward + backward of a batch with weight gradients, no per-sample work — the
  physical limit;
* ``per_sample_loop``: batch size 1, full weight gradients, then the same projection.

* the peers TRAK, LogIX, Kronfluence and dattri (``benchmarks/peers/``), each extracting the same
  samples' projected gradients its own way at about the same dim; install them first with
  ``bash benchmarks/peers/install.sh`` (into ``benchmarks/.peers``, not the project's environment);
  a peer that fails gets a row saying why.

``spearman`` is the mean per-query Spearman of each method's cosine scores against the exact
(unprojected) gradient cosine on a subset. Every method runs in its own process for its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.rankings import peak_rss_mb, run_in_process  # noqa: E402


def load(home: str | None, model_dir: str | None = None):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from influcoder_dagster.data.demo import docstring_passages
    from influcoder_dagster.teacher.decoder import load_decoder, train_tokenizer

    texts = docstring_passages(400)
    if model_dir:
        return (*load_decoder(model_dir), texts)
    if home:
        from influcoder_dagster.core.paths import Paths
        from influcoder_dagster.teacher.base_model import base_model_record

        return (*load_decoder(base_model_record(Paths(Path(home)))["path"]), texts)
    tok = train_tokenizer(texts, 2048)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=256, n_layer=4, n_head=4,
                                       attn_implementation="eager", bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    return model.eval(), tok, texts


def exact_and_projected(model, projector, enc, names, with_exact: bool):
    """Plain autograd, one sample at a time: full gradients, then the projection."""
    import torch
    from transformers.pytorch_utils import Conv1D

    modules = dict(model.named_modules())
    for p in model.parameters():
        p.requires_grad_(True)
    exact, projected = [], []
    for e in enc:
        model.zero_grad(set_to_none=True)
        ids = torch.tensor([e.input_ids])
        model(input_ids=ids, labels=ids).loss.backward()
        grads = [(modules[n].weight.grad.T if isinstance(modules[n], Conv1D) else modules[n].weight.grad) for n in names]
        projected.append(torch.cat([projector.project_full(n, g) for n, g in zip(names, grads, strict=True)]))
        if with_exact:
            exact.append(torch.cat([g.flatten() for g in grads]))
    return (torch.stack(exact).numpy() if with_exact else None), torch.stack(projected).numpy()


def method(name: str, home: str | None, model_dir: str | None, n: int, dim: int, out: mp.Queue) -> None:
    try:
        out.put(_method(name, home, model_dir, n, dim))
    except Exception as exc:  # a peer that breaks gets a row saying why, not a dead benchmark
        out.put({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"})


def _method(name: str, home: str | None, model_dir: str | None, n: int, dim: int) -> dict:
    import importlib

    from benchmarks import peers
    from influcoder_dagster.data.tokens import length_sorted_batches, pad_batch, tokenize_for_loss
    from influcoder_dagster.teacher.gradients import GradientExtractor, compute_gradients, projection_for

    model, tok, texts = load(home, model_dir)
    enc = tokenize_for_loss(tok, texts[:n], 128)
    if name.startswith("ours@"):  # ours at another dim: the comparison at equal fidelity
        name, dim = "ours", int(name.split("@")[1])
    spec = projection_for(model, "logra", dim, seed=0)
    start = time.perf_counter()
    if name == "ours":
        grads = compute_gradients(GradientExtractor(model, spec, tok.pad_token_id), enc, 16).numpy()
    elif name == "train_step":
        model.zero_grad()
        for batch in length_sorted_batches([len(e.input_ids) for e in enc], 16):
            ids, mask = pad_batch([enc[i].input_ids for i in batch], tok.pad_token_id)
            model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
        grads = None
    elif name == "per_sample_loop":
        from influcoder_dagster.teacher.projection import Projector

        _, grads = exact_and_projected(model, Projector(spec), enc, [m.name for m in spec.modules], with_exact=False)
    else:
        peers.enable()
        peer = importlib.import_module(f"benchmarks.peers.{name}")
        start = time.perf_counter()  # the peer library's import is not part of its throughput
        grads = peer.extract(model, tok, enc, spec.dim, 16)
    seconds = time.perf_counter() - start
    result = {"samples_per_s": n / seconds, "peak_rss_mb": peak_rss_mb()}
    if grads is not None:
        result["grads"] = np.asarray(grads[:48], dtype=np.float32)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="use the base model of this storage root (after `influcoder demo`)")
    parser.add_argument("--model", help="a Hugging Face causal-LM folder (e.g. from `influcoder import-gguf`)")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--peers", nargs="*", help="which peers to run (default: all)")
    parser.add_argument("--ours-dims", nargs="*", type=int, default=[], help="extra rows of ours at these dims (to match a peer's fidelity)")
    parser.add_argument("--json")
    args = parser.parse_args()

    from influcoder_dagster.data.tokens import tokenize_for_loss
    from influcoder_dagster.student.metrics import per_query_spearman
    from influcoder_dagster.teacher.gradients import projection_for
    from influcoder_dagster.teacher.projection import Projector

    model, tok, texts = load(args.home, args.model)
    spec = projection_for(model, "logra", args.dim, seed=0)
    n_params = sum(m.d_in * m.d_out for m in spec.modules)
    truth = None
    n_exact = min(48, args.n)
    if n_params * n_exact * 4 < 4 * 2**30:  # the exact gradients must fit in memory
        exact, _ = exact_and_projected(model, Projector(spec), tokenize_for_loss(tok, texts[:n_exact], 128), [m.name for m in spec.modules], True)
        unit = exact / np.linalg.norm(exact, axis=1, keepdims=True)
        truth = unit[: min(16, n_exact)] @ unit.T
    del model

    from benchmarks.peers import NAMES

    rows = {name: run_in_process(method, name, args.home, args.model, args.n, args.dim)
            for name in ("ours", *(f"ours@{d}" for d in args.ours_dims), "train_step", "per_sample_loop",
                         *(NAMES if args.peers is None else args.peers))}
    for r in rows.values():
        grads = r.pop("grads", None)
        if grads is not None and truth is not None:
            gu = grads / np.linalg.norm(grads, axis=1, keepdims=True)
            r["spearman"] = float(per_query_spearman(truth, gu[: len(truth)] @ gu[:n_exact].T).mean())
    limit = rows["train_step"]["samples_per_s"]
    print(f"\n{args.n} samples, {len(spec.modules)} layers ({n_params:,} weights), projection dim {spec.dim}")
    print(f"{'method':<18}{'samples/s':>12}{'vs train step':>15}{'spearman':>10}{'peak RSS MB':>13}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<18}  {r['error']}")
            continue
        sp = f"{r['spearman']:.3f}" if "spearman" in r else "—"
        print(f"{name:<18}{r['samples_per_s']:>12.1f}{r['samples_per_s'] / limit:>14.2f}x{sp:>10}{r['peak_rss_mb']:>13,.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"dim": spec.dim, "ours": rows["ours"], "train_step": {"samples_per_s": limit},
                                               "per_sample_loop": rows["per_sample_loop"],
                                               "ours_at_dim": {p.split("@")[1]: rows[p] for p in rows if p.startswith("ours@")},
                                               "peers": {p: rows[p] for p in rows if p in NAMES}}, indent=2))


if __name__ == "__main__":
    main()
