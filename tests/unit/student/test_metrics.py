import numpy as np
import pytest

from influcoder_dagster.student.metrics import (
    aggregated_spearman,
    mean_cosine,
    ndcg_at_k,
    per_query_kendall,
    per_query_spearman,
    planted_recall,
    recall_at_k,
)


def test_rank_correlations_on_hand_computed_cases():
    t = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    o = np.array([[10.0, 20.0, 30.0, 40.0], [4.0, 3.0, 2.0, 1.0]])
    assert per_query_spearman(t, o).tolist() == pytest.approx([1.0, -1.0])
    # one swapped adjacent pair out of 6: Kendall (5 - 1) / 6; Spearman 1 - 6*2/(4*15) = 0.8
    swapped = np.array([[1.0, 3.0, 2.0, 4.0]])
    assert per_query_kendall(t[:1], swapped)[0] == pytest.approx(4 / 6)
    assert per_query_spearman(t[:1], swapped)[0] == pytest.approx(0.8)
    assert aggregated_spearman(t, o) == pytest.approx(1.0)  # column means of o: 7, 11.5, 16, 20.5
    assert aggregated_spearman(t, np.array([[4.0, 3.0, 2.0, 1.0]] * 2)) == pytest.approx(-1.0)


def test_recall_and_planted_recall():
    t = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    o = np.array([[5.0, 1.0, 3.0, 2.0, 4.0]])
    assert recall_at_k(t, o, 2) == pytest.approx(0.5)  # teacher {0,1}, other {0,4}
    assert planted_recall([[1, 2, 3], [9, 8, 7]], [{1, 3, 5}, {7}], k=3) == pytest.approx((2 / 3 + 1) / 2)
    assert planted_recall([[1, 2, 3, 4]], [{1, 2, 3, 4, 5, 6}], k=2) == pytest.approx(1.0)  # min(k, |relevant|)


def test_ndcg_is_one_for_the_teacher_order_and_lower_when_reversed():
    t = np.array([[0.9, 0.5, 0.1, -0.3]])
    assert ndcg_at_k(t, t, 2) == pytest.approx(1.0)
    # gains by teacher rank: [3, 2, 1, 0]; reversed order puts gains 0, 1 first: (0 + 1/log2(3)) / (3 + 2/log2(3))
    assert ndcg_at_k(t, -t, 2) == pytest.approx((1 / np.log2(3)) / (3 + 2 / np.log2(3)))


def test_a_method_with_non_finite_scores_gets_nan_agreement_and_the_gate_refuses_it():
    from influcoder_dagster.student.gate import promotion_decision
    from influcoder_dagster.student.metrics import agreement_table

    teacher = np.random.default_rng(0).standard_normal((3, 12))
    broken = teacher.copy()
    broken[1, 4] = np.nan
    row = agreement_table(teacher, broken)
    assert all(np.isnan(v) for v in row.values())
    table = {"student": row, **{b: {"spearman": 0.1} for b in ("untrained", "bm25", "random")}}
    assert promotion_decision(table, None) == (False, "held-out Spearman is nan: the student's scores carry no ranking")


def test_mean_cosine_is_the_same_a_block_of_rows_at_a_time():
    rng = np.random.default_rng(0)
    pred, targets = rng.normal(size=(50, 6)), rng.normal(size=(50, 6))
    direct = np.mean(np.sum(pred * targets, 1) / np.linalg.norm(pred, axis=1) / np.linalg.norm(targets, axis=1))
    assert mean_cosine(pred, targets, block_rows=7) == pytest.approx(direct, rel=1e-5)
    assert mean_cosine(pred, targets) == pytest.approx(direct, rel=1e-5)


def test_a_constant_row_counts_as_zero_without_a_warning():
    import warnings

    t = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    o = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert per_query_spearman(t, o).tolist() == [0.0, pytest.approx(1.0)]
        assert per_query_kendall(t, o).tolist() == [0.0, pytest.approx(1.0)]
