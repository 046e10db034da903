"""The ``influence_rankings`` stage: build the rankings database, or update it doing only the new work.

What changed is decided first (:mod:`influcoder_dagster.teacher.rankings_plan`). On an update:

* new shards are scored against the existing queries only, and merged into their top/bottom lists;
* removed shards leave the samples table; a query whose top or bottom list held one of their
  samples is rescored in full (so its lists stay exact), the others keep theirs;
* new or changed queries (user queries, anchors on new samples) are scored in full; queries that
  are gone leave with their scores.

The result equals a full rebuild's top and bottom lists (tested). The held-out evaluation pool is
fixed at the rebuild, so new samples do not join it until the next rebuild.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

from influcoder_dagster.core.config import Config
from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.core.hashing import short_hash
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.data.queries import planted_members, read_queries
from influcoder_dagster.data.source import dataset_files
from influcoder_dagster.data.tokenized import read_corpus, read_manifest, read_quarantine
from influcoder_dagster.data.tokens import Encoded
from influcoder_dagster.stages.result import StageResult
from influcoder_dagster.student.metrics import planted_recall
from influcoder_dagster.teacher import rankings_db
from influcoder_dagster.teacher.base_model import base_model_record
from influcoder_dagster.teacher.pools import ScoreRows, anchor_ids, eval_pool, pool_split, random_candidates
from influcoder_dagster.teacher.preconditioner import remove_preconditioner, write_preconditioner
from influcoder_dagster.teacher.projection import ProjectionSpec
from influcoder_dagster.teacher.query_cache import ANCHOR_CACHE, CEILING_POOL_CACHE, QUERY_CACHE, cached_query_gradients
from influcoder_dagster.teacher.query_gradients import QueryGradients, plain_anchor_gradients
from influcoder_dagster.teacher.rankings_plan import (
    QueryChanges,
    QuerySide,
    ShardChanges,
    query_changes,
    shard_changes,
    wanted_queries,
)
from influcoder_dagster.teacher.scoring import (
    Ranked,
    fisher,
    full_scores,
    inverse_preconditioner,
    merge_ranked,
    pair_scores,
    precondition,
    stream_topk,
)
from influcoder_dagster.teacher.store import open_store


@dataclass
class _Inputs:
    """The published corpus and its store, as the rankings read them."""

    paths: Paths
    base: dict[str, Any]
    manifest: dict[str, Any]
    corpus: Any  # pyarrow.Table
    store: Any
    ids: np.ndarray
    splits: np.ndarray
    spec: ProjectionSpec

    @cached_property
    def row_of(self) -> dict[int, int]:
        """Sample id -> its row in the corpus table, built once per run."""
        return {int(s): i for i, s in enumerate(self.ids)}

    def tokens(self, sample_ids: Any) -> list[Encoded]:
        """The samples' own token ids (only the rows asked for leave Arrow)."""
        column = self.corpus.column("input_ids")
        return [Encoded(column[self.row_of[int(x)]].as_py()) for x in sample_ids]


def _read_inputs(cfg: Config) -> _Inputs:
    paths = Paths(cfg.home_path)
    base, manifest, corpus, store = base_model_record(paths), read_manifest(paths.corpus), read_corpus(paths.corpus), open_store(paths)
    ids = corpus.column("sample_id").to_numpy()
    if not np.array_equal(np.sort(store.all_ids()), np.sort(ids)):
        raise MissingUpstreamError("the gradient store does not cover the current corpus", "projected_gradients", "corpus_manifest")
    return _Inputs(paths, base, manifest, corpus, store, ids, pool_split(ids, cfg.rankings.heldout_fraction),
                   ProjectionSpec.from_json(store.manifest["projection"]))


