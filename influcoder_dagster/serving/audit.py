"""Audit a set of bad outputs: which training samples stand behind many of them?

Each output is attributed (index, optionally re-ranked by the teacher); samples are ranked by in
how many outputs' top-k they appear, then by their summed positive score. The result is a
DuckDB file (``hits`` and ``suspects`` tables), a Markdown report and a plot of the scores.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from influcoder_dagster.core.atomic import atomic_path
from influcoder_dagster.teacher.rankings_db import connect


def aggregate(hits: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per sample over all queries: n_queries, mass (sum of positive scores), max score, best rank."""
    agg: dict[int, dict[str, Any]] = {}
    counts: dict[int, int] = defaultdict(int)
    for per_query in hits:
        for h in per_query:
            a = agg.setdefault(h["sample_id"], {"sample_id": h["sample_id"], "mass": 0.0, "max_score": h["score"], "best_rank": h["rank"],
                                                "source": h["source"], "row": h["row"], "text": h["text"]})
            counts[h["sample_id"]] += 1
            a["mass"] += max(h["score"], 0.0)
            a["max_score"] = max(a["max_score"], h["score"])
            a["best_rank"] = min(a["best_rank"], h["rank"])
    rows = [{**a, "n_queries": counts[s]} for s, a in agg.items()]
    return sorted(rows, key=lambda r: (-r["n_queries"], -r["mass"], r["sample_id"]))


def write_audit(out_dir: Path, queries: list[dict[str, Any]], hits: list[list[dict[str, Any]]], method: str) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    suspects = aggregate(hits)
    hit_rows = [{"query_id": q["query_id"], **{k: h[k] for k in ("rank", "sample_id", "score")}} for q, hs in zip(queries, hits, strict=True) for h in hs]
    db = out_dir / "audit.duckdb"
    with atomic_path(db) as tmp:
        tmp.unlink()
        con = connect(tmp)
        for name, rows, schema in (
            ("hits", hit_rows, {"query_id": pa.string(), "rank": pa.int32(), "sample_id": pa.int64(), "score": pa.float64()}),
            ("suspects", suspects, {"sample_id": pa.int64(), "n_queries": pa.int32(), "mass": pa.float64(), "max_score": pa.float64(),
                                    "best_rank": pa.int32(), "source": pa.string(), "row": pa.int32(), "text": pa.string()}),
        ):
            con.register("incoming", pa.table({c: pa.array([r[c] for r in rows], t) for c, t in schema.items()}))
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM incoming")
            con.unregister("incoming")
        con.close()

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.hist([h["score"] for hs in hits for h in hs], bins=30, color="#888")
    left.set(title=f"Scores of all {len(hit_rows)} hits", xlabel=f"score ({method})", ylabel="hits")
    top = suspects[:15][::-1]
    right.barh([f"{s['sample_id'] % 10**8:08d}" for s in top], [s["mass"] for s in top], color="#c44")
    right.set(title="Top suspects (ranked by outputs, then mass)", xlabel="summed positive score", ylabel="sample id (last 8 digits)")
    fig.tight_layout()
    plot = out_dir / "scores.png"
    with atomic_path(plot) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

    lines = [f"# Attribution audit: {len(queries)} outputs", "", f"Method: {method}. Samples ranked by how many outputs' top-k hold them,",
             "then by their summed positive score.", "", "![score distributions](scores.png)", "",
             "| # | in top-k of | mass | max score | source:row | text |", "|---|---|---|---|---|---|"]
    for i, s in enumerate(suspects[:25], start=1):
        text = s["text"][:90].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {i} | {s['n_queries']}/{len(queries)} | {s['mass']:.3f} | {s['max_score']:.3f} | {Path(s['source']).name}:{s['row']} | {text} |")
    report = out_dir / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"database": db, "report": report, "plot": plot}
