"""Score calibration: regress the student's per-anchor z-scored similarities onto the teacher's.

Reference: score regression in ranking distillation, e.g. Hofstätter et al., "Improving Efficient
Neural Ranking Models with Cross-Architecture Knowledge Distillation" (2020); here on z-scores, so
only the shape of each anchor's scores is matched, not their scale.
"""

from __future__ import annotations

import torch
from torch import nn


def zscore_rows(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + eps)


class CalibrationLoss(nn.Module):
    """MSE between per-anchor z-scored student similarities and the z-scored teacher scores."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(zscore_rows(student), teacher)