def run_influence_rankings(cfg: Config, dagster_run_id: str | None = None, progress: bool = True) -> StageResult:
    r, home = cfg.rankings, cfg.home_path
    inp = _read_inputs(cfg)
    # Cross-shard duplicates are in the hash: when they change (the file a sample was first seen in
    # left), a shard keeps its name but not its rows, which only a rebuild handles (rare).
    duplicates = {n: e.get("excluded", []) for n, e in inp.store.manifest["shards"].items() if e.get("excluded")}
    config_hash = short_hash(inp.store.root.name, r.model_dump(), cfg.k, duplicates)
    state = rankings_db.read_state(home)
    shards = shard_changes(state, config_hash, sorted(inp.manifest["shards"]), r.precondition)
    user = read_queries(dataset_files(cfg)[1])
    texts, metas = inp.corpus.column("text").to_pylist(), inp.corpus.column("meta").to_pylist()
    wanted = wanted_queries(inp.ids, texts, metas, inp.splits, anchor_ids(inp.ids, r.anchor_fraction, r.seed), user)
    removed_ids = _removed_samples(home, shards)
    queries = _query_changes(home, wanted, shards, removed_ids)
    gradients = QueryGradients(inp.base, inp.spec, cfg.model.max_length, cfg.projection.batch_size)
    side = _query_side(cfg, inp, wanted, user, gradients)

    rows = ScoreRows()
    _score_lists(cfg, inp.store, side, queries, shards, rows)
    new_anchors = [q for q in queries.new if wanted[q]["kind"] == "anchor"]
    _candidate_rows(cfg, inp, side, new_anchors, rows)
    pool = _eval_pool(cfg, inp, wanted, state, shards, removed_ids)
    _eval_rows(cfg, inp, side, gradients, [q for q in new_anchors if wanted[q]["split"] == "heldout"], pool, rows)

    version = short_hash(config_hash, inp.manifest["dataset_version"], sorted((q, wanted[q]["text"]) for q in wanted))
    run_id = short_hash(version, datetime.now(timezone.utc).isoformat())
    state = {"config_hash": config_hash, "shards": json.dumps(sorted(inp.manifest["shards"])),
             "eval_pool": json.dumps([int(p) for p in pool])}
    rankings_db.apply_update(home, _update(inp, wanted, queries, shards, rows, state, run_id, dagster_run_id, r.precondition))
    return StageResult({
        "path": str(inp.paths.rankings_db), "run_id": run_id, "mode": "rebuild" if shards.rebuild else "incremental",
        "shards_added": shards.added, "shards_removed": shards.removed, "queries_scored_in_full": len(queries.full),
        "queries_merged_with_new_shards": len(queries.merged), "queries_dropped": len(queries.dropped),
        "samples": len(inp.ids), **_anchor_counts(wanted), "user_queries": len(user),
        "score_rows_written": len(rows), "preconditioned": r.precondition,
        f"teacher_planted_recall_at_{cfg.k}": _planted_recall(home, user, metas, inp.ids, cfg.k),
        "base_model_hash": inp.base["model_hash"], "dataset_version": inp.manifest["dataset_version"],
        "projection": inp.spec.kind, "dim": inp.store.dim, "seed": inp.spec.seed, "bytes": inp.paths.rankings_db.stat().st_size,
    }, version)


def _removed_samples(home: Any, shards: ShardChanges) -> set[int]:
    """The samples of the shards that left, as the database still lists them."""
    if not shards.removed:
        return set()
    sql = "SELECT sample_id FROM samples WHERE shard IN (SELECT unnest(?))"
    return {s for (s,) in rankings_db.writer_query(home, sql, [shards.removed])}


def _query_changes(home: Any, wanted: dict[str, dict[str, Any]], shards: ShardChanges, removed_ids: set[int]) -> QueryChanges:
    """The database's side of the plan: which queries it holds, and which list a removed sample."""
    q = rankings_db.writer_query
    existing = {} if shards.rebuild else {qid: (t, p) for qid, t, p in q(home, "SELECT query_id, text, prompt FROM queries")}
    listing = {qid for (qid,) in q(home, "SELECT DISTINCT query_id FROM scores WHERE kind IN ('top', 'bottom') "
                                         "AND sample_id IN (SELECT unnest(?))", [sorted(removed_ids)])} if removed_ids else set()
    return query_changes(wanted, existing, listing, bool(shards.added))


