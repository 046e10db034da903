"""Ranking-distillation losses, small and composable in the manner of sentence-transformers' losses.

Every loss takes ``student`` similarities and ``teacher`` scores of shape (anchors, candidates),
with teacher scores already z-scored per anchor, and returns a scalar.
"""

from __future__ import annotations

import torch
from torch import nn


def zscore_rows(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + eps)


class ListwiseKLLoss(nn.Module):
    """KL(softmax(teacher / tau_teacher) || softmax(student / tau_student)) per anchor, averaged."""

    def __init__(self, tau_teacher: float = 1.0, tau_student: float = 0.05) -> None:
        super().__init__()
        self.tau_teacher, self.tau_student = tau_teacher, tau_student

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        target = torch.log_softmax(teacher / self.tau_teacher, dim=1)
        pred = torch.log_softmax(student / self.tau_student, dim=1)
        return torch.nn.functional.kl_div(pred, target, log_target=True, reduction="batchmean")


class GapWeightedRankNetLoss(nn.Module):
    """RankNet over all candidate pairs the teacher orders, each weighted by the teacher's score gap."""

    def __init__(self, tau_student: float = 0.05) -> None:
        super().__init__()
        self.tau_student = tau_student

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        gap = teacher[:, :, None] - teacher[:, None, :]  # > 0 where i should rank above j
        diff = (student[:, :, None] - student[:, None, :]) / self.tau_student
        weight = gap.clamp(min=0)
        return (weight * torch.nn.functional.softplus(-diff)).sum() / weight.sum().clamp(min=1e-6)


class CalibrationLoss(nn.Module):
    """MSE between per-anchor z-scored student similarities and the z-scored teacher scores."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(zscore_rows(student), teacher)


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

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        teacher = zscore_rows(teacher)
        values = {name: loss(student, teacher) for name, loss in self.parts.items() if self.weights[name]}
        total = sum(self.weights[n] * v for n, v in values.items())
        return total, {n: float(v.detach()) for n, v in values.items()}
