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


def test_a_duplicate_moving_between_files_is_recomputed_not_reused(tmp_path, local_lm):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text(json.dumps({"text": "shared sample number 1"}) + "\n")
    (data / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["shared sample number 1", "only in b topic 2"]))
    cfg = Config.model_validate({"home": str(tmp_path / "home"), "dataset": {"path": str(data)},
                                 "model": {"base_model": str(local_lm), "max_length": 32}, "projection": {"dim": 128}})
    for stage in (teacher_stages.run_base_model, teacher_stages.run_tokenized_corpus):
        stage(cfg)
    assert teacher_stages.run_projected_gradients(cfg, progress=False).metadata["rows"] == 2
    (data / "a.jsonl").unlink()  # b's bytes are unchanged, but b now keeps the shared sample
    teacher_stages.run_tokenized_corpus(cfg)
    again = teacher_stages.run_projected_gradients(cfg, progress=False)
    assert again.metadata["rows"] == 2 and again.metadata["rows_computed"] == 2


def test_queries_may_hold_a_line_separator_inside_a_string(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"text": "one\u2028two", "prompt": "one"}, ensure_ascii=False) + "\n", encoding="utf-8")
    (q,) = teacher_stages.read_queries(path)
    assert q["text"] == "one\u2028two" and q["prompt"] == "one"