def _query_side(cfg: Config, inp: _Inputs, wanted: dict[str, dict[str, Any]], user: list[dict[str, Any]],
                gradients: QueryGradients) -> QuerySide:
    """Query gradients (from the caches beside the store where they exist) and the preconditioner."""
    store, r = inp.store, cfg.rankings
    user_grads = cached_query_gradients(store.root / QUERY_CACHE, user, lambda qs: gradients.of_texts(
        [q["text"] for q in qs], [q["prompt"] for q in qs]), store.dim)
    plain = plain_anchor_gradients(cfg)
    anchor_queries = [{"query_id": q, "text": w["text"], "prompt": None} for q, w in wanted.items() if w["kind"] == "anchor"]
    anchor_grads = cached_query_gradients(store.root / ANCHOR_CACHE, anchor_queries, lambda qs: gradients.of_tokens(
        inp.tokens([wanted[q["query_id"]]["sample_id"] for q in qs])), store.dim) if plain else {}
    inverse = None
    if r.precondition:
        inverse = inverse_preconditioner(fisher(store.iter_blocks(r.block_rows), store.dim), r.damping)
        write_preconditioner(store, inverse, r.damping)
    else:
        remove_preconditioner(store)
    return QuerySide(wanted, store, user_grads, anchor_grads, plain, inverse)


def _score_lists(cfg: Config, store: Any, side: QuerySide, queries: QueryChanges, shards: ShardChanges, rows: ScoreRows) -> None:
    """Top and bottom lists: in full for new and dirty queries, merged with the new shards' for the rest."""
    r, k = cfg.rankings, max(cfg.rankings.top_k, cfg.k)
    if queries.full:
        top, bottom = _ranked_lists(cfg, side, queries.full, lambda: store.iter_blocks(r.block_rows))
        rows.add_ranked(queries.full, top, bottom)
    if not queries.merged:
        return
    merged = queries.merged
    top, bottom = _ranked_lists(cfg, side, merged, lambda: store.iter_blocks(r.block_rows, shards.added))
    old_top, old_bottom = _existing_lists(cfg.home_path, merged, "top"), _existing_lists(cfg.home_path, merged, "bottom")
    for i, q in enumerate(merged):
        t = merge_ranked(Ranked(old_top[q][1][None], old_top[q][0][None]), Ranked(top.scores[i : i + 1], top.ids[i : i + 1]), k)
        b = merge_ranked(Ranked(old_bottom[q][1][None], old_bottom[q][0][None]),
                         Ranked(bottom.scores[i : i + 1], bottom.ids[i : i + 1]), r.n_bottom, largest=False)
        rows.add_ranked([q], t, b)


def _ranked_lists(cfg: Config, side: QuerySide, query_ids: list[str], blocks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
                  ) -> tuple[Ranked, Ranked]:
    """``stream_topk`` over ``blocks()`` for ``rankings.block_rows`` queries at a time, each group one
    more pass over the store: a store block's scores and merges are (queries x block rows), which
    for 40,000 anchors at once took several GB."""
    r, k = cfg.rankings, max(cfg.rankings.top_k, cfg.k)
    tops, bottoms = [], []
    for start in range(0, len(query_ids), r.block_rows):
        group = query_ids[start : start + r.block_rows]
        top, bottom = stream_topk(side(group), blocks(), k, r.n_bottom, side.exclusions(group))
        tops.append(top)
        bottoms.append(bottom)
    return (Ranked(np.concatenate([t.scores for t in tops]), np.concatenate([t.ids for t in tops])),
            Ranked(np.concatenate([b.scores for b in bottoms]), np.concatenate([b.ids for b in bottoms])))


