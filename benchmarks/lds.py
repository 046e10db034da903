"""Ground truth: do the rankings predict what retraining does? LDS and a removal test, against peers.

    python benchmarks/lds.py --corpus DIR [--n 1000] [--subsets 32] [--queries 48] [--work DIR] [--json PATH]

**Corpus.** The first ``--n`` distinct short passages of ``benchmarks/real_corpus.py`` (man pages and installed
packages' docstrings, each cut to its first sentence: nobody on the team wrote them), plus a planted
behaviour that is not lexically trivial (``behaviour.py``): 30 samples where one of five phrasings
of a trigger is followed by one of four phrasings of a continuation, and 30 look-alikes (the
trigger's phrasings with ordinary continuations, the continuation's words without the trigger).

**Methods.** The pipeline runs on it as a user runs it (default configuration, every asset). Each
method then scores every training sample against the queries: the default teacher (its store rows
and query gradients), the teacher preconditioned with the store's projected Fisher, the student
(the served index's encoder path), the re-rank (top 100 recalled, exact teacher scores; the rest
score 0), BM25 (``bm25s``), the untrained MiniLM, random, and the peers of ``benchmarks/peers/``
on the tiny decoder's final weights at the store's row width (``peer:NAME``). ``teacher:VARIANT``
rows are teachers that are not the default, from the same decoder states (``VARIANTS``; the LoRA
ones read the adapters of ``WORK/lora_adam``): what the ground truth would say if the default
changed. ``teacher:seeds3`` sums the default teacher's scores
over decoders trained from three seeds (TRAK's ensemble; the two extra homes are built by the
pipeline under ``WORK/seed1`` and ``WORK/seed2``); ``HOME_VARIANTS`` are default teachers of a
home built by the pipeline with settings changed (``teacher:lora_adam``: LESS's LoRA + Adam
teacher, the default until ``c75bf43``; ``teacher:checkpoints4``: the states after epochs 1, 2, 4
and 8), under ``WORK/NAME``.

**LDS.** The training the scores explain is the tiny decoder's own training, from scratch (the
behaviour and the corpus are learned there; the LoRA warm-up only sets the teacher's view). It is
rerun with the default recipe (one seed) on ``--subsets`` seeded random halves of the training rows
(``retrain.py``, cached), and each of ``--queries`` held-out passages' loss is measured. A method's
LDS is the mean over queries of the Spearman between each subset's sum of the query's scores and
the negative loss; the interval is a 95 % bootstrap over queries. ``lds_top100`` is the same with each
query's scores cut to its top 100 (the rest 0), for every method alike: what a ranking says.

**Removal.** From three unseen outputs that show the behaviour, each method's summed scores give an
AUPRC of finding the 30 planted samples, and its top 30 are removed and the decoder retrained: the
share of the behaviour undone is (loss after removal - baseline) / (loss of a model never shown the
plants - baseline), where the baseline is the mean loss after removing 30 random samples (5 seeds:
one retrain's loss moves with any change of its data, so the full model is no baseline).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.behaviour import OUTPUTS, planted_behaviour  # noqa: E402
from benchmarks.fidelity import STAGES  # noqa: E402
from benchmarks.planted import provenance, real_passages  # noqa: E402
from benchmarks.retrain import Retrainer  # noqa: E402

PEERS = ("trak", "logix", "kronfluence", "dattri")
RERANK = 100
RANDOM_REMOVALS = 5


def write_config(work: Path, corpus: list[dict[str, Any]]) -> Path:
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus), encoding="utf-8")
    config = work / "influcoder.toml"
    config.write_text(f'home = "{work / "home"}"\n[dataset]\npath = "{data}"\n')
    return config


def run_pipeline(config: Path, stages: int = len(STAGES)) -> dict[str, float]:
    """The first ``stages`` of the pipeline's stages (all by default) with the configuration's
    settings; the seconds of each."""
    from influcoder_dagster.app.runner import failure_messages, materialize
    from influcoder_dagster.core.config import load_config

    home, seconds = load_config(config).home_path, {}
    for name, assets in list(STAGES.items())[:stages]:
        start = time.perf_counter()
        runs = materialize(str(config), home, assets)
        if not runs.success:
            sys.exit("\n".join(failure_messages(runs)))
        seconds[name] = round(time.perf_counter() - start, 1)
    return seconds


def sample_order(home: Path, n: int) -> dict[int, int]:
    """sample_id -> the row of the training list (each JSONL row carries its position ``i``)."""
    from influcoder_dagster.teacher.rankings_db import connect_readonly

    rows = connect_readonly(home).execute("SELECT sample_id, CAST(json_extract(meta, '$.i') AS INTEGER) FROM samples").fetchall()
    order = {int(s): int(i) for s, i in rows}
    if sorted(order.values()) != list(range(n)):
        raise RuntimeError(f"the pipeline kept {len(order)} of {n} training rows")
    return order


def teacher_scores(home: Path, order: dict[int, int], texts: list[str], prompts: list[str | None], fisher_damping: float | None) -> np.ndarray:
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.teacher.base_model import base_model_record
    from influcoder_dagster.teacher.projection import ProjectionSpec
    from influcoder_dagster.teacher.query_gradients import QueryGradients
    from influcoder_dagster.teacher.scoring import fisher, full_scores, precondition
    from influcoder_dagster.teacher.store import open_store

    paths = Paths(home)
    store = open_store(paths)
    ids, rows = zip(*store.iter_blocks(4096), strict=True)
    ids, rows = np.concatenate(ids), np.concatenate(rows).astype(np.float32)
    queries = QueryGradients(base_model_record(paths), ProjectionSpec.from_json(store.manifest["projection"]), 128).of_texts(texts, prompts)
    if fisher_damping is not None:
        queries = precondition(queries, fisher([(ids, rows)], store.dim), fisher_damping)  # the rows already read
    return aligned(full_scores(queries, rows), ids, order)


VARIANTS = {  # name -> (target, Adam direction for pool rows, checkpoints: all or the final one, dim per checkpoint, score)
    "teacher:plain": ("lora", False, "all", 2048, "cosine"), "teacher:final": ("lora", True, "final", 2048, "cosine"),
    "teacher:weights": ("weights", False, "all", 2048, "cosine"), "teacher:weights_final": ("weights", False, "final", 2048, "cosine"),
    "teacher:dim8192": ("lora", True, "all", 8192, "cosine"), "teacher:dot": ("lora", True, "all", 2048, "dot"),
    "teacher:weights_dot": ("weights", False, "all", 2048, "dot"),
    "teacher:weights_head": ("weights+head", False, "all", 2048, "cosine"), "teacher:head": ("head", False, "all", 2048, "cosine"),
    "teacher:head_dim8192": ("head", False, "all", 8192, "cosine"), "teacher:head_final": ("head", False, "final", 2048, "cosine"),
    "teacher:head_logit_fisher": ("head", False, "all", 2048, "logit_fisher"),
    "teacher:head_logit_fisher_dim8192": ("head", False, "all", 8192, "logit_fisher"),
}
# targets: "lora" (the adapters), "weights" (every Linear/Conv1D but the output head), "weights+head" (and the
# output head, whose gradient sum_t (p_t - y_t) h_t^T says which tokens a sample teaches), "head" (the output head only).
# scores: "cosine", "dot", or "logit_fisher" (cosine of rows whitened by the diagonal of the logits' Fisher over the
# training rows, ``teacher.logit_fisher``, as ``projection.logit_fisher`` does)

SEED_ENSEMBLES = {"teacher:seeds3": 3}  # name -> decoders trained from that many seeds, the default teacher on each
LORA_ADAM = '[projection]\ntarget = "lora"\nadam_precondition = true\n'  # LESS's teacher, the default until c75bf43
HOME_VARIANTS = {"teacher:lora_adam": LORA_ADAM, "teacher:checkpoints4": "[projection]\ncheckpoints = 4\n"}  # name -> its home's settings


def variant_scores(home: Path, corpus: list[str], texts: list[str], prompts: list[str | None], variant: str) -> np.ndarray:
    """A teacher that is not the default, from the same decoder states (and their LoRA warm-ups), by
    the engine's own extractors: what the ground truth would say if the default changed. Per
    checkpoint cosines are averaged (as the store's concatenated rows do) or raw dot products summed (TracIn)."""
    import torch

    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.data.tokens import tokenize_for_loss
    from influcoder_dagster.teacher.base_model import base_model_record
    from influcoder_dagster.teacher.checkpoints import checkpoints_of
    from influcoder_dagster.teacher.decoder import load_decoder
    from influcoder_dagster.teacher.gradients import GradientExtractor, compute_gradients
    from influcoder_dagster.teacher.logit_fisher import logit_fisher_sums, row_scale
    from influcoder_dagster.teacher.lora import adam_state
    from influcoder_dagster.teacher.projection import plan_projection
    from influcoder_dagster.teacher.scoring import full_scores

    target, adam, states, dim, score = VARIANTS[variant]
    if target == "lora":  # the adapters are warmed up in a home that attributes them
        home = other_home(home.parent, "lora_adam", LORA_ADAM)
    chosen = checkpoints_of(base_model_record(Paths(home)))
    total = np.zeros((len(texts), len(corpus)), dtype=np.float64)
    for c in chosen[-1:] if states == "final" else chosen:
        adapter = c.adapter if target == "lora" else None
        model, tok = load_decoder(c.path, adapter)
        spec = plan_projection("countsketch", dim, 0, tracked_modules(model, target))
        train = tokenize_for_loss(tok, corpus, 128)
        scale = {"lm_head": torch.from_numpy(row_scale(*logit_fisher_sums(model, train, tok.pad_token_id)))} if score == "logit_fisher" else None
        pool = GradientExtractor(model, spec, tok.pad_token_id, adam_state(Path(adapter), False) if adam and adapter else None, scale)
        rows = compute_gradients(pool, train, 16).numpy()
        query = GradientExtractor(model, spec, tok.pad_token_id, output_scale=scale)
        queries = compute_gradients(query, tokenize_for_loss(tok, texts, 128, prompts), 16).numpy()
        total += queries.astype(np.float64) @ rows.T if score == "dot" else full_scores(queries, rows)
    return total.astype(np.float32)


def tracked_modules(model: Any, target: str) -> list[tuple[str, int, int]]:
    """The ``(name, d_in, d_out)`` a variant's ``target`` projects."""
    from influcoder_dagster.teacher.gradients import trackable_modules

    if target == "weights+head":
        return trackable_modules(model, "weights") + trackable_modules(model, "head")
    return trackable_modules(model, target)


def other_home(work: Path, folder: str, setting: str) -> Path:
    """A pipeline home on the same data with one setting changed (TOML), its base model and store built once."""
    config = work / folder / "influcoder.toml"
    home = config.parent / "home"
    if not (config.parent / "pipeline.json").exists():
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(f'home = "{home}"\n[dataset]\npath = "{work / "data"}"\n{setting}')
        (config.parent / "pipeline.json").write_text(json.dumps(run_pipeline(config, stages=2)))
    return home


def seed_ensemble_scores(work: Path, n_rows: int, texts: list[str], prompts: list[str | None], seeds: int) -> np.ndarray:
    """The default teacher summed over tiny decoders trained from ``seeds`` seeds (seed 0 is the
    pipeline's own home), TRAK's ensemble: each further seed's decoder and store are built by the
    pipeline in ``WORK/seedS/home``, with only ``model.seed`` changed."""
    total = teacher_scores(work / "home", sample_order(work / "home", n_rows), texts, prompts, None).astype(np.float64)
    for seed in range(1, seeds):
        home = other_home(work, f"seed{seed}", f"[model]\nseed = {seed}\n")
        total += teacher_scores(home, sample_order(home, n_rows), texts, prompts, None)
    return total.astype(np.float32)


def aligned(scores: np.ndarray, ids: np.ndarray, order: dict[int, int], fill: float = 0.0) -> np.ndarray:
    """Columns of ``scores`` (one per sample id in ``ids``) put in training-list order; absent rows get ``fill``."""
    out = np.full((scores.shape[0], len(order)), fill, dtype=np.float32)
    keep = np.array([int(s) in order for s in ids])
    out[:, [order[int(s)] for s in ids[keep]]] = scores[:, keep]
    return out


def served_scores(home: Path, order: dict[int, int], texts: list[str], prompts: list[str | None], rerank: int) -> np.ndarray:
    """The served index's scores: the encoder path over every sample, or the re-rank's top ``rerank``."""
    from influcoder_dagster.serving.attribute import Attributor

    hits = Attributor(home).query(texts, k=rerank or len(order), rerank=rerank, prompts=prompts)
    out = np.zeros((len(texts), len(order)), dtype=np.float32)
    for q, row in enumerate(hits):
        for h in row:
            if h["sample_id"] in order:
                out[q, order[h["sample_id"]]] = h["score"]
    return out


def text_scores(kind: str, corpus: list[str], texts: list[str]) -> np.ndarray:
    if kind == "bm25":
        import bm25s

        bm25 = bm25s.BM25()
        bm25.index(bm25s.tokenize(corpus, show_progress=False), show_progress=False)
        return np.stack([bm25.get_scores(bm25s.tokenize(t, show_progress=False, return_ids=False)[0]) for t in texts])
    from sentence_transformers import SentenceTransformer

    from influcoder_dagster.student.encoder import default_encoder_path

    encoder = SentenceTransformer(default_encoder_path(), device="cpu", local_files_only=True)
    return encoder.encode(texts, normalize_embeddings=True) @ encoder.encode(corpus, normalize_embeddings=True, batch_size=64).T


def peer_scores(name: str, home: Path, corpus: list[str], texts: list[str], dim: int) -> np.ndarray:
    """A peer's projected gradients of the final tiny decoder's weights, scored by cosine (whole-text losses)."""
    import importlib

    from benchmarks import peers
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.data.tokens import tokenize_for_loss
    from influcoder_dagster.teacher.base_model import base_model_record
    from influcoder_dagster.teacher.decoder import load_decoder
    from influcoder_dagster.teacher.scoring import full_scores

    peers.enable()
    peer = importlib.import_module(f"benchmarks.peers.{name}")
    model, tok = load_decoder(base_model_record(Paths(home))["path"])
    enc = tokenize_for_loss(tok, corpus + texts, 128)
    grads = peer.prepare(model, tok, dim)(enc, 64)
    return full_scores(grads[len(corpus):], grads[: len(corpus)])


def lds(scores: np.ndarray, masks: np.ndarray, losses: np.ndarray, seed: int = 0, n_boot: int = 1000) -> tuple[float, list[float]]:
    """Mean over queries of Spearman(subset score sums, -loss), and its 95 % bootstrap interval over queries."""
    from scipy.stats import spearmanr

    predicted = masks.astype(np.float64) @ scores.T.astype(np.float64)  # (subsets, queries)
    per_query = np.array([spearmanr(predicted[:, q], -losses[:, q]).statistic for q in range(scores.shape[0])])
    per_query = np.nan_to_num(per_query)  # a constant prediction (a method that scores nothing) correlates 0
    rng = np.random.default_rng(seed)
    boot = [per_query[rng.integers(0, len(per_query), len(per_query))].mean() for _ in range(n_boot)]
    return round(float(per_query.mean()), 4), [round(float(np.percentile(boot, p)), 4) for p in (2.5, 97.5)]


def top_only(scores: np.ndarray, k: int) -> np.ndarray:
    """Each query's ``k`` highest scores kept, the rest 0: what a ranking of ``k`` results says."""
    out = np.zeros_like(scores)
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    np.put_along_axis(out, top, np.take_along_axis(scores, top, axis=1), axis=1)
    return out


def removal_share(loss: float, baseline: float, clean: float) -> float:
    """How much of the behaviour a removal undid: 0 = as removing k random samples (the baseline), 1 =
    as a model never shown the plants."""
    return round((loss - baseline) / (clean - baseline), 3)


def method_scores(name: str, home: Path, order: dict[int, int], corpus: list[str], texts: list[str],
                  prompts: list[str | None], dim: int) -> np.ndarray:
    if name in ("teacher", "teacher_fisher"):
        return teacher_scores(home, order, texts, prompts, 0.1 if name == "teacher_fisher" else None)
    if name in ("student", "rerank"):
        return served_scores(home, order, texts, prompts, RERANK if name == "rerank" else 0)
    if name in ("bm25", "untrained_minilm"):
        return text_scores(name, corpus, texts)
    if name in VARIANTS:
        return variant_scores(home, corpus, texts, prompts, name)
    if name in SEED_ENSEMBLES:
        return seed_ensemble_scores(home.parent, len(corpus), texts, prompts, SEED_ENSEMBLES[name])
    if name in HOME_VARIANTS:
        other = other_home(home.parent, name.removeprefix("teacher:"), HOME_VARIANTS[name])
        return teacher_scores(other, sample_order(other, len(corpus)), texts, prompts, None)
    if name == "random":
        return np.random.default_rng(0).standard_normal((len(texts), len(corpus))).astype(np.float32)
    return peer_scores(name.removeprefix("peer:"), home, corpus, texts, dim)


def method_dim(name: str, home: Path, store_dim: int) -> int | None:
    """Floats per sample a gradient method scores with (None for text methods)."""
    if name in SEED_ENSEMBLES:
        return store_dim * SEED_ENSEMBLES[name]
    if name in HOME_VARIANTS:
        from influcoder_dagster.core.paths import Paths
        from influcoder_dagster.teacher.store import open_store

        return open_store(Paths(other_home(home.parent, name.removeprefix("teacher:"), HOME_VARIANTS[name]))).dim
    if name in VARIANTS:
        _, _, states, per_state, _ = VARIANTS[name]
        from influcoder_dagster.core.config import ProjectionConfig

        return per_state if states == "final" else store_dim // ProjectionConfig().dim * per_state
    return store_dim if name.startswith(("teacher", "peer:", "rerank")) else None


def cached_scores(work: Path, name: str, compute) -> tuple[np.ndarray, float]:
    """A method's score matrix and the seconds it took, computed once per work folder."""
    path = work / "scores" / f"{name.replace(':', '_')}.npz"
    if path.exists():
        saved = np.load(path)
        return saved["scores"], float(saved["seconds"])
    start = time.perf_counter()
    scores = np.asarray(compute(), dtype=np.float32)
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, scores=scores, seconds=seconds)
    return scores, seconds


