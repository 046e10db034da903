"""The Dagster resource that hands every asset the one configuration."""

from __future__ import annotations

import dagster as dg

from influcoder_dagster.core.config import Config, load_config


class InflucoderConfig(dg.ConfigurableResource):
    """Reads the TOML config (``config_path``, else ``INFLUCODER_CONFIG``, else defaults)."""

    config_path: str | None = None

    def load(self) -> Config:
        return load_config(self.config_path)
