"""Fidelity at real scale: does the encoder path reproduce the teacher on a real corpus?

    python benchmarks/real_corpus.py --out DATA --n 100000
    python benchmarks/fidelity.py --corpus DATA --work WORK --name real100k [--base-model DIR]
        [--first N [--short]] [--curve 1000 10000] [--queries 200] [--json benchmarks/results/fidelity.json]

The pipeline runs on ``--corpus`` as a user runs it (every asset, default configuration; with
``--base-model`` a local Hugging Face decoder such as SmolLM2 from ``influcoder import-gguf``).
It is resumable: a finished stage is not run again. Each stage runs as ``influcoder materialize`` in a
child process; its wall time and peak resident memory are kept in ``WORK/pipeline.json`` and
``WORK/pipeline_rss.json`` (stages run before memory was recorded have a time only).
Nothing is synthetic and nothing is padded.

Then, on held-out samples only (neither the sketch basis, nor the ridge head, nor the
fine-tuning saw them):

* **agreement** (the encoder stage's own evaluation, ``eval/encoder_eval.json``): held-out anchors
  against the held-out pool, mean per-anchor and aggregated Spearman and NDCG@10, for the student,
  the teacher's noise ceiling (a second projection seed), the untrained encoder, BM25 and random;
* **served recovery**: for ``--queries`` held-out anchors asked as a user asks (their text), the
  share of the gradient path's top-10 over the *whole* store that the served index returns (the
  encoder path), and that the re-rank returns at depth 100; the query's own sample is left out of
  every list, as a user's text is not in the training data;
* **latency**: p50 of one query on each path (encoder, re-rank, gradient scan), each path over all
  queries in turn; bytes per sample of the store and the served index; the encoder's training time;
* **learning curve**: the default student retrained on ``--curve`` random subsets of the training
  split (same teacher, same held-out data), plus the pipeline's own student on all of it. Its
  recovery@10 is an exact search in that student's sketch basis (the served index may be ivf_sq8).

One corpus's row replaces the JSON's row of the same ``--name``, with the commit that measured it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.planted import provenance  # noqa: E402

K, RERANK = 10, 100
AGREEMENT = ("spearman", "agg_spearman", "ndcg10")
BASELINES = {"ceiling": "teacher_ceiling", "untrained": "untrained", "bm25": "bm25", "random": "random"}  # JSON name -> eval row


def write_config(work: Path, corpus: Path, base_model: Path | None, overrides: list[str]) -> Path:
    """The home's configuration: the defaults, the corpus, ``base_model`` and any ``SECTION.KEY=VALUE``
    overrides (VALUE a TOML literal)."""
    settings: dict[str, dict[str, Any]] = {"dataset": {"path": str(corpus.resolve())}}
    if base_model:
        settings["model"] = {"base_model": str(base_model.resolve())}
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        settings.setdefault(section, {})[field] = tomllib.loads(f"v = {value}")["v"]
    config = work / "influcoder.toml"
    config.write_text(f'home = "{work / "home"}"\n' + "".join(
        f"[{s}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items()) for s, fields in settings.items()))
    return config


STAGES = {"base_model": ["base_model"],
          "teacher": ["tokenized_corpus", "projected_gradients", "corpus_manifest", "influence_rankings"],
          "student": ["influcoder_encoder", "embedding_index"]}


def run_stages(config: Path, work: Path) -> tuple[dict[str, float], dict[str, int]]:
    """Every asset, a stage at a time, each as ``influcoder materialize`` in a child process: the
    stages' wall seconds (``WORK/pipeline.json``) and peak resident memory in MB
    (``WORK/pipeline_rss.json``). A stage already timed is not run again."""
    seconds_file, rss_file = work / "pipeline.json", work / "pipeline_rss.json"
    seconds = json.loads(seconds_file.read_text()) if seconds_file.exists() else {}
    rss = json.loads(rss_file.read_text()) if rss_file.exists() else {}
    for stage, assets in STAGES.items():
        if stage in seconds:
            continue
        command = [sys.executable, "-c", "from influcoder_dagster.app.cli import main; raise SystemExit(main())",
                   "--config", str(config), "materialize", "--select", ",".join(assets)]
        start = time.perf_counter()
        child = subprocess.Popen(command)
        _, status, usage = os.wait4(child.pid, 0)  # the child's own rusage: its peak RSS
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            sys.exit(f"{stage}: influcoder materialize failed (exit {child.returncode}); its messages are above")
        seconds[stage], rss[stage] = round(time.perf_counter() - start, 1), round(usage.ru_maxrss / 1024)
        rss_file.write_text(json.dumps(rss))
        seconds_file.write_text(json.dumps(seconds))
        print(f"{stage}: {seconds[stage]:.0f} s, peak {rss[stage]:,} MB", flush=True)
    return seconds, rss


def corpus_hash(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\n")
    return digest.hexdigest()


def served(home: Path, queries: list[str], own: list[int], max_length: int) -> dict[str, Any]:
    """Recovery of the gradient path's whole-store top-10 by the encoder path and the re-rank, and
    each path's p50 latency for one query; every list leaves out the query's own sample."""
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.serving.attribute import Attributor
    from influcoder_dagster.serving.index import INDEX_FILE
    from influcoder_dagster.teacher.base_model import base_model_record
    from influcoder_dagster.teacher.projection import ProjectionSpec
    from influcoder_dagster.teacher.query_gradients import QueryGradients
    from influcoder_dagster.teacher.scoring import stream_topk
    from influcoder_dagster.teacher.store import open_store

    paths = Paths(home)
    attributor, store = Attributor(home, max_length), open_store(paths)
    gradients = QueryGradients(base_model_record(paths), ProjectionSpec.from_json(store.manifest["projection"]), max_length)
    times: dict[str, list[float]] = {"encoder": [], "rerank": [], "gradient": []}
    tops: dict[str, list[list[int]]] = {"encoder": [], "rerank": [], "gradient": []}
    runs = {"encoder": lambda t: attributor.query([t], K + 1)[0], "rerank": lambda t: attributor.query([t], K + 1, RERANK)[0]}
    for name, run in runs.items():  # each path over all queries in turn: its steady state
        for text, sid in zip(queries, own, strict=True):
            start = time.perf_counter()
            hits = run(text)
            times[name].append(time.perf_counter() - start)
            tops[name].append([h["sample_id"] for h in hits if h["sample_id"] != sid][:K])
    for text, sid in zip(queries, own, strict=True):
        start = time.perf_counter()
        top, _ = stream_topk(gradients.of_texts([text]), store.iter_blocks(4096), K, exclude_ids=np.array([sid]))
        times["gradient"].append(time.perf_counter() - start)
        tops["gradient"].append(top.ids[0].tolist())
    recovery = {name: float(np.mean([len(set(a) & set(g)) / K for a, g in zip(tops[name], tops["gradient"], strict=True)]))
                for name in ("encoder", "rerank")}
    p50 = {name: round(float(np.median(t)) * 1000, 2) for name, t in times.items()}
    return {"recovery_at_10": recovery["encoder"], "rerank_recovery_at_10": recovery["rerank"], "gradient_tops": tops["gradient"],
            "encoder_ms_p50": p50["encoder"], "rerank_ms_p50": p50["rerank"], "gradient_ms_p50": p50["gradient"],
            "encoder_backend": attributor.encoder.backend, "index_kind": attributor.manifest["kind"],
            "store_bytes_per_sample": store.nbytes() / store.n_rows(),
            "index_bytes_per_sample": (paths.index / attributor.manifest["folder"] / INDEX_FILE).stat().st_size / attributor.manifest["count"]}


def exact_recovery(query_vectors: np.ndarray, doc_ids: np.ndarray, doc_vectors: np.ndarray, own: list[int],
                   gradient_tops: list[list[int]]) -> float:
    """Recovery@10 of an exact inner-product search in the sketch basis, the query's own sample left out."""
    scores = query_vectors @ doc_vectors.T
    found = []
    for row, sid, truth in zip(scores, own, gradient_tops, strict=True):
        top = [i for i in doc_ids[np.argsort(-row)[: K + 1]].tolist() if i != sid][:K]
        found.append(len(set(top) & set(truth)) / K)
    return float(np.mean(found))


