"""``influcoder demo``: materialize every asset on the demo corpus, report what was found, write demo_summary.json."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from influcoder_dagster.app.runner import failure_messages, materialize_with_gate
from influcoder_dagster.core.atomic import dir_size, write_json
from influcoder_dagster.core.config import Config
from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.data.queries import planted_members, read_queries
from influcoder_dagster.data.source import dataset_files
from influcoder_dagster.data.tokenized import read_corpus
from influcoder_dagster.serving.attribute import Attributor
from influcoder_dagster.student.metrics import planted_recall
from influcoder_dagster.teacher.rankings_db import connect_readonly

RERANK_DEPTH = 100  # the README's `--rerank 100`
ASSET_ORDER = ["base_model", "tokenized_corpus", "projected_gradients", "corpus_manifest", "influence_rankings",
               "influcoder_encoder", "shard_embeddings", "embedding_index"]


def seconds_per_asset(meta: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Wall seconds per asset, partitions (``asset[shard]``) summed."""
    out: dict[str, float] = {}
    for name, values in meta.items():
        asset = name.split("[", 1)[0]
        out[asset] = out.get(asset, 0.0) + (values.get("wall_seconds") or 0.0)
    return {a: round(out[a], 2) for a in ASSET_ORDER if a in out}


def run_demo(config_path: str | None, cfg: Config) -> int:
    paths = Paths(cfg.home_path)
    print(f"Influcoder demo: storage root {paths.home}")
    started = time.perf_counter()
    result, meta, held = materialize_with_gate(config_path, paths.home)
    if held:
        print("the new encoder did not pass its quality gate; the index was built from the current champion or base encoder")
    for msg in failure_messages(result):
        print(f"FAILED {msg}", file=sys.stderr)
    if not result.success:
        return 1
    wall = time.perf_counter() - started

    attributor = Attributor(paths.home, cfg.model.max_length)
    _, queries_path = dataset_files(cfg)
    probes = read_queries(queries_path)
    samples = read_corpus(paths.corpus, columns=["sample_id", "meta"])
    groups = planted_members(samples.column("meta").to_pylist(), samples.column("sample_id").to_numpy())
    relevant = [groups.get(json.loads(q["meta"]).get("planted_group"), set()) for q in probes]
    t = time.perf_counter()
    hits = attributor.query([q["text"] for q in probes], cfg.k)
    query_ms = (time.perf_counter() - t) * 1000 / max(len(probes), 1)
    served_recall = planted_recall([[h["sample_id"] for h in hs] for hs in hits], relevant, cfg.k)
    rerank = _rerank_check(attributor, paths, probes, cfg.k) if probes else {}

    rankings, encoder, index = meta.get("influence_rankings", {}), meta.get("influcoder_encoder", {}), meta.get("embedding_index", {})
    corpus = meta["corpus_manifest"]
    summary: dict[str, Any] = {
        "wall_seconds_total": round(wall, 1),
        "wall_seconds_per_asset": seconds_per_asset(meta),
        "rows": {
            "read": corpus["rows_read"], "kept": corpus["rows_kept"], "quarantined": corpus["rows_quarantined"],
            "gradients": corpus["gradient_rows"], "score_rows": rankings.get("score_rows_written"), "index": index.get("count"),
        },
        "k": cfg.k,
        "planted_recall_at_k": {
            "teacher": rankings.get(f"teacher_planted_recall_at_{cfg.k}"),
            "encoder_distilled": encoder.get(f"student_planted_recall_at_{cfg.k}"),
            "encoder_served_by_index": served_recall,
        },
        "encoder": {"version": encoder.get("version"), "promoted": encoder.get("promoted"), "reason": encoder.get("promotion_reason"),
                    "served_version": attributor.manifest["encoder_version"], "warning": encoder.get("warning")},
        "query_ms_per_text": round(query_ms, 2),
        "rerank": rerank,
        "artifact_bytes": {
            "base_model": meta["base_model"]["bytes"], "tokenized_corpus": dir_size(paths.corpus),
            "projected_gradients": corpus["bytes"], "influence_rankings": rankings.get("bytes"),
            "mlflow": dir_size(paths.mlflow_artifacts) if paths.mlflow_artifacts.exists() else 0,
            "embedding_index": index.get("bytes"),
        },
    }
    write_json(paths.demo_summary, summary)
    print(_report(summary, encoder.get("eval_table"), probes[0]["text"] if probes else None, hits[0] if hits else []))
    print(f"\nwritten to {paths.demo_summary}")
    return 0


