import numpy as np

from influcoder_dagster.student.evaluation import EvalSet, bm25_scorer, evaluate, random_scorer


def test_bm25_scores_lexical_overlap():
    s = bm25_scorer(["quartz heron"], ["the quartz heron sings", "a list of items", "heron"])
    assert s.shape == (1, 3) and s[0, 0] > s[0, 2] > s[0, 1] == 0


def test_a_method_equal_to_the_teacher_gets_perfect_agreement_and_random_does_not():
    rng = np.random.default_rng(0)
    teacher = rng.standard_normal((6, 30))
    docs = [f"doc {i}" for i in range(30)]
    anchors = [f"anchor {i}" for i in range(6)]
    data = EvalSet(anchors, docs, teacher, [], [], np.arange(30), docs)
    oracle = lambda q, d: teacher  # noqa: E731
    perfect = evaluate(oracle, data)
    assert perfect["spearman"] == 1.0 and perfect["recall10"] == 1.0 and perfect["ndcg10"] == 1.0
    assert evaluate(random_scorer(1), data)["spearman"] < 0.5
