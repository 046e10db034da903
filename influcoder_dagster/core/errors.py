"""One exception hierarchy: every error the engine raises for a user to act on is an ``InflucoderError``.

The CLI prints these as one line (no traceback); the Dagster UI shows the message on the failed
step. A ``MissingUpstreamError`` always names the asset to materialize.
"""

from __future__ import annotations


class InflucoderError(Exception):
    """Base of every error that says what the user should do next."""


class ConfigError(InflucoderError, ValueError):
    """The configuration file or a setting in it is wrong; the message names the file and the field."""


class DatasetError(InflucoderError, ValueError):
    """A dataset file cannot be read as a whole (a bad row is quarantined instead)."""


class MissingUpstreamError(InflucoderError, LookupError):
    """An upstream asset is missing or was built from other inputs than the current ones."""

    def __init__(self, problem: str, *assets: str) -> None:
        self.problem, self.assets = problem, assets
        names = ", ".join(f"'{a}'" for a in assets[:-1]) + (" and " if len(assets) > 1 else "") + f"'{assets[-1]}'"
        select = ",".join(a.split("[")[0] for a in assets)
        super().__init__(f"{problem}; materialize {names} (influcoder materialize --select {select})")
