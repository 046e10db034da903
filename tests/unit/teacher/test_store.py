import numpy as np
import pytest

from influcoder_dagster.teacher.store import GradientStore, StoreError

PROJ = {"kind": "logra", "dim": 8, "seed": 0}


def test_write_finish_read_and_lookup(tmp_path):
    store = GradientStore.create(tmp_path, PROJ, "modelhash", dataset_version="v1")
    ids = np.array([11, 5, 42], dtype=np.int64)
    values = np.arange(24, dtype=np.float32).reshape(3, 8) / 7
    w = store.writer("shard-a", ids)
    w.write(np.array([2, 0]), values[[2, 0]])
    w.write(np.array([1]), values[[1]])
    w.finish()
    assert GradientStore.open(store.root).shard_names == []  # finished, not yet published
    store.publish({"shard-a": ""}, {}, keep=["shard-a"], dataset_version="v2")
    reopened = GradientStore.open(store.root)
    assert reopened.manifest["base_model_hash"] == "modelhash" and reopened.manifest["dataset_version"] == "v2"
    assert reopened.manifest["shards"]["shard-a"]["rows"] == 3
    np.testing.assert_allclose(reopened.rows("shard-a"), values, rtol=1e-3)
    np.testing.assert_allclose(reopened.lookup(np.array([42, 11, 42])), values[[2, 0, 2]], rtol=1e-3)
    with pytest.raises(KeyError, match="7"):
        reopened.lookup(np.array([7]))


def test_an_interrupted_shard_resumes_without_recomputing_done_rows(tmp_path):
    store = GradientStore.create(tmp_path, PROJ, "m")
    ids = np.arange(10, dtype=np.int64) + 100
    w = store.writer("s", ids, checkpoint_seconds=0)
    w.write(np.array([0, 1, 2]), np.ones((3, 8)))
    w.checkpoint_seconds = 3600
    w.write(np.array([3, 4]), np.ones((2, 8)))  # written, but not yet checkpointed
    del w  # the process dies here: no finish()
    assert not store.has_shard("s")
    w2 = GradientStore.open(store.root).writer("s", ids)
    assert w2.missing_rows().tolist() == list(range(3, 10))
    with pytest.raises(StoreError, match="7 rows not computed"):
        w2.finish()
    w2.write(w2.missing_rows(), np.full((7, 8), 2.0))
    w2.finish()
    store.publish({"s": ""}, {}, keep=["s"])
    rows = GradientStore.open(store.root).rows("s")
    assert rows[:3].tolist() == np.ones((3, 8)).tolist() and rows[3:].tolist() == np.full((7, 8), 2.0).tolist()
    assert not list(store.root.glob("*.partial*")) and not list(store.root.glob("*.done.npy"))


def test_other_ids_or_tokens_restart_the_shard_and_other_models_get_their_own_store(tmp_path):
    store = GradientStore.create(tmp_path, PROJ, "m")
    store.writer("s", np.array([1, 2]), checkpoint_seconds=0).write(np.array([0]), np.ones((1, 8)))
    assert store.writer("s", np.array([1, 3])).missing_rows().tolist() == [0, 1]
    store.writer("t", np.array([1, 2]), "tokens-a", checkpoint_seconds=0).write(np.array([0]), np.ones((1, 8)))
    assert store.writer("t", np.array([1, 2]), "tokens-a").missing_rows().tolist() == [1]  # same tokens: resumed
    assert store.writer("t", np.array([1, 2]), "tokens-b").missing_rows().tolist() == [0, 1]  # same ids, other tokens
    assert GradientStore.create(tmp_path, PROJ, "other-model").root != store.root
    assert GradientStore.create(tmp_path, {**PROJ, "seed": 1}, "m").root != store.root


def test_publish_drops_removed_shards_leaves_out_excluded_rows_and_refuses_unfinished_ones(tmp_path):
    store = GradientStore.create(tmp_path, PROJ, "m")
    for name, ids in (("a", [1]), ("b", [2, 1, 3])):
        w = store.writer(name, np.array(ids))
        w.write(np.arange(len(ids)), np.arange(len(ids) * 8).reshape(-1, 8))
        w.finish()
    store.writer("c", np.array([4]), checkpoint_seconds=0).write(np.array([0]), np.ones((1, 8)))  # in flight
    with pytest.raises(StoreError, match="projected_gradients\\[c\\]"):
        store.publish({"b": "", "c": ""}, {}, keep=["b", "c"])
    for kept in ("user_queries.npz", "anchor_queries.npz", "preconditioner.safetensors"):  # the store's own files
        (store.root / kept).write_bytes(b"x")
    assert store.publish({"b": ""}, {"b": [1]}, keep=["b", "c"]) == ["a"]
    assert store.shard_names == ["b"] and not (store.root / "a.f16").exists() and (store.root / "c.f16.partial").exists()
    assert all((store.root / kept).exists() for kept in ("user_queries.npz", "anchor_queries.npz", "preconditioner.safetensors"))
    assert store.all_ids().tolist() == [2, 3] and store.n_rows() == 2
    blocks = list(store.iter_blocks(2))
    assert [b[0].tolist() for b in blocks] == [[2], [3]] and blocks[0][1].tolist() == [list(range(8))]


def test_non_finite_gradients_are_refused(tmp_path):
    w = GradientStore.create(tmp_path, PROJ, "m").writer("s", np.array([1]))
    with pytest.raises(FloatingPointError):
        w.write(np.array([0]), np.full((1, 8), np.nan))
    with pytest.raises(FloatingPointError, match="overflowing"):
        w.write(np.array([0]), np.full((1, 8), 1e5))  # beyond fp16's range


def test_a_finished_shard_is_reused_only_for_the_same_fingerprint(tmp_path):
    store = GradientStore.create(tmp_path, PROJ, "m")
    w = store.writer("s", np.array([1]), fingerprint="abc")
    w.write(np.array([0]), np.ones((1, 8)))
    w.finish()
    assert store.has_shard("s", "abc") and not store.has_shard("s", "other-rows-or-tokens")


def test_other_requested_settings_get_their_own_store_and_find_each(tmp_path):
    """Rows also depend on settings the projection spec does not hold (e.g. the Adam preconditioning)."""
    less = GradientStore.create(tmp_path, PROJ, "m", requested={"adam_momentum": True})
    plain = GradientStore.create(tmp_path, PROJ, "m", requested={"adam_momentum": False})
    assert less.root != plain.root
    assert GradientStore.find(tmp_path, "m", {"adam_momentum": True}).root == less.root
    assert GradientStore.find(tmp_path, "m", {"adam_momentum": False}).root == plain.root
