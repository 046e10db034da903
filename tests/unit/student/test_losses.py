import torch

from influcoder_dagster.student.losses import (
    CalibrationLoss,
    DistillationLoss,
    GapWeightedRankNetLoss,
    ListwiseKLLoss,
    zscore_rows,
)


def test_listwise_kl_is_zero_for_matching_distributions_and_positive_otherwise():
    teacher = torch.tensor([[2.0, 1.0, 0.0]])
    loss = ListwiseKLLoss(tau_teacher=1.0, tau_student=0.5)
    assert loss(teacher * 0.5, teacher).item() < 1e-7  # student/0.5 == teacher/1.0
    assert loss(-teacher, teacher).item() > 0.5


def test_ranknet_prefers_the_teacher_order_and_ignores_ties():
    teacher = torch.tensor([[3.0, 2.0, 1.0]])
    loss = GapWeightedRankNetLoss(tau_student=1.0)
    assert loss(torch.tensor([[3.0, 2.0, 1.0]]), teacher) < loss(torch.tensor([[1.0, 2.0, 3.0]]), teacher)
    tied = torch.tensor([[1.0, 1.0, 1.0]])
    assert loss(torch.tensor([[5.0, 0.0, -5.0]]), tied).item() == 0.0


def test_calibration_and_total_are_differentiable_and_decrease_under_gradient_descent():
    torch.manual_seed(0)
    teacher = torch.randn(4, 12)
    student = torch.randn(4, 12, requires_grad=True)
    total = DistillationLoss(1.0, 0.5, 0.1, 1.0, 0.1)
    first, parts = total(student, teacher)
    assert set(parts) == {"listwise", "pairwise", "calibration"}
    opt = torch.optim.SGD([student], lr=0.05)
    for _ in range(100):
        loss, _ = total(student, teacher)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first.item()
    assert CalibrationLoss()(zscore_rows(teacher), zscore_rows(teacher)).item() < 1e-6
