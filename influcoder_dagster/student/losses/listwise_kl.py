"""Listwise distillation: match the student's softmax over each anchor's candidates to the teacher's.

Reference: Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network" (2015), with
separate temperatures for teacher and student as in listwise ranking distillation.
"""

from __future__ import annotations

import torch
from torch import nn


class ListwiseKLLoss(nn.Module):
    """KL(softmax(teacher / tau_teacher) || softmax(student / tau_student)) per anchor, averaged."""

    def __init__(self, tau_teacher: float = 1.0, tau_student: float = 0.05) -> None:
        super().__init__()
        self.tau_teacher, self.tau_student = tau_teacher, tau_student

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        target = torch.log_softmax(teacher / self.tau_teacher, dim=1)
        pred = torch.log_softmax(student / self.tau_student, dim=1)
        return torch.nn.functional.kl_div(pred, target, log_target=True, reduction="batchmean")
