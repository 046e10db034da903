import faiss
import numpy as np
import pyarrow as pa
import pytest

from influcoder_dagster.core.config import IndexConfig
from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.serving.index import build_index, encoder_folder, index_ids, load_index, load_samples, save_index, search


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def samples_of(ids, tag=""):
    return pa.table({"sample_id": pa.array(ids, pa.int64()), "text": [f"text {i}{tag}" for i in ids],
                     "source": ["f.jsonl"] * len(ids), "row": pa.array(range(len(ids)), pa.int32())})


def test_flat_index_equals_brute_force_and_reloads_identically(tmp_path):
    rng = np.random.default_rng(0)
    emb, ids = unit(rng.standard_normal((300, 24))), rng.choice(10**9, size=300, replace=False).astype(np.int64)
    q = unit(rng.standard_normal((4, 24)))
    index = build_index(emb, ids, IndexConfig(kind="auto"))
    scores, found = search(index, q, 5)
    brute = q @ emb.T
    for i in range(4):
        order = np.argsort(-brute[i])[:5]
        np.testing.assert_array_equal(found[i], ids[order])
        np.testing.assert_allclose(scores[i], brute[i][order], rtol=1e-5)
    save_index(index, tmp_path / "index", {"encoder_version": "v1", "dataset_version": "d1"}, samples_of(ids))
    reloaded, manifest = load_index(tmp_path / "index")
    assert manifest["count"] == 300 and manifest["kind"] == "flat"
    np.testing.assert_array_equal(search(reloaded, q, 5)[1], found)
    assert sorted(index_ids(reloaded).tolist()) == sorted(ids.tolist())


def test_remove_and_add_keep_ids_consistent():
    rng = np.random.default_rng(1)
    emb, ids = unit(rng.standard_normal((20, 8))), np.arange(100, 120, dtype=np.int64)
    index = build_index(emb, ids, IndexConfig(kind="flat"))
    index.remove_ids(np.array([103, 104], dtype=np.int64))
    index.add_with_ids(emb[:1], np.array([999], dtype=np.int64))
    assert sorted(index_ids(index).tolist()) == sorted([*range(100, 103), *range(105, 120), 999])
    assert search(index, emb[:1], 1)[1][0, 0] in (100, 999)


def test_missing_index_says_which_asset_to_materialize(tmp_path):
    with pytest.raises(MissingUpstreamError, match="materialize 'embedding_index'"):
        load_index(tmp_path / "nothing")


def test_sync_adds_only_new_samples_and_removes_missing_ones():
    from influcoder_dagster.serving.index import sync_index

    rng = np.random.default_rng(2)
    emb = unit(rng.standard_normal((30, 8)))
    index = build_index(emb[:20], np.arange(20, dtype=np.int64), IndexConfig(kind="flat"))
    embedded = []

    def embed(ids):
        embedded.extend(ids.tolist())
        return emb[ids]

    added, removed = sync_index(index, np.arange(5, 30, dtype=np.int64), embed)
    assert (added, removed) == (10, 5) and sorted(embedded) == list(range(20, 30))
    assert sorted(index_ids(index).tolist()) == list(range(5, 30))
    np.testing.assert_array_equal(search(index, emb[25:26], 1)[1], [[25]])
    hnsw = build_index(emb[:20], np.arange(20, dtype=np.int64), IndexConfig(kind="hnsw"))
    assert sync_index(hnsw, np.arange(5, 20, dtype=np.int64), embed) == (None, None)  # HNSW cannot delete: rebuild


def test_the_compressed_index_is_smaller_keeps_recall_and_supports_removal(tmp_path):
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((50, 32))
    emb = unit(centers[rng.integers(0, 50, 6000)] + 0.5 * rng.standard_normal((6000, 32)))
    ids = np.arange(6000, dtype=np.int64) + 10**6
    q = unit(emb[:50] + 0.1 * rng.standard_normal((50, 32)))
    exact = build_index(emb, ids, IndexConfig(kind="flat"))
    ivf = build_index(emb, ids, IndexConfig(kind="ivf_sq8", nprobe=16))
    truth, got = search(exact, q, 10)[1], search(ivf, q, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got, strict=True)])
    assert recall >= 0.95, recall
    small = save_index(ivf, tmp_path / "i", {"encoder_version": "v1", "dataset_version": "d", "nprobe": 16}, samples_of(ids[:0]))
    large = save_index(exact, tmp_path / "e", {"encoder_version": "v1", "dataset_version": "d"}, samples_of(ids[:0]))
    assert small.stat().st_size < 0.5 * large.stat().st_size
    reloaded, manifest = load_index(tmp_path / "i")
    assert manifest["kind"] == "ivf_sq8"
    np.testing.assert_array_equal(search(reloaded, q, 10)[1], got)
    inner = faiss.extract_index_ivf(reloaded.index)
    far = unit(rng.standard_normal((50, 32)))  # between the clusters: probing more lists finds more
    far_truth = search(exact, far, 10)[1]
    recall_of = lambda found: np.mean([len(set(a) & set(b)) / 10 for a, b in zip(far_truth, found, strict=True)])  # noqa: E731
    one, own, every = (search(reloaded, far, 10, nprobe=p)[1] for p in (1, None, inner.nlist))
    assert inner.nprobe == 16  # a per-search nprobe leaves the index's own alone
    assert recall_of(one) < recall_of(own) < recall_of(every)
    few = far[:4]  # a small batch searches on one thread: the override applies there too
    np.testing.assert_array_equal(search(reloaded, few, 10, nprobe=inner.nlist)[1], every[:4])
    np.testing.assert_array_equal(search(exact, few, 10, nprobe=1)[1], far_truth[:4])  # an exact index has no lists to probe
    reloaded.remove_ids(ids[:100])
    assert reloaded.ntotal == 5900 and not set(ids[:100]) & set(index_ids(reloaded).tolist())


def test_the_index_and_its_encoder_are_published_as_one_version_and_checked_on_read(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((30, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = build_index(emb, np.arange(30, dtype=np.int64), IndexConfig(kind="flat"))
    root = tmp_path / "index"
    for version in ("v1", "v2", "v3"):
        save_index(index, root, {"encoder_version": version, "dataset_version": "d"}, samples_of(range(30), version),
                   lambda folder, v=version: (folder.mkdir(), (folder / "weights.txt").write_text(v)))
    _, manifest = load_index(root)
    folder = encoder_folder(root, manifest)
    assert manifest["encoder_version"] == "v3" and (folder / "weights.txt").read_text() == "v3"
    assert load_samples(root, manifest).column("text")[7].as_py() == "text 7v3"  # the version's own texts
    assert len([d for d in root.iterdir() if d.is_dir()]) == 2  # the current version and the one before
    (folder / "influcoder_encoder.json").write_text('{"encoder_version": "v2"}')  # an encoder swapped under the index
    with pytest.raises(MissingUpstreamError, match="holds encoder v2, but the index was built with v3"):
        encoder_folder(root, manifest)
