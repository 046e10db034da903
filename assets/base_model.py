"""The decoder being attributed: a local Hugging Face model, or the tiny one trained on the corpus."""

import dagster as dg

from influcoder_dagster import teacher_stages
from influcoder_dagster.resources import InflucoderConfig

from ._wrap import run_stage


@dg.asset(group_name="teacher", kinds={"pytorch"}, code_version="1",
          description="The base causal LM (models/); its content hash is every downstream artifact's provenance.")
def base_model(influcoder: InflucoderConfig) -> dg.MaterializeResult:
    return run_stage(lambda: teacher_stages.run_base_model(influcoder.load()))[1]