def curve_point(cfg: Any, rankings: Any, pair_teacher: Any, n_train: int, queries: list[str], own: list[int],
                gradient_tops: list[list[int]]) -> dict[str, Any]:
    """The default student retrained on ``n_train`` random training samples: held-out Spearman and recovery@10."""
    from influcoder_dagster.student.encoder import encode, load_encoder
    from influcoder_dagster.student.evaluation import agreement
    from influcoder_dagster.student.sketch_training import train_sketch_student

    ids, texts = rankings.train
    pick = np.sort(np.random.default_rng(cfg.encoder.seed).choice(len(ids), min(n_train, len(ids)), replace=False))
    start = time.perf_counter()
    model, scorer, _, _ = train_sketch_student(cfg, load_encoder(cfg.encoder), pair_teacher, rankings.data,
                                               ([ids[i] for i in pick], [texts[i] for i in pick]), lambda *_: None, False)
    seconds = time.perf_counter() - start
    data = rankings.data
    row = agreement(scorer(data.anchor_texts, data.pool_texts), data)
    docs = np.stack([scorer.docs[t] for t in data.corpus_texts])
    recovery = exact_recovery(encode(model, queries, "query"), data.corpus_ids, docs, own, gradient_tops)
    return {"n_train": len(pick), "spearman": row["spearman"], "agg_spearman": row["agg_spearman"], "ndcg10": row["ndcg10"],
            "recovery_at_10": recovery, "train_s": round(seconds, 1)}


