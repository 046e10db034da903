"""The index stage updates in place: a new file costs only its own embeddings, a removed one leaves."""

import faiss
import numpy as np
import pytest
from rankings_cases import FILES, build

from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.data.tokenized import read_corpus
from influcoder_dagster.serving.index import current_encoder_folder, index_ids, load_index
from influcoder_dagster.serving.query_encoder import ONNX_NAME
from influcoder_dagster.stages.index import index_matches_corpus, run_embedding_index


def test_new_and_removed_files_only_touch_their_samples(tmp_path, local_lm):
    home = tmp_path / "h"
    build(home, tmp_path / "d", ["a.jsonl", "b.jsonl"], local_lm)
    from influcoder_dagster.core.config import Config

    config = Config.model_validate({"home": str(home), "encoder": {"max_seq_length": 32}})
    first = run_embedding_index(config, progress=False)
    assert first.metadata["mode"] == "rebuild" and first.metadata["count"] == 110
    assert first.metadata["encoder_version"].startswith("base")  # no distilled encoder was trained here
    assert first.metadata["query_backend"] == "onnxruntime" and first.metadata["onnx_export_max_abs_diff"] < 1e-5

    build(home, tmp_path / "d", ["a.jsonl", "b.jsonl", "c.jsonl"], local_lm)
    grown = run_embedding_index(config, progress=False)
    m = grown.metadata
    assert m["mode"] == "update" and m["samples_added"] == m["samples_embedded_here"] == len(FILES["c.jsonl"])
    build(home, tmp_path / "d", ["a.jsonl", "c.jsonl"], local_lm)
    shrunk = run_embedding_index(config, progress=False)
    m = shrunk.metadata
    assert (m["samples_added"], m["samples_embedded_here"], m["samples_removed"]) == (0, 0, len(FILES["b.jsonl"]))
    index, manifest = load_index(Paths(home).index)
    corpus_ids = read_corpus(Paths(home).corpus, columns=["sample_id"]).column("sample_id").to_numpy()
    np.testing.assert_array_equal(np.sort(index_ids(index)), np.sort(corpus_ids))

    # The ONNX query encoder follows the setting, with the same encoder and index.
    torch_only = config.model_copy(update={"index": config.index.model_copy(update={"onnx_query_encoder": False})})
    assert run_embedding_index(torch_only, progress=False).metadata["query_backend"] == "torch"
    assert not (current_encoder_folder(Paths(home).index) / ONNX_NAME).exists()
    again = run_embedding_index(config, progress=False).metadata
    assert again["mode"] == "update" and again["query_backend"] == "onnxruntime"

    # The index check passes on what the stage published and fails on a tampered index file.
    assert index_matches_corpus(config)[0]
    index, manifest = load_index(Paths(home).index)
    index.remove_ids(index_ids(index)[:1])
    faiss.write_index(index, str(Paths(home).index / manifest["folder"] / "index.faiss"))
    passed, metadata = index_matches_corpus(config)
    assert not passed and metadata["index_count"] == metadata["corpus_count"] - 1


@pytest.mark.slow
def test_a_gradient_sketch_index_sketches_a_new_shards_rows_in_place_and_refuses_another_store(tmp_path, local_lm):
    import pytest

    from influcoder_dagster.core.config import Config
    from influcoder_dagster.stages.corpus import run_all_shards
    from influcoder_dagster.stages.encoder import run_encoder
    from influcoder_dagster.student import tracking
    from influcoder_dagster.student.sketch import BASIS_FILE, Sketch
    from influcoder_dagster.teacher.store import open_store

    home = tmp_path / "h"
    build(home, tmp_path / "d", ["a.jsonl", "b.jsonl"], local_lm)
    config = Config.model_validate({
        "home": str(home), "model": {"base_model": str(local_lm), "max_length": 32},
        "projection": {"dim": 256, "kind": "logra", "target": "weights", "adam_precondition": False},  # as build() has it
        "rankings": {"anchor_fraction": 0.2, "top_k": 8, "n_bottom": 4, "n_random": 6, "eval_pool_size": 20, "block_rows": 16},
        "encoder": {"max_seq_length": 32, "sketch_dim": 16, "sketch_epochs": 0}, "index": {"onnx_query_encoder": False},
    })
    trained = run_encoder(config, progress=False).metadata
    tracking.set_champion("influcoder-encoder", trained["version"])  # served whatever its gate said: this test is about the index

    first = run_embedding_index(config, progress=False).metadata
    assert first["documents"] == "gradient_sketch" and first["count"] == 110
    build(home, tmp_path / "d", ["a.jsonl", "b.jsonl", "c.jsonl"], local_lm)
    grown = run_embedding_index(config, progress=False).metadata
    assert grown["mode"] == "update" and grown["samples_added"] == grown["samples_embedded_here"] == len(FILES["c.jsonl"])
    paths = Paths(home)
    index, _ = load_index(paths.index)
    store = open_store(paths)
    ids = np.sort(index_ids(index))
    sketch = Sketch.load(current_encoder_folder(paths.index) / BASIS_FILE)
    np.testing.assert_allclose(np.stack([index.reconstruct(int(i)) for i in ids]), sketch.documents(store.lookup(ids)), atol=1e-5)

    # Another projection makes another store; the champion's sketch does not fit it.
    other = config.model_copy(update={"projection": config.projection.model_copy(update={"dim": 128})})
    run_all_shards(other, progress=False)
    assert open_store(paths).root.name != sketch.provenance["store_key"]
    import shutil

    shutil.rmtree(paths.embeddings)  # the shards must be sketched again
    with pytest.raises(MissingUpstreamError, match="materialize 'influence_rankings' and 'influcoder_encoder'"):
        run_embedding_index(config, progress=False)
