"""Per-sample gradient extraction: fidelity against throughput, ours and the peers, over a sweep of dims.

    python benchmarks/teacher.py [--target weights|head] [--model DIR] [--config TOML] [--n 256]
        [--dims 512 2048] [--ours-dims 8192] [--peers ...] [--json PATH]

**Every method on the same parameters, at each dim** (``--target``): the weights of every
Linear/Conv1D but the LM head (``weights``, of ``--model``, a Hugging Face causal-LM folder, or by
default a random-init 4-layer GPT-2 built here, on the demo's docstrings), or the output head alone
(``head``: the parameters the default teacher attributes, of the final checkpoint of ``--config``'s
base model, on that home's own samples; the head is untied from the input embeddings, so every
method differentiates the head's use only, as ours does). Methods:

* ``ours:countsketch`` (the default projection kind) and ``ours:logra``: the engine's hook-based
  batched extraction;
* the peers TRAK, LogIX, Kronfluence and dattri (``benchmarks/peers/``, installed with
  ``bash benchmarks/peers/install.sh``), each projecting the same gradients its own way. Every
  method's projection (matrices, hooks, adapters) is built before the timer starts;
* ``train_step``: forward + backward of a batch with the tracked weights' gradients, no per-sample
  work (the physical limit), and ``per_sample_loop`` (batch size 1, full gradients, then the projection).

**The configured teacher** (``--config``: a storage root's ``influcoder.toml``, e.g. one
``benchmarks/fidelity.py`` wrote with the defaults): what the ``projected_gradients`` asset stores
for it, on each checkpoint of its base model (the default: the output head, whitened by the logits'
Fisher diagonal, CountSketch at each dim per checkpoint, blocks concatenated; a LoRA teacher's pool
rows in its warm-ups' Adam direction), queries as user queries are taken. Its exact counterpart is
the same extraction with the sketch left out.

Fidelity (``spearman``) is the mean per-query Spearman of a method's cosines against the exact ones,
16 queries against 48 samples. Samples/s counts the extraction only; every method runs in its own
process, so each peak RSS is its own. The JSON holds one section per ``--target``, each with the
commit and command that measured it; a run replaces its own target's section.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.planted import provenance  # noqa: E402
from benchmarks.rankings import peak_rss_mb, run_in_process  # noqa: E402

N_QUERIES, N_EXACT = 16, 48


@dataclass(frozen=True)
class Setup:
    """What every method differentiates: ``target``'s parameters of ``model_dir`` (``head``: of
    ``config``'s final checkpoint), on the first ``n`` texts."""

    target: str
    model_dir: str | None
    config: str | None
    n: int


def load(setup: Setup) -> tuple[Any, Any, list[str]]:
    """(model, tokenizer, texts) of the setup; with the ``head`` target the head is untied."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from influcoder_dagster.data.demo import docstring_passages
    from influcoder_dagster.teacher.decoder import load_decoder, train_tokenizer

    if setup.target == "head":
        from influcoder_dagster.core.config import load_config
        from influcoder_dagster.teacher.checkpoints import checkpoints_of

        cfg = load_config(Path(setup.config))
        final = checkpoints_of(base_record(cfg))[-1]  # the final state only: the others are not differentiated here
        model, tok = load_decoder(final.path, final.adapter)
        head = model.get_output_embeddings()
        head.weight = torch.nn.Parameter(head.weight.detach().clone())  # its own gradient, not the embeddings'
        model.config.tie_word_embeddings = False
        return model, tok, home_texts(cfg, setup.n)
    texts = docstring_passages(max(400, setup.n))
    if setup.model_dir:
        return (*load_decoder(setup.model_dir), texts)
    tok = train_tokenizer(texts, 2048)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=256, n_layer=4, n_head=4,
                                       attn_implementation="eager", bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    return model.eval(), tok, texts


def base_record(cfg: Any) -> dict[str, Any]:
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.teacher.base_model import base_model_record

    return base_model_record(Paths(cfg.home_path))


def checkpoint_decoders(cfg: Any) -> list[Any]:
    from influcoder_dagster.teacher.checkpoints import load_checkpoint_decoders

    return load_checkpoint_decoders(base_record(cfg))


def home_texts(cfg: Any, n: int) -> list[str]:
    from influcoder_dagster.teacher.rankings_db import connect_readonly

    return [t for (t,) in connect_readonly(cfg.home_path).execute("SELECT text FROM samples ORDER BY sample_id LIMIT ?", [n]).fetchall()]


def tracked_names(model: Any, target: str) -> list[str]:
    from influcoder_dagster.teacher.gradients import trackable_modules

    return [name for name, _, _ in trackable_modules(model, target)]


def per_sample_rows(model, enc, names, project=lambda name, g: g.flatten()) -> np.ndarray:
    """Plain autograd, one sample at a time: each tracked weight's full (d_out, d_in) gradient,
    through ``project`` (default: none, the exact gradient)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    modules = dict(model.named_modules())
    for p in model.parameters():
        p.requires_grad_(True)
    rows = []
    for e in enc:
        model.zero_grad(set_to_none=True)
        ids = torch.tensor([e.input_ids])
        model(input_ids=ids, labels=ids).loss.backward()
        rows.append(torch.cat([project(n, modules[n].weight.grad.T if isinstance(modules[n], Conv1D) else modules[n].weight.grad)
                               for n in names]))
    return torch.stack(rows).numpy()


