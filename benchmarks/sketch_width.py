"""How wide must the gradient sketch be? The encoder path's ceiling and the re-rank's recall, by sketch width.

    python benchmarks/sketch_width.py --config WORK/influcoder.toml --name real20k [--dims 256 512 1024 2048]
        [--queries 200] [--json benchmarks/results/sketch_width.json]

On a built home (``fidelity.py``'s, or any other), held-out anchors are asked as a user asks
(their text's own gradient, their own sample left out). For each width k, the sketch basis is fitted
on training rows only, as the encoder stage fits it, and:

* ``oracle_recovery_at_10``: the share of the gradient path's whole-store top-10 that an exact
  search with the query's *own* sketched gradient finds. No encoder can beat it: it is the encoder
  path's ceiling at that width;
* ``rerank_at_D``: the same search at depth D, re-ranked by the full rows' cosines (the re-rank path).

Rows with a ``planted`` field (synthetic plants of ``planted.py``) are left out of queries, documents
and the fit. One home's row replaces the JSON's row of the same ``--name``.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fidelity import K, exact_recovery  # noqa: E402
from benchmarks.planted import provenance  # noqa: E402

DEPTHS = (100, 300)


def real_rows(cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """(ids, float32 rows) of the store's samples that are not planted."""
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.data.tokenized import read_corpus
    from influcoder_dagster.teacher.store import open_store

    paths = Paths(cfg.home_path)
    corpus = read_corpus(paths.corpus)
    planted = {int(s) for s, m in zip(corpus.column("sample_id").to_pylist(), corpus.column("meta").to_pylist(), strict=True)
               if m and "planted" in json.loads(m)}
    ids, rows = zip(*((i, np.asarray(b, dtype=np.float32)) for i, b in open_store(paths).iter_blocks(4096)), strict=True)
    ids, rows = np.concatenate(ids), np.concatenate(rows)
    keep = ~np.isin(ids, list(planted))
    return ids[keep], rows[keep]


@dataclass
class Asked:
    """Held-out anchors asked as a user asks, against a home's real rows: their own gradients, the
    gradient path's whole-store top-10 (their own sample left out) and the training rows' mask."""

    rankings: Any
    ids: np.ndarray
    rows: np.ndarray
    queries: list[str]
    own: np.ndarray
    gradients: np.ndarray
    exact: np.ndarray
    tops: list[list[int]]
    train: np.ndarray


def ask(cfg: Any, n_queries: int) -> Asked:
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.stages.encoder import read_rankings
    from influcoder_dagster.teacher.base_model import base_model_record
    from influcoder_dagster.teacher.projection import ProjectionSpec
    from influcoder_dagster.teacher.query_gradients import QueryGradients
    from influcoder_dagster.teacher.scoring import unit_rows
    from influcoder_dagster.teacher.store import open_store

    paths, rankings = Paths(cfg.home_path), read_rankings(cfg)
    data, (ids, rows) = rankings.data, real_rows(cfg)
    by_text, real = dict(zip(data.corpus_texts, data.corpus_ids.tolist(), strict=True)), set(ids.tolist())
    heldout = [t for t in data.anchor_texts if by_text[t] in real]
    queries = [heldout[i] for i in np.random.default_rng(0).permutation(len(heldout))[:n_queries]]
    own = np.array([by_text[t] for t in queries])
    store = open_store(paths)
    q = QueryGradients(base_model_record(paths), ProjectionSpec.from_json(store.manifest["projection"]),
                       cfg.model.max_length).of_texts(queries)
    exact = (unit_rows(q) @ unit_rows(rows).T).numpy()
    exact[ids[None, :] == own[:, None]] = -np.inf
    tops = [ids[np.argsort(-r)[:K]].tolist() for r in exact]
    train = np.isin(ids, np.asarray(rankings.train[0], dtype=np.int64))
    return Asked(rankings, ids, rows, queries, own, q, exact, tops, train)


def measure(config: Path, dims: list[int], n_queries: int) -> dict[str, Any]:
    from influcoder_dagster.core.config import load_config
    from influcoder_dagster.student.sketch import fit_sketch

    cfg = load_config(config)
    a = ask(cfg, n_queries)
    ids, rows, own, q, exact, tops, train = a.ids, a.rows, a.own, a.gradients, a.exact, a.tops, a.train
    out: dict[str, Any] = {"n_rows": len(ids), "n_train_rows": int(train.sum()), "n_queries": len(a.queries),
                           "row_dim": rows.shape[1], "dims": {}}
    for k in dims:
        start = time.perf_counter()
        sketch = fit_sketch(rows[train], k, seed=cfg.encoder.seed)
        fit_s = time.perf_counter() - start
        docs, approx = sketch.documents(rows), sketch.targets(q)
        scores = approx @ docs.T
        scores[ids[None, :] == own[:, None]] = -np.inf
        row = {"oracle_recovery_at_10": exact_recovery(approx, ids, docs, own.tolist(), tops), "fit_s": round(fit_s, 1)}
        for depth in DEPTHS:
            cand = np.argsort(-scores, axis=1)[:, :depth]
            found = [ids[c[np.argsort(-exact[i, c])[:K]]].tolist() for i, c in enumerate(cand)]
            row[f"rerank_at_{depth}"] = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, tops, strict=True)]))
        out["dims"][str(k)] = row
        print(k, row, flush=True)
    return out


def home_row(path: Path, name: str) -> dict[str, Any] | None:
    """The row of home ``name`` in a ``{"homes": [...]}`` JSON, if it has one."""
    homes = json.loads(path.read_text())["homes"] if path.exists() else []
    return next((h for h in homes if h["name"] == name), None)


def replace_home_row(path: Path, row: dict[str, Any]) -> None:
    """Write ``row`` into a ``{"homes": [...]}`` JSON, in place of any row of the same name."""
    homes = json.loads(path.read_text())["homes"] if path.exists() else []
    path.write_text(json.dumps({"homes": [h for h in homes if h["name"] != row["name"]] + [row]}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, required=True, help="the built home's influcoder.toml")
    ap.add_argument("--name", required=True, help="the home's row in the JSON")
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--queries", type=int, default=200, help="held-out anchors asked as a user asks")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from influcoder_dagster.core.quiet import quiet_libraries

    quiet_libraries()
    row = {"name": args.name, **provenance("benchmarks/sketch_width.py"), **measure(args.config, args.dims, args.queries)}
    if args.json:
        replace_home_row(args.json, row)


if __name__ == "__main__":
    main()
