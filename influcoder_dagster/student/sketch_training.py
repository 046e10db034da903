"""Training the gradient-sketch student: fit the sketch on the store, a ridge head onto it, then fine-tune.

Documents keep the teacher's own gradient rows in the sketch basis; only queries go through the
encoder, which learns a text's query-side sketch from every training sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from influcoder_dagster.core.config import Config
from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.student.distill import TrainResult
from influcoder_dagster.student.encoder import encode
from influcoder_dagster.student.evaluation import EvalSet
from influcoder_dagster.student.sketch import Sketch, fine_tune, fit_sketch, with_sketch_head
from influcoder_dagster.student.token_bag import decoder_tokenizer, token_bag_student
from influcoder_dagster.teacher.base_model import base_model_record
from influcoder_dagster.teacher.pair_teacher import PairTeacher

SKETCH_BATCH = 32
SKETCH_FIT_ROWS = 50_000  # store rows the sketch basis is fitted on (a random sample beyond that) ...
SKETCH_FIT_BYTES = 512 * 2**20  # ... and at most this much float32 of them (~17,000 SmolLM2 rows)


class SketchScorer:
    """Held-out scores of a gradient-sketch student: its query embeddings against the documents'
    own sketched store rows (looked up by text; equal texts have equal gradients)."""

    def __init__(self, model: Any, sketch: Sketch, docs: dict[str, np.ndarray]) -> None:
        self.model, self.sketch, self.docs = model, sketch, docs

    def __call__(self, queries: list[str], docs: list[str]) -> np.ndarray:
        return encode(self.model, queries, "query") @ np.stack([self.docs[t] for t in docs]).T


def train_sketch_student(cfg: Config, start: Any, pair_teacher: PairTeacher, data: EvalSet, train: tuple[list[int], list[str]],
                         on_epoch: Callable[[int, dict[str, float]], None], progress: bool
                         ) -> tuple[Any, SketchScorer, TrainResult, dict[str, Any]]:
    """Fit the sketch on the store, then the query side over the training samples ``train`` (ids,
    texts): the decoder-token bag, or a ridge head on ``start`` (the starting encoder) that is
    then fine-tuned."""
    e, store = cfg.encoder, pair_teacher.store
    rng = np.random.default_rng(e.seed)
    train_ids, train_texts = train
    sketch = fit_training_sketch(cfg, store, np.asarray(train_ids, dtype=np.int64), pair_teacher.damping)
    doc_ids, doc_vectors, targets = _sketch_pass(store, sketch, np.asarray(train_ids, dtype=np.int64), pair_teacher, cfg.rankings.block_rows)
    if e.query_features == "decoder_output_gradient":
        from influcoder_dagster.student.output_gradient import output_gradient_student

        base = base_model_record(Paths(cfg.home_path))
        model, fit = output_gradient_student(base, cfg.model.max_length, train_texts, targets, e.seed, progress)
    elif e.reads_decoder_tokens:
        tokenizer = decoder_tokenizer(base_model_record(Paths(cfg.home_path))["path"], cfg.model.max_length)
        model, fit = token_bag_student(tokenizer, train_texts, targets, e.seed)
    else:
        model, fit = with_sketch_head(start, train_texts, targets, seed=e.seed)
    result = TrainResult()
    if e.sketch_epochs > 0 and not e.reads_decoder_tokens:  # the bag is linear: ridge already is its least-squares fit
        tune = np.sort(rng.choice(len(train_texts), min(len(train_texts), e.sketch_finetune_max), replace=False))
        losses = fine_tune(model, [train_texts[i] for i in tune], targets[tune], e, SKETCH_BATCH, progress)
        for ep, loss in enumerate(losses):
            on_epoch(ep, {"loss": loss})
        result.epoch_losses = [{"loss": v} for v in losses]
        result.steps = e.sketch_epochs * -(-len(tune) // SKETCH_BATCH)
    docs: dict[str, np.ndarray] = {}
    for text, row in zip(data.corpus_texts, np.searchsorted(doc_ids, data.corpus_ids), strict=True):
        docs.setdefault(text, doc_vectors[row])
    fit = {**fit, "sketch_dim": sketch.dim, "sketch_fit_rows": sketch.provenance["fit_rows"], "sketch_train_samples": len(train_texts)}
    return model, SketchScorer(model, sketch, docs), result, fit


def fit_training_sketch(cfg: Config, store: Any, train_ids: np.ndarray, damping: float | None) -> Sketch:
    """The sketch basis, fitted on training samples' rows only (a random subset within the memory
    bound): no held-out anchor or held-out pool sample shapes the basis the evaluation scores through."""
    e = cfg.encoder
    n = min(len(train_ids), SKETCH_FIT_ROWS, SKETCH_FIT_BYTES // (4 * store.dim))
    fit_ids = np.sort(np.random.default_rng(e.seed).choice(train_ids, n, replace=False))
    return fit_sketch(store.lookup(fit_ids), e.sketch_dim, e.seed, store_key=store.root.name,
                      base_model_hash=store.manifest.get("base_model_hash"), dataset_version=store.manifest.get("dataset_version"),
                      projection=store.manifest.get("projection"), precondition_damping=damping, fitted_on="train split")


def _sketch_pass(store: Any, sketch: Sketch, train_ids: np.ndarray, pair_teacher: PairTeacher, block_rows: int
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
        raise MissingUpstreamError(f"training samples not in the gradient store: {train_ids[~found][:5].tolist()}",
                                   "influence_rankings")
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int64)
    docs = np.concatenate(doc_parts) if doc_parts else np.zeros((0, sketch.dim), dtype=np.float32)
    by_id = np.argsort(ids)
    return ids[by_id], docs[by_id], targets
