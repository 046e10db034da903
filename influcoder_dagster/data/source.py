"""Where the data comes from: the configured dataset and query files, or the demo's (written on first use)."""

from __future__ import annotations

from pathlib import Path

from influcoder_dagster.core.config import Config
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.data.dataset import shard_files
from influcoder_dagster.data.demo import write_demo_dataset


def dataset_files(cfg: Config) -> tuple[Path, Path | None]:
    """The dataset and query file; without a configured dataset, the demo's (written on first use)."""
    if cfg.dataset.path:
        return Path(cfg.dataset.path), Path(cfg.dataset.queries_path) if cfg.dataset.queries_path else None

    files = write_demo_dataset(Paths(cfg.home_path).demo, cfg.demo, cfg.dataset.max_chars)
    queries = Path(cfg.dataset.queries_path) if cfg.dataset.queries_path else files["queries"]
    return files["dataset"], queries


def data_tag(cfg: Config) -> str:
    """Where the data comes from (for the tiny decoder's recipe): the dataset path or the demo's settings."""
    return cfg.dataset.path or f"demo:{cfg.demo.model_dump_json()}|{cfg.dataset.max_chars}"


def current_shards(cfg: Config) -> dict[str, Path]:
    """Shard name (the partition key) -> dataset file, as the dataset is now."""
    path, _ = dataset_files(cfg)
    return shard_files(path, cfg.dataset)
