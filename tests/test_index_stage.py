"""The index stage updates in place: a new file costs only its own embeddings, a removed one leaves."""

import numpy as np

from influcoder_dagster.index import index_ids, load_index
from influcoder_dagster.paths import Paths
from influcoder_dagster.query_encoder import ONNX_NAME
from influcoder_dagster.student_stages import run_embedding_index
from influcoder_dagster.tokenized import read_corpus

from test_rankings_incremental import FILES, build


def test_new_and_removed_files_only_touch_their_samples(tmp_path, local_lm):
    home = tmp_path / "h"
    build(home, tmp_path / "d", ["a.jsonl", "b.jsonl"], local_lm)
    from influcoder_dagster.config import Config

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
    assert not (Paths(home).index_encoder / ONNX_NAME).exists()
    again = run_embedding_index(config, progress=False).metadata
    assert again["mode"] == "update" and again["query_backend"] == "onnxruntime"
