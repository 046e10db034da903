"""MLflow, embedded: a sqlite tracking store and a local artifact folder under the storage root.

The encoder is logged with MLflow's sentence-transformers flavour, so
``mlflow.sentence_transformers.load_model("models:/influcoder-encoder@champion")`` reloads it
without this package.
"""

from __future__ import annotations

import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from filelock import FileLock

from influcoder_dagster.core.paths import Paths
from influcoder_dagster.student.sketch import BASIS_FILE, Sketch

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from influcoder_dagster.student.sketch import Sketch

EXPERIMENT = "influcoder-encoder"
CHAMPION = "champion"
OBJECTIVE_TAG = "influcoder.objective"  # on every training run: "gradient_sketch" or "rankings"


def tracking_uri(home: Path) -> str:
    return f"sqlite:///{Paths(home).mlflow_db}"


def setup(home: Path) -> str:
    """Point MLflow at the embedded store; returns the experiment id.

    Parallel shard runs may be the first to open the store: a file lock keeps two processes from
    creating its sqlite schema at once (MLflow's migrations are not safe against that).
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(home))
    mlflow.set_registry_uri(tracking_uri(home))
    home.mkdir(parents=True, exist_ok=True)
    artifacts = Paths(home).mlflow_artifacts.as_uri()
    with FileLock(str(Paths(home).mlflow_db) + ".lock"):
        exp = mlflow.get_experiment_by_name(EXPERIMENT)
        if exp is not None and exp.artifact_location != artifacts:  # the storage root was moved or copied
            relocate_artifacts(Paths(home).mlflow_db, exp.artifact_location, artifacts)
        exp_id = exp.experiment_id if exp else mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def end_orphan_runs(home: Path) -> list[str]:
    """Mark the experiment's runs still RUNNING as KILLED: called only when the materialize that opened them
    is known to be dead, so they would otherwise show as running in the MLflow UI forever."""
    if not Paths(home).mlflow_db.exists():
        return []
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(home), registry_uri=tracking_uri(home))
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    orphans = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")
    for run in orphans:
        client.set_terminated(run.info.run_id, status="KILLED")
    return [run.info.run_id for run in orphans]


# Every column in which MLflow (3.x, sqlite store) writes an absolute artifact URI.
ARTIFACT_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("logged_models", "artifact_location"),
                    ("model_versions", "storage_location"), ("model_versions", "source"))


def relocate_artifacts(db: Path, old: str, new: str) -> None:
    """Rewrite the artifact URIs MLflow stored under ``old`` to ``new``, after the storage root moved.

    Hand-written because MLflow has no API for it: it records absolute URIs and cannot follow a
    moved folder. One transaction over the tracking database, so a failure changes nothing.
    """
    import sqlite3

    con = sqlite3.connect(db)
    try:
        with con:
            for table, column in ARTIFACT_COLUMNS:
                exists = con.execute("SELECT 1 FROM pragma_table_info(?) WHERE name = ?", (table, column)).fetchone()
                if exists:
                    con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                                (new, len(old) + 1, len(old), old))
    finally:
        con.close()


def pip_requirements() -> list[str]:
    """Pinned from the running environment, so MLflow does not spend seconds inferring them."""
    return [f"{p}=={version(p)}" for p in ("sentence-transformers", "transformers", "torch")]


def log_encoder(model: SentenceTransformer, registered_name: str) -> tuple[str, str]:
    """Log the model in the active run and register it; returns (model URI, registered version)."""
    import mlflow.sentence_transformers

    info = mlflow.sentence_transformers.log_model(
        model, name="encoder", registered_model_name=registered_name, pip_requirements=pip_requirements()
    )
    return info.model_uri, str(info.registered_model_version)


def load_registered(home: Path, name: str, version_or_alias: str) -> SentenceTransformer:
    import mlflow.sentence_transformers

    setup(home)
    sep = "@" if not version_or_alias.isdigit() else "/"
    return mlflow.sentence_transformers.load_model(f"models:/{name}{sep}{version_or_alias}")


def set_champion(name: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(name, CHAMPION, version)


def champion_version(name: str) -> str | None:
    champion = champion_run(name)
    return None if champion is None else champion[0]


def champion_run(name: str) -> tuple[str, str] | None:
    """(version, MLflow run id) of the champion. A version number alone does not name one model:
    a new tracking database (``mlflow.db`` deleted) numbers its versions from 1 again."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        found = MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return str(found.version), str(found.run_id)


def log_figures(teacher: np.ndarray, student: np.ndarray, per_anchor_spearman: np.ndarray, epoch_losses: list[dict[str, float]]) -> None:
    """The plots people read faster than the numbers: score scatter, Spearman histogram, loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(teacher.ravel(), student.ravel(), s=3, alpha=0.3)
    ax.set(xlabel="teacher score (gradient cosine)", ylabel="student similarity", title="Held-out anchors x held-out pool")
    mlflow.log_figure(fig, "plots/teacher_vs_student.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.hist(per_anchor_spearman, bins=20)
    ax.set(xlabel="Spearman vs teacher", ylabel="held-out anchors", title="Per-anchor rank agreement")
    mlflow.log_figure(fig, "plots/per_anchor_spearman.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    for key in epoch_losses[0] if epoch_losses else []:
        ax.plot([e[key] for e in epoch_losses], marker="o", label=key)
    ax.set(xlabel="epoch", ylabel="mean loss", title="Distillation loss")
    if epoch_losses:
        ax.legend()
    mlflow.log_figure(fig, "plots/loss_curves.png")
    plt.close(fig)


def flat_metrics(table: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {f"{method}.{k}": v for method, row in table.items() for k, v in row.items() if v == v}


def log_sketch(sketch: Sketch) -> None:
    """The gradient-sketch basis, an artifact of the active run: the index projects store rows with it."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(sketch.save(Path(tmp) / BASIS_FILE)), artifact_path="sketch")


def load_sketch(name: str, version: str, folder: Path) -> Sketch | None:
    """The sketch basis of a registered version, cached in ``folder``; None for a rankings-distilled encoder."""
    import mlflow
    from mlflow import MlflowClient

    cached = folder / BASIS_FILE
    if not cached.exists():
        client = MlflowClient()
        run_id = client.get_model_version(name, version).run_id
        if client.get_run(run_id).data.tags.get(OBJECTIVE_TAG) != "gradient_sketch":
            return None
        folder.mkdir(parents=True, exist_ok=True)
        Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"sketch/{BASIS_FILE}", dst_path=str(folder))).replace(cached)
    return Sketch.load(cached)


def champion_spearman(name: str, version: str) -> float | None:
    """The held-out Spearman the registered ``version`` was promoted on."""
    from mlflow import MlflowClient

    client = MlflowClient()
    run_id = client.get_model_version(name, version).run_id
    return client.get_run(run_id).data.metrics.get("student.spearman")
