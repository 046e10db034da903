"""Pairwise ranking: every candidate pair the teacher orders, weighted by how far apart it puts them.

Reference: Burges et al., "Learning to Rank using Gradient Descent" (ICML 2005), RankNet's
logistic pair loss; the teacher's score gap as the pair weight.
"""

from __future__ import annotations

import torch
from torch import nn


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
