import numpy as np

from influcoder_dagster.teacher.scoring import full_scores, pair_scores, stream_topk


def blocks(ids, rows, size):
    for i in range(0, len(ids), size):
        yield ids[i : i + size], rows[i : i + size]


def brute(q, g):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    return qn @ gn.T


def test_streaming_top_and_bottom_k_equal_brute_force():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((257, 16)).astype(np.float16)
    ids = rng.permutation(10_000)[:257].astype(np.int64)
    q = rng.standard_normal((5, 16)).astype(np.float32)
    exclude = ids[[3, 10, 200, 0, 256]]
    top, bottom = stream_topk(q, blocks(ids, g, 50), k=7, bottom_k=4, exclude_ids=exclude)
    s = brute(q, g.astype(np.float32))
    for i in range(5):
        s_i = s[i].copy()
        keep = ids != exclude[i]
        order = np.argsort(-s_i[keep])
        np.testing.assert_array_equal(top.ids[i], ids[keep][order[:7]])
        np.testing.assert_allclose(top.scores[i], s_i[keep][order[:7]], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(bottom.ids[i], ids[keep][order[::-1][:4]])
        assert exclude[i] not in top.ids[i] and exclude[i] not in bottom.ids[i]


def test_k_larger_than_the_store_returns_everything():
    g = np.eye(3, dtype=np.float16)
    top, _ = stream_topk(np.ones((1, 3), dtype=np.float32), blocks(np.array([1, 2, 3]), g, 2), k=10)
    assert sorted(top.ids[0].tolist()) == [1, 2, 3]


def test_one_query_excluding_itself_does_not_shorten_another_querys_list():
    g = np.eye(5, dtype=np.float16)
    top, _ = stream_topk(np.ones((2, 5), dtype=np.float32), blocks(np.arange(5), g, 5), k=5, exclude_ids=np.array([0, -1]))
    assert (top.ids[0] >= 0).sum() == 4 and (top.ids[1] >= 0).sum() == 5


def test_pair_and_full_scores_are_cosines():
    rng = np.random.default_rng(1)
    q, g = rng.standard_normal((3, 6)), rng.standard_normal((4, 6))
    np.testing.assert_allclose(full_scores(q, g), brute(q, g), rtol=1e-5)
    np.testing.assert_allclose(pair_scores(q, np.stack([g[:2], g[2:], g[1:3]])),
                               np.array([brute(q[:1], g[:2])[0], brute(q[1:2], g[2:])[0], brute(q[2:], g[1:3])[0]]), rtol=1e-5)


def test_preconditioned_scores_equal_the_closed_form():
    from influcoder_dagster.teacher.scoring import fisher, precondition

    rng = np.random.default_rng(2)
    g = (rng.standard_normal((200, 6)) * np.array([5, 1, 1, 0.2, 3, 1])).astype(np.float32)
    q = rng.standard_normal((3, 6)).astype(np.float32)
    f = fisher(blocks(np.arange(200), g, 64), 6)
    np.testing.assert_allclose(f, g.astype(np.float64).T @ g / 200, rtol=1e-10)
    lam = 0.1 * np.trace(f) / 6
    closed = np.linalg.inv(f + lam * np.eye(6)) @ q.T.astype(np.float64)  # (d, m)
    expected = (closed.T @ g.T) / np.linalg.norm(closed.T, axis=1, keepdims=True) / np.linalg.norm(g, axis=1)
    top, _ = stream_topk(precondition(q, f, 0.1), blocks(np.arange(200), g, 64), k=5)
    for i in range(3):
        order = np.argsort(-expected[i])[:5]
        np.testing.assert_array_equal(top.ids[i], order)
        np.testing.assert_allclose(top.scores[i], expected[i][order], rtol=1e-4)
