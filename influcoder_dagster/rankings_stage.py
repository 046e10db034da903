"""The ``influence_rankings`` stage: build the rankings database, or update it doing only the new work.

A rebuild happens when there is no database yet, or when the gradient store (model or
projection) or the ranking options changed, or when preconditioning is on and the data changed
(the Fisher depends on every row). Otherwise:

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
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config
from .paths import Paths
from .teacher_stages import (
    StageResult,
    short_hash,
    base_model_record,
    dataset_files,
    open_store,
    planted_members,
    pool_extractor,
    read_queries,
)

QUERY_CACHE = "user_queries.npz"
ANCHOR_CACHE = "anchor_queries.npz"  # anchors' plain gradients, when the pool's rows are Adam directions
PRECONDITIONER_FILE = "preconditioner.safetensors"  # (F + lambda I)^-1, when the rankings are preconditioned


class _Decoder:
    """Loads the base model only if some query gradient has to be computed. Query gradients are
    plain (never Adam-preconditioned): LESS's asymmetry between validation and train gradients."""

    def __init__(self, base: dict[str, Any], cfg: Config) -> None:
        self.base, self.cfg, self._loaded = base, cfg, None

    def load(self) -> tuple[Any, Any]:
        from .decoder import load_decoder

        if self._loaded is None:
            self._loaded = load_decoder(self.base["path"], self.base.get("adapter"))
        return self._loaded

    def gradients(self, spec: Any, texts: list[str], prompts: list[str | None] | None) -> np.ndarray:
        from .decoder import tokenize_for_loss
        from .gradients import GradientExtractor, compute_gradients

        model, tokenizer = self.load()
        enc = tokenize_for_loss(tokenizer, texts, self.cfg.model.max_length, prompts)
        return compute_gradients(GradientExtractor(model, spec, tokenizer.pad_token_id), enc, self.cfg.projection.batch_size).numpy()


def cached_query_gradients(path: Path, queries: list[dict[str, Any]], compute: Callable[[list[dict[str, Any]]], np.ndarray],
                           dim: int) -> dict[str, np.ndarray]:
    """Query gradients cached in ``path`` (beside the store) by (id, text, prompt): only new or changed
    queries are computed, so a new shard needs no model for them."""
    from .atomic import atomic_path

    cached: dict[tuple[str, str, str], np.ndarray] = {}
    if path.exists():
        with np.load(path) as z:
            cached = {(q, t, p): g for q, t, p, g in zip(z["query_id"], z["text"], z["prompt"], z["grads"], strict=True)}
    key = lambda q: (q["query_id"], q["text"], q["prompt"] or "")  # noqa: E731
    missing = [q for q in queries if key(q) not in cached]
    if missing:
        cached.update({key(q): g for q, g in zip(missing, compute(missing), strict=True)})
    out = {q["query_id"]: cached[key(q)] for q in queries}
    if missing or len(cached) != len(queries):
        keys = [key(q) for q in queries]
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, query_id=np.array([k[0] for k in keys], dtype=str), text=np.array([k[1] for k in keys], dtype=str),
                         prompt=np.array([k[2] for k in keys], dtype=str),
                         grads=np.stack([cached[k] for k in keys]) if keys else np.zeros((0, dim), np.float32))
    return out


def plain_anchor_gradients(cfg: Config) -> bool:
    """Whether an anchor's query side is its plain gradient (as a user query's) rather than its stored row."""
    return cfg.projection.adam_precondition and cfg.rankings.anchor_gradients == "plain"


def write_preconditioner(store: Any, inverse: np.ndarray, damping: float) -> Path:
    """``(F + lambda I)^-1`` beside the store, so that a re-rank scores a query as these rankings do
    without a pass over the store; tagged with the store's data version it was estimated on."""
    from safetensors.numpy import save_file

    from .atomic import atomic_path

    with atomic_path(store.root / PRECONDITIONER_FILE) as tmp:
        save_file({"inverse": np.ascontiguousarray(inverse, dtype=np.float32)}, str(tmp),
                  metadata={"dataset_version": str(store.manifest.get("dataset_version")), "damping": str(damping)})
    return store.root / PRECONDITIONER_FILE


