"""Ranking-distillation losses, one per file, small and composable in the manner of sentence-transformers' losses.

Every loss takes ``student`` similarities and ``teacher`` scores of shape (anchors, candidates),
with teacher scores already z-scored per anchor, and returns a scalar.
"""

from influcoder_dagster.student.losses.calibration import CalibrationLoss, zscore_rows
from influcoder_dagster.student.losses.distillation import DistillationLoss
from influcoder_dagster.student.losses.listwise_kl import ListwiseKLLoss
from influcoder_dagster.student.losses.ranknet import GapWeightedRankNetLoss

__all__ = ["CalibrationLoss", "DistillationLoss", "GapWeightedRankNetLoss", "ListwiseKLLoss", "zscore_rows"]
