"""The composition root: every asset, check, job, schedule and resource of the code location.

Importing this module must stay cheap (no torch, transformers, faiss or mlflow): the engine
imports them inside the functions that need them.
"""

import dagster as dg

from assets import base_model, corpus, embeddings, encoder, gradients, index, rankings, settings
from influcoder_dagster.orchestration.automation import (
    dataset_sensor,
    nightly_reindex,
    refresh,
    reindex,
    retrain,
    shards,
    weekly_retrain,
)
from influcoder_dagster.orchestration.resources import InflucoderConfig

ASSET_MODULES = [settings, base_model, corpus, gradients, rankings, encoder, embeddings, index]
ASSETS = dg.load_assets_from_modules(ASSET_MODULES)
ASSET_CHECKS = dg.load_asset_checks_from_modules(ASSET_MODULES)

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=ASSET_CHECKS,
    jobs=[shards, refresh, reindex, retrain],
    schedules=[nightly_reindex, weekly_retrain],
    sensors=[dataset_sensor],
    resources={"influcoder": InflucoderConfig()},
)
