"""The decoder being attributed: its files (an observable source) and the loaded, recorded model."""

import warnings

import dagster as dg

from influcoder_dagster.orchestration.resources import InflucoderConfig
from influcoder_dagster.stages.base_model import base_model_version, run_base_model

from ._wrap import run_stage


def _observe_base_model(context: dg.AssetExecutionContext) -> dg.DataVersion:
    return dg.DataVersion(base_model_version(context.resources.influcoder.load()))


with warnings.catch_warnings():  # observable_source_asset is marked beta; it is what this asset is
    warnings.simplefilter("ignore", dg.BetaWarning)
    base_model_files = dg.observable_source_asset(
        name="base_model_files", group_name="teacher", required_resource_keys={"influcoder"},
        description="The configured model folder's content hash (or the tiny decoder's recipe). "
                    "A new value makes everything downstream unsynced.")(_observe_base_model)


@dg.asset(group_name="teacher", deps=[base_model_files], kinds={"pytorch"}, code_version="2",
          automation_condition=dg.AutomationCondition.eager(),
          description="models/base_model.json: the causal LM to attribute (trained first if 'tiny'); its hash is every "
                      "downstream artifact's provenance.")
def base_model(influcoder: InflucoderConfig) -> dg.MaterializeResult:
    return run_stage(lambda: run_base_model(influcoder.load()))[1]