def _existing_lists(home: Any, query_ids: list[str], kind: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out: dict[str, tuple[list[int], list[float]]] = {q: ([], []) for q in query_ids}
    if not query_ids:
        return {}
    for qid, sid, score in rankings_db.writer_query(home, 'SELECT query_id, sample_id, score FROM scores WHERE kind = ? '
                                                    'AND query_id IN (SELECT unnest(?)) ORDER BY query_id, "rank"', [kind, query_ids]):
        out[qid][0].append(sid)
        out[qid][1].append(score)
    return {q: (np.asarray(i, dtype=np.int64), np.asarray(s, dtype=np.float32)) for q, (i, s) in out.items()}


def _candidate_rows(cfg: Config, inp: _Inputs, side: QuerySide, new_anchors: list[str], rows: ScoreRows) -> None:
    """Random training candidates of each new anchor, with their teacher scores; the candidates'
    store rows are read about ``rankings.block_rows`` at a time (at 100,000 anchors they would be 36 GB)."""
    if not new_anchors:
        return
    r, wanted = cfg.rankings, side.wanted
    train_pool = inp.ids[inp.splits == "train"]
    cands = [random_candidates(wanted[q]["sample_id"], train_pool if wanted[q]["split"] == "train" else inp.ids, r.n_random, r.seed)
             for q in new_anchors]
    width = min(len(c) for c in cands)
    cand_ids = np.stack([c[:width] for c in cands])
    step = max(1, r.block_rows // max(width, 1))
    for start in range(0, len(new_anchors), step):
        block, ids = new_anchors[start : start + step], cand_ids[start : start + step]
        scores = pair_scores(side(block), inp.store.lookup(ids.ravel()).reshape(*ids.shape, inp.store.dim))
        for q, q_ids, q_scores in zip(block, ids, scores, strict=True):
            rows.add(q, q_ids, q_scores, "random")


def _eval_pool(cfg: Config, inp: _Inputs, wanted: dict[str, dict[str, Any]], state: dict[str, str] | None,
               shards: ShardChanges, removed: set[int]) -> np.ndarray:
    """The held-out pool: drawn at a rebuild, then kept (less the removed samples) until the next."""
    r = cfg.rankings
    if shards.rebuild:
        anchors = {w["sample_id"] for w in wanted.values() if w["kind"] == "anchor"}
        return eval_pool(inp.ids, inp.splits, anchors, r.eval_pool_size, r.seed)
    return np.array([p for p in json.loads(state["eval_pool"]) if p not in removed], dtype=np.int64)


def _eval_rows(cfg: Config, inp: _Inputs, side: QuerySide, gradients: QueryGradients, held: list[str], pool: np.ndarray,
               rows: ScoreRows) -> None:
    """Held-out anchors against the held-out pool: the teacher's scores (``eval``), its noise ceiling
    (``eval_ceiling``: a second projection seed) and, with stored Adam anchors, the pairs scored as a
    user query is (``eval_as_queried``)."""
    if not held or not len(pool):
        return
    r, spec, store = cfg.rankings, inp.spec, inp.store
    hs = np.array([side.wanted[q]["sample_id"] for q in held], dtype=np.int64)
    s = full_scores(side(held), store.lookup(pool))
    # The ceiling's rows are extracted exactly as the store's were (the pool's Adam direction
    # included), so only the projection differs.
    spec2 = ProjectionSpec(spec.kind, spec.seed + 1, spec.dim, spec.normalize_modules, spec.modules)
    g2 = np.concatenate([gradients.of_tokens(inp.tokens(hs), spec2) if side.plain_anchors
                         else gradients.pool_rows(inp.tokens(hs), spec2, cfg), _ceiling_pool_rows(cfg, inp, gradients, pool, spec2)])
    if r.precondition:  # approximated by the second seed's gradients of these samples
        g2[: len(hs)] = precondition(g2[: len(hs)], g2.astype(np.float64).T @ g2 / len(g2), r.damping)
    s2 = full_scores(g2[: len(hs)], g2[len(hs) :])
    as_queried = (full_scores(side.precondition(gradients.of_tokens(inp.tokens(hs))), store.lookup(pool))
                  if cfg.projection.adam_precondition and not side.plain_anchors else None)
    for j, q in enumerate(held):
        rows.add(q, pool, s[j], "eval")
        rows.add(q, pool, s2[j], "eval_ceiling")
        if as_queried is not None:
            rows.add(q, pool, as_queried[j], "eval_as_queried")


def _ceiling_pool_rows(cfg: Config, inp: _Inputs, gradients: QueryGradients, pool: np.ndarray, spec2: ProjectionSpec) -> np.ndarray:
    """The held-out pool's rows under the second seed, cached beside the store (the pool is fixed between rebuilds)."""
    tokens = dict(zip(pool.tolist(), inp.tokens(pool), strict=True))
    keys = [{"query_id": str(p), "text": short_hash(tokens[p].input_ids, tokens[p].loss_start), "prompt": None} for p in tokens]
    rows = cached_query_gradients(inp.store.root / CEILING_POOL_CACHE, keys, lambda missing: gradients.pool_rows(
        [tokens[int(k["query_id"])] for k in missing], spec2, cfg), inp.store.dim)
    return np.stack([rows[str(p)] for p in tokens])


def _update(inp: _Inputs, wanted: dict[str, dict[str, Any]], queries: QueryChanges, shards: ShardChanges, rows: ScoreRows,
            state: dict[str, str], run_id: str, dagster_run_id: str | None, preconditioned: bool) -> rankings_db.Update:
    """The tables this run writes, as one update of the database."""
    new = queries.new
    added = np.isin(inp.corpus.column("shard").to_numpy(zero_copy_only=False), shards.added)
    samples = (inp.corpus.drop_columns(["input_ids"]).append_column("split", pa.array(inp.splits.tolist(), pa.string()))
               .filter(pa.array(added)))
    query_table = pa.table({
        "query_id": new, "kind": [wanted[q]["kind"] for q in new], "text": [wanted[q]["text"] for q in new],
        "prompt": pa.array([wanted[q]["prompt"] for q in new], pa.string()),
        "sample_id": pa.array([wanted[q]["sample_id"] for q in new], pa.int64()),
        "split": pa.array([wanted[q]["split"] for q in new], pa.string()), "meta": [wanted[q]["meta"] for q in new],
    })
    spec, now = inp.spec, datetime.now(timezone.utc).replace(tzinfo=None)
    run = pa.table({
        "run_id": [run_id], "base_model_hash": [inp.base["model_hash"]], "projection": [spec.kind], "dim": [inp.store.dim],
        "seed": [spec.seed], "dataset_version": [inp.manifest["dataset_version"]], "store_key": [inp.store.root.name],
        "mode": ["rebuild" if shards.rebuild else "incremental"], "preconditioned": [preconditioned], "created_at": [now],
        "dagster_run_id": [dagster_run_id],
    })
    scores = rows.table(run_id)
    return rankings_db.Update(
        rebuild=shards.rebuild, samples=samples, quarantine=read_quarantine(inp.paths.corpus), queries=query_table, scores=scores,
        run=run, state=state, drop_shards=shards.removed, drop_queries=queries.dropped, relisted=queries.merged + queries.dirty,
    )


def _anchor_counts(wanted: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {f"anchors_{split}": sum(1 for q in wanted.values() if q["kind"] == "anchor" and q["split"] == split)
            for split in ("train", "heldout")}


def _planted_recall(home: Any, user: list[dict[str, Any]], metas: list[str], ids: np.ndarray, k: int) -> float | None:
    """The teacher's recall@k of the planted samples behind the user queries that name a planted group."""
    groups = planted_members(metas, ids)
    probes = [(q["query_id"], groups.get(json.loads(q["meta"]).get("planted_group"), set())) for q in user]
    probes = [(q, rel) for q, rel in probes if rel]
    tops = _existing_lists(home, [q for q, _ in probes], "top")
    return planted_recall([tops[q][0].tolist() for q, _ in probes], [rel for _, rel in probes], k) if probes else None
