"""The settings that decide an asset's content, as observable sources upstream of it (see stages.settings)."""

import warnings

import dagster as dg

from influcoder_dagster.stages.settings import DECIDES, settings_version


def _settings_source(section: str) -> dg.SourceAsset:
    def observe(context: dg.AssetExecutionContext) -> dg.DataVersion:
        return dg.DataVersion(settings_version(context.resources.influcoder.load(), section))

    with warnings.catch_warnings():  # observable_source_asset is marked beta; it is what this asset is
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.observable_source_asset(
            name=f"{section}_settings", group_name="settings", required_resource_keys={"influcoder"},
            description=f"A hash of the [{section}] settings that decide {DECIDES[section]}: a change makes it unsynced.")(observe)


dataset_settings, projection_settings, rankings_settings, encoder_settings, index_settings = (
    _settings_source(section) for section in DECIDES)
