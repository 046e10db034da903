"""The settings that decide each asset's content, as data versions: a config change reaches lineage.

Each section below is an observable source asset (``<section>_settings``) upstream of the one asset
it decides; the runner and the sensor observe them. A changed value makes that asset unsynced in
the UI, and ``influcoder materialize`` rebuilds it and, through new data versions, what follows.
Settings that change only how fast a stage runs (batch sizes, out-of-process) are left out.
"""

from __future__ import annotations

from typing import Any

from influcoder_dagster.core.config import Config
from influcoder_dagster.core.hashing import short_hash
from influcoder_dagster.teacher.store import requested_projection

# section -> the asset whose content it decides
DECIDES = {
    "dataset": "tokenized_corpus",
    "projection": "projected_gradients",
    "rankings": "influence_rankings",
    "encoder": "influcoder_encoder",
    "index": "embedding_index",
}


def settings_of(cfg: Config, section: str) -> dict[str, Any]:
    """The content-deciding settings of ``section``."""
    if section == "dataset":
        return {**cfg.dataset.model_dump(include={"text_field", "max_chars", "min_chars"}), "max_length": cfg.model.max_length}
    if section == "projection":  # the head factors beside the store rows too
        return {**requested_projection(cfg), **cfg.projection.model_dump(include={"head_factors", "head_factors_top_k", "head_factors_rank"})}
    if section == "rankings":
        return {**cfg.rankings.model_dump(), "k": cfg.k}
    return getattr(cfg, section).model_dump()


def settings_version(cfg: Config, section: str) -> str:
    return short_hash(section, settings_of(cfg, section))
