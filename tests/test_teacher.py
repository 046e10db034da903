import numpy as np

from influcoder_dagster.store import GradientStore
from influcoder_dagster.teacher import eval_pool, pick_anchors, pool_split, score_anchors


def test_pool_split_depends_on_the_id_alone():
    ids = np.arange(10_000, dtype=np.int64) * 7919
    split = pool_split(ids, 0.2)
    assert 0.15 < (split == "heldout").mean() < 0.25
    np.testing.assert_array_equal(pool_split(ids[::-1], 0.2), split[::-1])


def test_anchor_scores_hold_exact_top_bottom_random_and_eval_rows(tmp_path):
    rng = np.random.default_rng(0)
    n, d = 120, 16
    ids = np.arange(1, n + 1, dtype=np.int64) * 1009
    g = rng.standard_normal((n, d)).astype(np.float32)
    store = GradientStore.create(tmp_path, {"kind": "logra", "dim": d, "seed": 0}, "m")
    w = store.writer("s", ids)
    w.write(np.arange(n), g)
    w.finish()
    splits = pool_split(ids, 0.3)
    anchors = pick_anchors(ids, splits, 12, seed=0)
    rows = score_anchors(store, anchors, ids, splits, top_k=5, n_bottom=3, n_random=4, eval_pool_size=20, block_rows=32, seed=0)
    gf = store.lookup(ids)
    unit = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    cos = unit @ unit.T
    pos = {int(s): i for i, s in enumerate(ids)}
    by_kind = {}
    for q, s, score, rank, kind in zip(rows.query_id, rows.sample_id, rows.score, rows.rank, rows.kind, strict=True):
        a = pos[int(q.split("-")[1])]
        assert abs(score - cos[a, pos[s]]) < 1e-4  # every stored score is the exact cosine
        by_kind.setdefault((q, kind), []).append((rank, s))
    for qid, sid in zip(anchors.query_ids, anchors.sample_ids, strict=True):
        a = pos[int(sid)]
        expected = [int(ids[j]) for j in np.argsort(-cos[a]) if j != a][:5]
        assert [s for _, s in sorted(by_kind[(qid, "top")])] == expected
        assert int(sid) not in [s for _, s in by_kind[(qid, "random")]]
    held = [q for q, sp in zip(anchors.query_ids, anchors.splits, strict=True) if sp == "heldout"]
    pool = eval_pool(ids, splits, set(anchors.sample_ids.tolist()), 20, 0)
    assert all(len(by_kind[(q, "eval")]) == len(pool) for q in held)
    assert all(splits[pos[int(p)]] == "heldout" for p in pool)