DEFAULT_RUNS = "-head-logit-fisher"  # planted.json's runs with the default teacher's settings (set explicitly)


def planted_summary() -> dict[str, Any]:
    """The default teacher's planted recall on real text, as ``benchmarks/planted.py`` last measured it
    (its own runs, commits and commands are in ``results/planted.json``)."""
    runs = [r for r in json.loads((ROOT / "benchmarks" / "results" / "planted.json").read_text()) if r["label"].endswith(DEFAULT_RUNS)]
    return {r["label"].removesuffix(DEFAULT_RUNS): {"verbatim_recall_at_30": round(r["teacher"]["verbatim"]["recall_at_30"], 3),
                                                  "paraphrased_recall_at_30": round(r["teacher"]["paraphrased"]["recall_at_30"], 3),
                                                  "corpus": f"{r['n_real']} real {'short ' if r['short'] else ''}passages + 60 planted",
                                                  "commit": r["commit"]} for r in runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--subsets", type=int, default=32)
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--queries", type=int, default=48)
    ap.add_argument("--methods", nargs="*", help="default: all")
    ap.add_argument("--work", type=Path, default=Path("/tmp/lds-bench"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from sklearn.metrics import average_precision_score

    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.core.quiet import quiet_libraries
    from influcoder_dagster.teacher.base_model import base_model_record
    from influcoder_dagster.teacher.store import open_store

    quiet_libraries()
    started, measured = time.perf_counter(), provenance("benchmarks/lds.py")
    wanted = args.n + args.queries  # distinct passages: the pipeline quarantines a repeated text
    real = list(dict.fromkeys(real_passages(args.corpus, 2 * wanted, short=True)))[:wanted]
    if len(real) < wanted:
        sys.exit(f"{args.corpus} holds {len(real)} distinct short passages among its first {2 * wanted}; --n + --queries asks {wanted}")
    rows = [{"text": t, "behaviour": ""} for t in real[: args.n]] + planted_behaviour(real[: args.n])
    rows = [{**r, "i": i} for i, r in enumerate(rows)]
    corpus, planted = [r["text"] for r in rows], np.array([r["behaviour"] == "planted" for r in rows])
    queries = real[args.n :]
    texts = queries + [f"{t} {c}" for t, c in OUTPUTS]
    prompts: list[str | None] = [None] * len(queries) + [t for t, _ in OUTPUTS]
    config = write_config(args.work, rows)
    home = args.work / "home"
    pipeline_s = run_pipeline(config) if not (args.work / "pipeline.json").exists() else json.loads((args.work / "pipeline.json").read_text())
    (args.work / "pipeline.json").write_text(json.dumps(pipeline_s))
    order = sample_order(home, len(rows))
    base, dim = base_model_record(Paths(home)), open_store(Paths(home)).dim
    retrainer = Retrainer(corpus, Path(base["path"]), texts, prompts, args.work / "retrains")

    rng = np.random.default_rng(0)
    masks = np.zeros((args.subsets, len(rows)), dtype=bool)
    for s in range(args.subsets):
        masks[s, rng.choice(len(rows), int(args.fraction * len(rows)), replace=False)] = True
    losses = np.stack([retrainer.losses(np.flatnonzero(m)) for m in masks])
    full = retrainer.losses(np.arange(len(rows)))
    clean = retrainer.losses(np.flatnonzero(~planted))
    behaviour = lambda loss: float(loss[len(queries):].mean())  # noqa: E731
    random_removals = [behaviour(retrainer.losses(np.setdiff1d(np.arange(len(rows)), np.random.default_rng(s).choice(
        len(rows), planted.sum(), replace=False)))) for s in range(RANDOM_REMOVALS)]
    baseline = float(np.mean(random_removals))
    print(f"retrains done ({time.perf_counter() - started:.0f} s)", flush=True)

    names = args.methods or ["teacher", "teacher_fisher", "student", "rerank", "bm25", "untrained_minilm", "random",
                             *(f"peer:{p}" for p in PEERS), *VARIANTS, *SEED_ENSEMBLES, *HOME_VARIANTS]
    methods: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            scores, seconds = cached_scores(args.work, name, lambda: method_scores(name, home, order, corpus, texts, prompts, dim))
        except Exception as exc:  # a peer that breaks gets a row saying why, not a dead benchmark
            methods[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}
            continue
        value, interval = lds(scores[: len(queries)], masks, losses[:, : len(queries)])
        value_top, interval_top = lds(top_only(scores[: len(queries)], RERANK), masks, losses[:, : len(queries)])
        evidence = scores[len(queries):].mean(0)
        top = np.argsort(-evidence, kind="stable")[: planted.sum()]
        removed = behaviour(retrainer.losses(np.setdiff1d(np.arange(len(rows)), top)))
        methods[name] = {"lds": value, "lds_ci": interval, f"lds_top{RERANK}": value_top, f"lds_top{RERANK}_ci": interval_top, "auprc": round(float(average_precision_score(planted, evidence)), 3),
                         "planted_in_top_k": int(planted[top].sum()), "removal_effect": removal_share(removed, baseline, behaviour(clean)),
                         "behaviour_loss_after_removal": round(removed, 3), "dim": method_dim(name, home, dim),
                         "seconds": round(seconds, 1)}
        print(name, json.dumps(methods[name]), flush=True)

    result = {**measured, "subsets": args.subsets, "fraction": args.fraction, "n_train": len(rows),
              "n_real": args.n, "n_queries": len(queries), "retraining": "tiny decoder from scratch, default recipe, one seed",
              "pipeline_s": pipeline_s, "methods": methods, "planted": planted_summary(),
              "removal": {"k": int(planted.sum()), "behaviour_loss_full": round(behaviour(full), 3), "behaviour_loss_clean": round(behaviour(clean), 3),
                          "behaviour_loss_random_removals": [round(r, 3) for r in random_removals],
                          "baseline": f"mean behaviour loss after removing k random samples ({RANDOM_REMOVALS} seeds)",
                          "planted": int(planted.sum()), "lookalikes": int(sum(r["behaviour"] == "lookalike" for r in rows))},
              "wall_s": round(time.perf_counter() - started, 1)}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
