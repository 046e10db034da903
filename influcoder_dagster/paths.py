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
    def eval(self) -> Path:
        return self.home / "eval"

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
    def index_encoder(self) -> Path:
        """The encoder the index was built with, saved beside it so queries need no MLflow import."""
        return self.index / "encoder"

    @property
    def demo_summary(self) -> Path:
        return self.home / "demo_summary.json"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster_home"
