"""Where each artifact lives under the storage root (``INFLUCODER_HOME``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    home: Path

    @property
    def demo(self) -> Path:
        return self.home / "demo"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def base_model_pointer(self) -> Path:
        return self.models / "base_model.json"

    @property
    def corpus(self) -> Path:
        return self.home / "corpus"

    @property
    def gradients(self) -> Path:
        return self.home / "gradients"

    @property
    def gradients_pointer(self) -> Path:
        return self.gradients / "current.json"

    @property
    def corpus_manifest(self) -> Path:
        return self.corpus / "manifest.json"

    @property
    def rankings_db(self) -> Path:
        """The writer database; readers open the snapshot."""
        return self.home / "rankings.duckdb"

    @property
    def rankings_snapshot(self) -> Path:
        return self.home / "rankings.snapshot.duckdb"

    @property
    def rankings_parquet(self) -> Path:
        return self.home / "rankings"

    @property
    def eval(self) -> Path:
        return self.home / "eval"

    @property
    def encoder_eval(self) -> Path:
        return self.eval / "encoder_eval.json"

    @property
    def encoder_pointer(self) -> Path:
        return self.models / "encoder.json"

    @property
    def embeddings(self) -> Path:
        return self.home / "embeddings"

    @property
    def index(self) -> Path:
        return self.home / "index"

    @property
    def index_manifest(self) -> Path:
        """The index's commit point: names the version folder that holds the index and its encoder."""
        return self.index / "manifest.json"

    @property
    def mlflow_db(self) -> Path:
        """MLflow's tracking store (sqlite); ``mlflow ui --backend-store-uri sqlite:///<this>`` shows it."""
        return self.home / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def audits(self) -> Path:
        return self.home / "audits"

    @property
    def writer_lock(self) -> Path:
        """Held by the one process materializing into this root (``core.writer_lock``)."""
        return self.home / ".writer.lock"

    @property
    def writer_holder(self) -> Path:
        """Who holds the writer lock: pid, host, command, since when."""
        return self.home / ".writer.json"

    @property
    def demo_summary(self) -> Path:
        return self.home / "demo_summary.json"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster_home"