def fidelity(truth: np.ndarray, grads: np.ndarray) -> float:
    """Mean per-query Spearman of ``grads``' cosines (first 16 against the first 48) against ``truth``'s."""
    from influcoder_dagster.student.metrics import per_query_spearman

    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
    t, g = unit(truth[:N_EXACT]), unit(grads[:N_EXACT])
    return round(float(per_query_spearman(t[:N_QUERIES] @ t.T, g[:N_QUERIES] @ g.T).mean()), 4)


def weights_method(name: str, setup: Setup, dim: int, out: Any) -> None:
    try:
        out.put(_weights_method(name, setup, dim))
    except Exception as exc:  # a peer that breaks gets a row saying why, not a dead benchmark
        out.put({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"})


def _weights_method(name: str, setup: Setup, dim: int) -> dict:
    import importlib

    from benchmarks import peers
    from influcoder_dagster.data.tokens import length_sorted_batches, pad_batch, tokenize_for_loss
    from influcoder_dagster.teacher.gradients import GradientExtractor, compute_gradients, projection_for

    model, tok, texts = load(setup)
    enc = tokenize_for_loss(tok, texts[: setup.n], 128)
    if name.startswith("ours:"):
        spec = projection_for(model, name.split(":")[1], dim, seed=0, target=setup.target)
        extract = lambda e, b: compute_gradients(GradientExtractor(model, spec, tok.pad_token_id), e, b).numpy()  # noqa: E731
    elif name == "train_step":
        weights = {f"{n}.weight" for n in tracked_names(model, setup.target)}
        for n, p in model.named_parameters():
            p.requires_grad_(n in weights)

        def extract(e, b):
            model.zero_grad()
            for batch in length_sorted_batches([len(x.input_ids) for x in e], b):
                ids, mask = pad_batch([e[i].input_ids for i in batch], tok.pad_token_id)
                model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
    elif name == "per_sample_loop":
        from influcoder_dagster.teacher.projection import Projector

        spec = projection_for(model, "countsketch", dim, seed=0, target=setup.target)
        projector = Projector(spec)
        extract = lambda e, b: per_sample_rows(model, e, [m.name for m in spec.modules], projector.project_full)  # noqa: E731
    else:
        peers.enable()
        extract = importlib.import_module(f"benchmarks.peers.{name}").prepare(model, tok, dim, setup.target)
    start = time.perf_counter()
    grads = extract(enc, 16)
    seconds = time.perf_counter() - start
    result = {"samples_per_s": round(setup.n / seconds, 1), "peak_rss_mb": round(peak_rss_mb())}
    if grads is not None:
        result["grads"] = np.asarray(grads[:N_EXACT], dtype=np.float32)
        result["dim"] = int(np.asarray(grads).shape[1])
    return result


def configured_teacher(config: str, n: int, dim: int, out: Any) -> None:
    out.put(_configured_teacher(config, n, dim))


def _configured_teacher(config: str, n: int, dim: int) -> dict:
    """The store's rows for ``n`` of the home's samples at ``dim`` per checkpoint, timed, and their
    fidelity against the same extraction without the sketch."""
    from influcoder_dagster.core.config import load_config
    from influcoder_dagster.data.tokens import length_sorted_batches, tokenize_for_loss
    from influcoder_dagster.student.metrics import per_query_spearman
    from influcoder_dagster.teacher.checkpoints import checkpoint_extractor
    from influcoder_dagster.teacher.gradients import compute_gradients, projection_for
    from influcoder_dagster.teacher.query_gradients import pool_extractor

    cfg = load_config(Path(config))
    p, decoders = cfg.projection, checkpoint_decoders(cfg)
    model, tok, _ = decoders[-1]
    enc = tokenize_for_loss(tok, home_texts(cfg, n), cfg.model.max_length)
    spec = projection_for(model, p.kind, dim, p.seed, p.normalize_modules, p.target)
    pool, query = pool_extractor(decoders, spec, cfg), checkpoint_extractor(decoders, spec)
    start = time.perf_counter()
    rows = compute_gradients(pool, enc, 16).numpy()
    seconds = time.perf_counter() - start
    queries = compute_gradients(query, enc[:N_QUERIES], 16).numpy()

    def exact(extractor, samples) -> np.ndarray:  # the same extraction with the sketch left out
        for e in extractor.extractors:
            e.projector.sketch = lambda name, flat: flat
        out = [None] * len(samples)
        for idx in length_sorted_batches([len(s.input_ids) for s in samples], 16):
            for i, row in zip(idx, extractor.batch([samples[i] for i in idx]).numpy(), strict=True):
                out[i] = row
        return np.stack(out)

    truth_rows, truth_queries = exact(pool, enc[:N_EXACT]), exact(query, enc[:N_QUERIES])
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
    rho = per_query_spearman(unit(truth_queries) @ unit(truth_rows).T, unit(queries) @ unit(rows[:N_EXACT]).T).mean()
    return {"samples_per_s": round(n / seconds, 1), "spearman": round(float(rho), 4), "dim": int(rows.shape[1]),
            "exact_dim": int(truth_rows.shape[1]), "checkpoints": len(decoders), "target": p.target,
            "logit_fisher": p.whitens_head, "adam_precondition": p.adam_precondition, "peak_rss_mb": round(peak_rss_mb())}


def method_rows(setup: Setup, dims: list[int], ours_dims: list[int], peer_names: list[str]) -> dict[str, dict]:
    """Every method at each dim (the peers at ``dims`` only), with its fidelity against the exact gradients."""
    from influcoder_dagster.data.tokens import tokenize_for_loss

    model, tok, texts = load(setup)
    names = tracked_names(model, setup.target)
    truth = per_sample_rows(model, tokenize_for_loss(tok, texts[:N_EXACT], 128), names)
    del model
    rows: dict[str, dict] = {"train_step": run_in_process(weights_method, "train_step", setup, dims[0])}
    limit = rows["train_step"]["samples_per_s"]
    for dim in [*dims, *ours_dims]:
        for name in ("ours:countsketch", "ours:logra", *(peer_names if dim in dims else ())):
            r = run_in_process(weights_method, name, setup, dim)
            if "grads" in r:
                r["spearman"] = fidelity(truth, r.pop("grads"))
                r["vs_train_step"] = round(r["samples_per_s"] / limit, 2)
            rows[f"{name}@{dim}"] = r
            print(f"{name}@{dim}", json.dumps(r), flush=True)
    loop = run_in_process(weights_method, "per_sample_loop", setup, dims[0])
    loop.pop("grads", None)
    rows["per_sample_loop"] = {**loop, "vs_train_step": round(loop["samples_per_s"] / limit, 2)}
    return {"tracked_modules": len(names), "tracked_weights": int(truth.shape[1]), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("weights", "head"), default="weights", help="the parameters every method differentiates")
    parser.add_argument("--model", help="weights: a Hugging Face causal-LM folder (default: a random 4-layer GPT-2)")
    parser.add_argument("--config", help="a storage root's influcoder.toml: its configured teacher's rows (and the head target's model)")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--dims", nargs="*", type=int, default=[512, 2048])
    parser.add_argument("--ours-dims", nargs="*", type=int, default=[8192],
                        help="more dims for ours only (the dense peers regenerate their matrix per batch there: hours on CPU)")
    parser.add_argument("--peers", nargs="*", help="which peers to run (default: all)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.n < N_EXACT:
        parser.error(f"--n must be at least {N_EXACT} (the samples fidelity is measured on)")
    if args.target == "head" and not args.config:
        parser.error("--target head needs --config (the home whose base model's head is attributed)")

    from benchmarks.peers import NAMES

    setup = Setup(args.target, args.model, args.config, args.n)
    section = {**provenance("benchmarks/teacher.py"), "n": args.n,
               **method_rows(setup, args.dims, args.ours_dims, args.peers if args.peers is not None else list(NAMES))}
    if args.config:
        section["configured_teacher"] = {str(d): run_in_process(configured_teacher, args.config, args.n, d)
                                         for d in [*args.dims, *args.ours_dims]}
        print("configured teacher", json.dumps(section["configured_teacher"]), flush=True)
    print(json.dumps(section, indent=1))
    if args.json:
        old = json.loads(args.json.read_text()) if args.json.exists() else {}
        args.json.write_text(json.dumps({**old, args.target: section}, indent=1))


if __name__ == "__main__":
    main()