def served_student_recovery(home: Path, queries: list[str], own: list[int], gradient_tops: list[list[int]]) -> float:
    """The pipeline's own student, searched exactly in its sketch basis (the learning curve's last point)."""
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.serving.index import current_encoder_folder
    from influcoder_dagster.student.encoder import encode, load_saved_student
    from influcoder_dagster.student.sketch import BASIS_FILE, Sketch
    from influcoder_dagster.teacher.store import open_store

    folder = current_encoder_folder(Paths(home).index)
    sketch, store = Sketch.load(folder / BASIS_FILE), open_store(Paths(home))
    ids, docs = zip(*((i, sketch.documents(np.asarray(b, dtype=np.float32))) for i, b in store.iter_blocks(4096)), strict=True)
    model = load_saved_student(folder)
    return exact_recovery(encode(model, queries, "query"), np.concatenate(ids), np.concatenate(docs), own, gradient_tops)


def encoder_train_seconds(home: Path) -> float:
    import mlflow

    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.student import tracking

    tracking.setup(home)
    run_id = json.loads(Paths(home).encoder_pointer.read_text())["mlflow_run_id"]
    return round(float(mlflow.get_run(run_id).data.metrics["train_seconds"]), 1)


def teacher_name(cfg: Any) -> str:
    """The decoder and the teacher's recipe, with the checkpoints the store actually holds (one for a
    local model unless the teacher attributes its LoRA warm-up)."""
    from influcoder_dagster.stages.base_model import checkpoint_count

    p = cfg.projection
    decoder = "tiny decoder trained on the corpus" if cfg.model.base_model == "tiny" else Path(cfg.model.base_model).name
    return f"{decoder}; {p.target} {p.kind} dim {p.dim} x {checkpoint_count(cfg)} checkpoints; Adam {p.adam_precondition}"


