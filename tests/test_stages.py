"""Stages on their own, without Dagster: a local model folder, and reuse of finished gradient shards."""

import json

from influcoder_dagster import teacher_stages
from influcoder_dagster.config import Config
from influcoder_dagster.decoder import model_dir_hash


def test_a_local_model_folder_is_used_as_is_and_gradients_are_not_recomputed(tmp_path, tiny_lm):
    model, tok = tiny_lm
    model.save_pretrained(tmp_path / "my-lm")
    tok.save_pretrained(tmp_path / "my-lm")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"body": f"sample number {i} talks about topic {i}."}) + "\n" for i in range(30)))
    cfg = Config.model_validate({"home": str(tmp_path / "home"), "dataset": {"path": str(data), "text_field": "body"},
                                 "model": {"base_model": str(tmp_path / "my-lm"), "max_length": 32}, "projection": {"dim": 256}})
    base = teacher_stages.run_base_model(cfg)
    assert base.metadata["kind"] == "local" and base.data_version == model_dir_hash(tmp_path / "my-lm")
    corpus = teacher_stages.run_tokenized_corpus(cfg)
    assert corpus.metadata["rows_kept"] == 30 and corpus.metadata["base_model_hash"] == base.data_version
    first = teacher_stages.run_projected_gradients(cfg, progress=False)
    again = teacher_stages.run_projected_gradients(cfg, progress=False)
    assert first.metadata["rows_computed"] == 30 and again.metadata["rows_computed"] == 0
    assert again.metadata["rows_reused"] == 30 and again.data_version == first.data_version