def _rerank_check(attributor: Any, paths: Paths, probes: list[dict[str, Any]], k: int) -> dict[str, Any]:
    """``--rerank 100`` on the probes: its latency, and the share of the teacher's full-store top-k
    (the rankings database's ``top`` rows) that it returns."""
    texts, prompts = [q["text"] for q in probes], [q["prompt"] for q in probes]
    try:
        attributor.query(texts[:1], 1, RERANK_DEPTH, prompts[:1])  # loads the decoder and the store, as the CLI does first
    except MissingUpstreamError as exc:  # e.g. a held-back champion's sketch from another store: the pipeline itself succeeded
        return {"depth": RERANK_DEPTH, "skipped": str(exc)}
    t = time.perf_counter()
    hits = attributor.query(texts, k, RERANK_DEPTH, prompts)
    ms = (time.perf_counter() - t) * 1000 / len(texts)
    con = connect_readonly(paths.home)
    try:
        tops = [{s for (s,) in con.execute('SELECT sample_id FROM scores WHERE query_id = ? AND kind = \'top\' AND "rank" <= ?',
                                           [q["query_id"], k]).fetchall()} for q in probes]
    finally:
        con.close()
    found = [len(top & {h["sample_id"] for h in hs}) / len(top) for top, hs in zip(tops, hits, strict=True) if top]
    return {"depth": RERANK_DEPTH, "ms_per_text": round(ms, 2), f"teacher_top_{k}_recovered": round(float(sum(found) / len(found)), 3) if found else None,
            "recalled_by": "gradient sketch" if attributor.sketch is not None else "encoder"}


def _report(summary: dict[str, Any], eval_table: str | None, probe: str | None, hits: list[dict[str, Any]]) -> str:
    r, p, k = summary["rows"], summary["planted_recall_at_k"], summary["k"]
    fmt = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
    lines = [
        "",
        f"Demo finished in {summary['wall_seconds_total']:.0f} s: " + ", ".join(f"{a} {s:.0f}s" for a, s in summary["wall_seconds_per_asset"].items()),
        f"Rows: {r['read']} read = {r['kept']} kept + {r['quarantined']} quarantined; {r['gradients']} gradient rows; {r['index']} indexed.",
        f"Planted-sample recall@{k}: teacher {fmt(p['teacher'])}, distilled encoder {fmt(p['encoder_distilled'])}, "
        f"served index ({summary['encoder']['served_version']}) {fmt(p['encoder_served_by_index'])}",
        f"Encoder v{summary['encoder']['version']}: {'promoted to champion' if summary['encoder']['promoted'] else 'not promoted'} "
        f"({summary['encoder']['reason']})",
        f"Query latency: {summary['query_ms_per_text']:.1f} ms per text",
    ]
    if summary["encoder"].get("warning"):
        lines.append(f"Warning: {summary['encoder']['warning']}")
    rr = summary.get("rerank") or {}
    if rr.get("skipped"):
        lines.append(f"Re-rank {rr['depth']} skipped: {rr['skipped']}")
    elif rr:
        lines.append(f"Re-rank {rr['depth']} (recalled by the {rr['recalled_by']}): {rr['ms_per_text']:.1f} ms per text, "
                     f"{fmt(rr.get(f'teacher_top_{k}_recovered'))} of the teacher's full-store top-{k} returned")
    if eval_table:
        lines += ["", "Held-out evaluation (agreement with the teacher):", eval_table]
    if probe:
        lines += ["", f"Sample attribution for: {probe!r}"]
        lines += [f"  {h['rank']:>2}. {h['score']:.3f}  {h['text'][:110]}" for h in hits[:5]]
    return "\n".join(lines)