def read_preconditioner(store: Any) -> np.ndarray | None:
    """The preconditioner the last rankings run wrote, or None when they are plain cosines;
    raises when it was estimated on other data than the store now holds."""
    from safetensors import safe_open

    path = store.root / PRECONDITIONER_FILE
    if not path.exists():
        return None
    with safe_open(str(path), framework="numpy") as f:
        version = f.metadata().get("dataset_version")
        if version != str(store.manifest.get("dataset_version")):
            raise RuntimeError(f"{path} was estimated on data version {version}, but the store now holds "
                               f"{store.manifest.get('dataset_version')}; materialize 'influence_rankings'")
        return f.get_tensor("inverse")


def read_anchor_gradients(store_root: Path) -> dict[int, np.ndarray]:
    """The anchors' plain (query-side) gradients by sample id, as the last rankings run cached them."""
    from .teacher import anchor_sample_id

    path = store_root / ANCHOR_CACHE
    if not path.exists():
        return {}
    with np.load(path) as z:
        return {anchor_sample_id(q): g for q, g in zip(z["query_id"], z["grads"], strict=True)}


def _existing_lists(home: Any, query_ids: list[str], kind: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from .rankings_db import writer_query

    out: dict[str, tuple[list[int], list[float]]] = {q: ([], []) for q in query_ids}
    if not query_ids:
        return {}
    for qid, sid, score in writer_query(home, 'SELECT query_id, sample_id, score FROM scores WHERE kind = ? '
                                        'AND query_id IN (SELECT unnest(?)) ORDER BY query_id, "rank"', [kind, query_ids]):
        out[qid][0].append(sid)
        out[qid][1].append(score)
    return {q: (np.asarray(i, dtype=np.int64), np.asarray(s, dtype=np.float32)) for q, (i, s) in out.items()}


def run_influence_rankings(cfg: Config, dagster_run_id: str | None = None, progress: bool = True) -> StageResult:
    import pyarrow as pa

    from .decoder import Encoded
    from .gradients import GradientExtractor, compute_gradients
    from .metrics import planted_recall
    from .projection import ProjectionSpec
    from .rankings_db import Update, apply_update, read_state, writer_query
    from .scoring import (Ranked, apply_preconditioner, fisher, full_scores, inverse_preconditioner, merge_ranked, pair_scores,
                          precondition, stream_topk)
    from .teacher import ScoreRows, anchor_ids, anchor_query_id, eval_pool, pool_split, random_candidates
    from .tokenized import read_corpus, read_manifest, read_quarantine

    paths, r, home = Paths(cfg.home_path), cfg.rankings, cfg.home_path
    base = base_model_record(paths)
    manifest = read_manifest(paths.corpus)
    corpus = read_corpus(paths.corpus)
    store = open_store(paths)
    ids = corpus.column("sample_id").to_numpy()
    if not np.array_equal(np.sort(store.all_ids()), np.sort(ids)):
        raise RuntimeError("the gradient store does not cover the current corpus; materialize 'projected_gradients'")
    splits = pool_split(ids, r.heldout_fraction)
    row_of = {int(s): i for i, s in enumerate(ids)}
    texts, metas = corpus.column("text").to_pylist(), corpus.column("meta").to_pylist()
    spec = ProjectionSpec.from_json(store.manifest["projection"])
    decoder = _Decoder(base, cfg)

    shards_now = sorted(manifest["shards"])
    # Cross-shard duplicates are in the hash: when they change (the file a sample was first seen in
    # left), a shard keeps its name but not its rows, which only a rebuild handles (rare).
    duplicates = {n: e.get("excluded", []) for n, e in store.manifest["shards"].items() if e.get("excluded")}
    config_hash = short_hash(store.root.name, r.model_dump(), cfg.k, duplicates)
    state = read_state(home)
    prev_shards = json.loads(state["shards"]) if state else []
    rebuild = state is None or state.get("config_hash") != config_hash or (r.precondition and prev_shards != shards_now)
    prev_shards = [] if rebuild else prev_shards
    added = [s for s in shards_now if s not in prev_shards]
    removed = [s for s in prev_shards if s not in shards_now]

    # The queries wanted now, and how they relate to those already in the database.
    _, queries_path = dataset_files(cfg)
    user = read_queries(queries_path)
    anchors = anchor_ids(ids, r.anchor_fraction, r.seed)
    wanted: dict[str, dict[str, Any]] = {
        anchor_query_id(a): {"kind": "anchor", "text": texts[row_of[int(a)]], "prompt": None, "sample_id": int(a),
                             "split": str(splits[row_of[int(a)]]), "meta": metas[row_of[int(a)]]} for a in anchors}
    wanted.update({q["query_id"]: {"kind": "user", "text": q["text"], "prompt": q["prompt"], "sample_id": None,
                                   "split": None, "meta": q["meta"]} for q in user})
    existing = {} if rebuild else {q: (t, p) for q, t, p in writer_query(home, "SELECT query_id, text, prompt FROM queries")}
    same = lambda q: q in existing and existing[q] == (wanted[q]["text"], wanted[q]["prompt"])  # noqa: E731
    drop_queries = [q for q in existing if q not in wanted or not same(q)]
    new_queries = [q for q in wanted if not same(q)]
    removed_ids = {s for (s,) in writer_query(home, "SELECT sample_id FROM samples WHERE shard IN (SELECT unnest(?))", [removed])} if removed else set()
    kept = [q for q in wanted if same(q)]
    dirty = sorted({q for (q,) in writer_query(
        home, "SELECT DISTINCT query_id FROM scores WHERE kind IN ('top', 'bottom') AND sample_id IN (SELECT unnest(?))",
        [sorted(removed_ids)])} & set(kept)) if removed_ids else []
    full_q = new_queries + dirty
    merge_q = [q for q in kept if q not in dirty] if added else []

    user_grads = cached_query_gradients(store.root / QUERY_CACHE, user, lambda qs: decoder.gradients(
        spec, [q["text"] for q in qs], [q["prompt"] for q in qs]), store.dim)
    # With Adam-preconditioned pool rows and ``anchor_gradients = "plain"``, an anchor is scored as a
    # user query is (LESS): with its plain gradient, from the corpus's own tokens.
    plain_anchors = plain_anchor_gradients(cfg)
    token_column = corpus.column("input_ids")

    def tokens(sample_ids: Any) -> list[Any]:  # only the rows asked for leave Arrow
        return [Encoded(token_column[row_of[int(x)]].as_py()) for x in sample_ids]

    def plain_rows(spec_: Any, sample_ids: list[int]) -> np.ndarray:
        model, tokenizer = decoder.load()
        return compute_gradients(GradientExtractor(model, spec_, tokenizer.pad_token_id), tokens(sample_ids),
                                 cfg.projection.batch_size).numpy()

    anchor_grads = cached_query_gradients(
        store.root / ANCHOR_CACHE, [{"query_id": q, "text": w["text"], "prompt": None} for q, w in wanted.items() if w["kind"] == "anchor"],
        lambda qs: plain_rows(spec, [wanted[q["query_id"]]["sample_id"] for q in qs]), store.dim) if plain_anchors else {}
    transform = lambda g: g  # noqa: E731
    if r.precondition:
        inverse = inverse_preconditioner(fisher(store.iter_blocks(r.block_rows), store.dim), r.damping)
        transform = lambda g: apply_preconditioner(g, inverse)  # noqa: E731
        write_preconditioner(store, inverse, r.damping)
    else:
        (store.root / PRECONDITIONER_FILE).unlink(missing_ok=True)

    def query_grads(qids: list[str]) -> np.ndarray:
        out = np.zeros((len(qids), store.dim), dtype=np.float32)
        a_pos = [i for i, q in enumerate(qids) if wanted[q]["kind"] == "anchor"]
        if a_pos and not plain_anchors:
            out[a_pos] = store.lookup(np.array([wanted[qids[i]]["sample_id"] for i in a_pos]))
        for i, q in enumerate(qids):
            if wanted[q]["kind"] == "user":
                out[i] = user_grads[q]
            elif plain_anchors:
                out[i] = anchor_grads[q]
        return transform(out)

    def exclusions(qids: list[str]) -> np.ndarray:
        return np.array([wanted[q]["sample_id"] if wanted[q]["sample_id"] is not None else -1 for q in qids], dtype=np.int64)

    k = max(r.top_k, cfg.k)
    rows = ScoreRows()
    if full_q:
        top, bottom = stream_topk(query_grads(full_q), store.iter_blocks(r.block_rows), k, r.n_bottom, exclusions(full_q))
        rows.add_ranked(full_q, top, bottom)
    if merge_q:
        top, bottom = stream_topk(query_grads(merge_q), store.iter_blocks(r.block_rows, added), k, r.n_bottom, exclusions(merge_q))
        old_top, old_bottom = _existing_lists(home, merge_q, "top"), _existing_lists(home, merge_q, "bottom")
        for i, q in enumerate(merge_q):
            t = merge_ranked(Ranked(old_top[q][1][None], old_top[q][0][None]), Ranked(top.scores[i : i + 1], top.ids[i : i + 1]), k)
            b = merge_ranked(Ranked(old_bottom[q][1][None], old_bottom[q][0][None]),
                             Ranked(bottom.scores[i : i + 1], bottom.ids[i : i + 1]), r.n_bottom, largest=False)
            rows.add_ranked([q], t, b)

    # Training candidates and evaluation rows, for anchors that are new.
    new_anchors = [q for q in new_queries if wanted[q]["kind"] == "anchor"]
    train_pool = ids[splits == "train"]
    if new_anchors:
        g = query_grads(new_anchors)
        cands = [random_candidates(wanted[q]["sample_id"], train_pool if wanted[q]["split"] == "train" else ids, r.n_random, r.seed)
                 for q in new_anchors]
        width = min(len(c) for c in cands)
        cand_ids = np.stack([c[:width] for c in cands])
        scores = pair_scores(g, store.lookup(cand_ids.ravel()).reshape(*cand_ids.shape, store.dim))
        for i, q in enumerate(new_anchors):
            rows.add(q, cand_ids[i], scores[i], "random")
    if rebuild:
        pool = eval_pool(ids, splits, {int(a) for a in anchors}, r.eval_pool_size, r.seed)
    else:
        pool = np.array([p for p in json.loads(state["eval_pool"]) if p not in removed_ids], dtype=np.int64)
    held = [q for q in new_anchors if wanted[q]["split"] == "heldout"]
    if held and len(pool):
        hs = np.array([wanted[q]["sample_id"] for q in held], dtype=np.int64)
        s = full_scores(query_grads(held), store.lookup(pool))
        # The teacher's noise ceiling: the same pairs under a second projection seed, extracted
        # exactly as the store's rows were (the pool's Adam direction included), so only the
        # projection differs.
        spec2 = ProjectionSpec(spec.kind, spec.seed + 1, spec.dim, spec.normalize_modules, spec.modules)
        model, tokenizer = decoder.load()
        g2 = compute_gradients(pool_extractor(model, tokenizer, spec2, decoder.base, cfg),
                               tokens(np.concatenate([hs, pool])), cfg.projection.batch_size).numpy()
        if plain_anchors:
            g2[: len(hs)] = plain_rows(spec2, hs.tolist())
        if r.precondition:  # approximated by the second seed's gradients of these samples
            g2[: len(hs)] = precondition(g2[: len(hs)], g2.astype(np.float64).T @ g2 / len(g2), r.damping)
        s2 = full_scores(g2[: len(hs)], g2[len(hs) :])
        # With stored (Adam) anchors the encoder learns one view of the teacher, while a user query
        # is scored with its plain gradient; the same pairs scored that way show what users get.
        as_queried = (full_scores(transform(plain_rows(spec, hs.tolist())), store.lookup(pool))
                      if cfg.projection.adam_precondition and not plain_anchors else None)
        for j, q in enumerate(held):
            rows.add(q, pool, s[j], "eval")
            rows.add(q, pool, s2[j], "eval_ceiling")
            if as_queried is not None:
                rows.add(q, pool, as_queried[j], "eval_as_queried")

    version = short_hash(config_hash, manifest["dataset_version"], sorted((q, wanted[q]["text"]) for q in wanted))
    run_id = short_hash(version, datetime.now(timezone.utc).isoformat())
    add_mask = np.isin(corpus.column("shard").to_numpy(zero_copy_only=False), added)
    samples = corpus.drop_columns(["input_ids"]).append_column("split", pa.array(splits.tolist(), pa.string())).filter(pa.array(add_mask))
    queries = pa.table({
        "query_id": new_queries, "kind": [wanted[q]["kind"] for q in new_queries], "text": [wanted[q]["text"] for q in new_queries],
        "prompt": pa.array([wanted[q]["prompt"] for q in new_queries], pa.string()),
        "sample_id": pa.array([wanted[q]["sample_id"] for q in new_queries], pa.int64()),
        "split": pa.array([wanted[q]["split"] for q in new_queries], pa.string()), "meta": [wanted[q]["meta"] for q in new_queries],
    })
    run = pa.table({
        "run_id": [run_id], "base_model_hash": [base["model_hash"]], "projection": [spec.kind], "dim": [spec.dim], "seed": [spec.seed],
        "dataset_version": [manifest["dataset_version"]], "store_key": [store.root.name], "mode": ["rebuild" if rebuild else "incremental"],
        "preconditioned": [r.precondition], "created_at": [datetime.now(timezone.utc).replace(tzinfo=None)], "dagster_run_id": [dagster_run_id],
    })
    scores_table = pa.table({
        "query_id": pa.array(rows.query_id, pa.string()), "sample_id": pa.array(rows.sample_id, pa.int64()),
        "score": pa.array(rows.score, pa.float32()), "rank": pa.array(rows.rank, pa.int32()),
        "kind": pa.array(rows.kind, pa.string()), "run_id": pa.array([run_id] * len(rows), pa.string()),
    })
    apply_update(home, Update(
        rebuild=rebuild, samples=samples, quarantine=read_quarantine(paths.corpus), queries=queries, scores=scores_table, run=run,
        state={"config_hash": config_hash, "shards": json.dumps(shards_now), "eval_pool": json.dumps([int(p) for p in pool])},
        drop_shards=removed, drop_queries=drop_queries, relisted=merge_q + dirty,
    ))

    groups = planted_members(metas, ids)
    probes = [(q["query_id"], groups.get(json.loads(q["meta"]).get("planted_group"), set())) for q in user]
    probes = [(q, rel) for q, rel in probes if rel]
    tops = _existing_lists(home, [q for q, _ in probes], "top")
    teacher_recall = planted_recall([tops[q][0].tolist() for q, _ in probes], [rel for _, rel in probes], cfg.k) if probes else None
    n_anchor = {sp: sum(1 for q in wanted.values() if q["kind"] == "anchor" and q["split"] == sp) for sp in ("train", "heldout")}
    return StageResult({
        "path": str(home / "rankings.duckdb"), "run_id": run_id, "mode": "rebuild" if rebuild else "incremental",
        "shards_added": added, "shards_removed": removed, "queries_scored_in_full": len(full_q),
        "queries_merged_with_new_shards": len(merge_q), "queries_dropped": len(drop_queries),
        "samples": len(ids), "anchors_train": n_anchor["train"], "anchors_heldout": n_anchor["heldout"], "user_queries": len(user),
        "score_rows_written": len(rows), "preconditioned": r.precondition,
        f"teacher_planted_recall_at_{cfg.k}": teacher_recall, "base_model_hash": base["model_hash"],
        "dataset_version": manifest["dataset_version"], "projection": spec.kind, "dim": spec.dim, "seed": spec.seed,
        "bytes": (home / "rankings.duckdb").stat().st_size,
    }, version)
