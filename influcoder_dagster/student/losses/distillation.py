"""The weighted sum the ``rankings`` objective trains with: listwise KL, gap-weighted RankNet, calibration."""

from __future__ import annotations

import torch
from torch import nn

from influcoder_dagster.core.config import EncoderConfig
from influcoder_dagster.student.losses.calibration import CalibrationLoss, zscore_rows
from influcoder_dagster.student.losses.listwise_kl import ListwiseKLLoss
from influcoder_dagster.student.losses.ranknet import GapWeightedRankNetLoss


class DistillationLoss(nn.Module):
    """The weighted sum used to train the Influcoder encoder; returns the total and its parts."""

    def __init__(self, w_listwise: float, w_pairwise: float, w_calibration: float, tau_teacher: float, tau_student: float) -> None:
        super().__init__()
        self.parts = nn.ModuleDict({
            "listwise": ListwiseKLLoss(tau_teacher, tau_student),
            "pairwise": GapWeightedRankNetLoss(tau_student),
            "calibration": CalibrationLoss(),
        })
        self.weights = {"listwise": w_listwise, "pairwise": w_pairwise, "calibration": w_calibration}

    @classmethod
    def from_config(cls, cfg: EncoderConfig) -> DistillationLoss:
        return cls(cfg.w_listwise, cfg.w_pairwise, cfg.w_calibration, cfg.tau_teacher, cfg.tau_student)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        teacher = zscore_rows(teacher)
        values = {name: loss(student, teacher) for name, loss in self.parts.items() if self.weights[name]}
        total = sum(self.weights[n] * v for n, v in values.items())
        return total, {n: float(v.detach()) for n, v in values.items()}
