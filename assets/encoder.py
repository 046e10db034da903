"""The distilled encoder, tracked in MLflow and gated by a blocking quality check."""

import dagster as dg

from influcoder_dagster.orchestration.resources import InflucoderConfig
from influcoder_dagster.stages.encoder import run_encoder

from ._wrap import run_stage

RETRAIN_CRON = "0 3 * * 0"  # weekly: training is the expensive step
# Due once the rankings changed since the cron tick; a settings source is observed, not updated, every week.
WEEKLY_RETRAIN = dg.AutomationCondition.on_cron(RETRAIN_CRON).ignore(dg.AssetSelection.assets("encoder_settings"))

QUALITY_GATE = dg.AssetCheckSpec(
    "quality_gate", asset="influcoder_encoder", blocking=True,
    description="The new version beats the untrained encoder, BM25, random and the current champion on held-out Spearman.",
)


@dg.asset(group_name="student", deps=["influence_rankings", "encoder_settings"], kinds={"mlflow", "pytorch"}, code_version="1",
          check_specs=[QUALITY_GATE], automation_condition=WEEKLY_RETRAIN,
          description="MiniLM trained to predict a text's gradient sketch (default) or distilled on the teacher's rankings; "
                      "registered in MLflow, promoted to 'champion' if it passes.")
def influcoder_encoder(influcoder: InflucoderConfig) -> dg.MaterializeResult:
    result, materialization = run_stage(lambda: run_encoder(influcoder.load()))
    gate = dg.AssetCheckResult(check_name="quality_gate", passed=bool(result.metadata["promoted"]),
                               metadata={"reason": result.metadata["promotion_reason"]})
    return dg.MaterializeResult(metadata=materialization.metadata, data_version=materialization.data_version,
                                check_results=[gate])