def selected_corpus(args: argparse.Namespace) -> Path:
    """The corpus folder, or with ``--first`` its first N texts (``--short``: first sentences) written to WORK/data."""
    if args.first is None:
        return args.corpus
    from benchmarks.planted import real_passages

    data = args.work / "data"
    data.mkdir(parents=True, exist_ok=True)
    texts = real_passages(args.corpus, args.first, short=args.short)
    (data / "real-000.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return data


def corpus_row(args: argparse.Namespace, measured: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the pipeline, then measure one corpus: its row of ``corpora`` and its learning-curve points."""
    from influcoder_dagster.core.config import load_config
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.stages.encoder import read_rankings
    from influcoder_dagster.teacher.pair_teacher import pair_teacher_for

    args.work.mkdir(parents=True, exist_ok=True)
    config = write_config(args.work, selected_corpus(args), args.base_model, args.overrides)
    seconds, rss = run_stages(config, args.work)
    cfg = load_config(config)
    home, table = cfg.home_path, json.loads(Paths(cfg.home_path).encoder_eval.read_text())
    rankings = read_rankings(cfg)
    data, n_train = rankings.data, len(rankings.train[0])
    by_text = dict(zip(data.corpus_texts, data.corpus_ids.tolist(), strict=True))
    queries = [data.anchor_texts[i] for i in np.random.default_rng(0).permutation(len(data.anchor_texts))[: args.queries]]
    own = [by_text[t] for t in queries]
    print(f"{len(data.corpus_texts):,} samples, {n_train:,} training, {len(data.anchor_texts):,} held-out anchors; "
          f"{len(queries)} served queries", flush=True)
    path = served(home, queries, own, cfg.model.max_length)
    tops = path.pop("gradient_tops")
    pair_teacher = pair_teacher_for(cfg, Paths(home), rankings.provenance["store_key"])
    curve = [curve_point(cfg, rankings, pair_teacher, n, queries, own, tops) for n in sorted(args.curve) if n < n_train]
    full = {"n_train": n_train, **{k: table["student"][k] for k in AGREEMENT},
            "recovery_at_10": served_student_recovery(home, queries, own, tops), "train_s": encoder_train_seconds(home)}
    student = {**{k: table["student"][k] for k in AGREEMENT}, "recovery_at_10": path.pop("recovery_at_10"),
               "rerank_recovery_at_10": path.pop("rerank_recovery_at_10")}
    baselines = {name: {k: table[key][k] for k in AGREEMENT} for name, key in BASELINES.items()}
    row = {"name": args.name, **measured, "overrides": args.overrides, "teacher": teacher_name(cfg), "corpus_sha256": corpus_hash(data.corpus_texts),
           "n_real": len(data.corpus_texts), "n_synthetic": 0, "n_train": n_train, "n_heldout_queries": len(data.anchor_texts),
           "n_eval_pool": len(data.pool_texts), "n_served_queries": len(queries), "student": student, **baselines, **path,
           "encoder_train_s": full["train_s"], "encoder_train_s_per_10k": round(full["train_s"] / n_train * 10_000, 1),
           "pipeline_s": seconds, "pipeline_peak_rss_mb": rss}
    return row, [{"corpus": args.name, **p} for p in [*curve, full]]


def merge(path: Path, row: dict[str, Any], curve: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON with this corpus's row and curve replacing any earlier ones of the same name."""
    old = json.loads(path.read_text()) if path.exists() else {"corpora": [], "learning_curve": []}
    return {"commit": row["commit"], "command": row["command"],
            "corpora": [c for c in old["corpora"] if c["name"] != row["name"]] + [row],
            "learning_curve": [p for p in old["learning_curve"] if p["corpus"] != row["name"]] + curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, required=True, help="JSONL shards of benchmarks/real_corpus.py")
    ap.add_argument("--work", type=Path, required=True, help="the storage root and the pipeline's timings live here")
    ap.add_argument("--name", required=True, help="the corpus's row in the JSON, e.g. real100k")
    ap.add_argument("--base-model", type=Path, help="a local Hugging Face decoder (default: the tiny decoder)")
    ap.add_argument("--first", type=int, help="only the corpus's first N texts (written to WORK/data)")
    ap.add_argument("--short", action="store_true", help="with --first: each text cut to its first sentence, as planted.py does")
    ap.add_argument("--curve", type=int, nargs="*", default=[1000, 10000], help="training-set sizes below the full split")
    ap.add_argument("--queries", type=int, default=200, help="held-out anchors asked through the served paths")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE",
                    help="a setting that is not the default (recorded in the row; name the row apart)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from influcoder_dagster.core.quiet import quiet_libraries

    quiet_libraries()
    started, measured = time.perf_counter(), provenance("benchmarks/fidelity.py")
    row, curve = corpus_row(args, measured)
    row["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(row, indent=1), json.dumps(curve, indent=1), sep="\n")
    if args.json:
        args.json.write_text(json.dumps(merge(args.json, row, curve), indent=1))


if __name__ == "__main__":
    main()
