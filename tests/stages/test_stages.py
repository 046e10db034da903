"""Stages on their own, without Dagster: a local model folder, and reuse of finished gradient shards."""

import json

import numpy as np
import pytest

from influcoder_dagster.core.config import Config
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.data.queries import read_queries
from influcoder_dagster.stages.base_model import run_base_model
from influcoder_dagster.stages.corpus import run_all_shards
from influcoder_dagster.teacher.decoder import model_dir_hash
from influcoder_dagster.teacher.query_gradients import pool_extractor
from influcoder_dagster.teacher.store import open_store


def test_a_local_model_folder_is_used_as_is_and_gradients_are_not_recomputed(tmp_path, tiny_lm):
    model, tok = tiny_lm
    model.save_pretrained(tmp_path / "my-lm")
    tok.save_pretrained(tmp_path / "my-lm")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"body": f"sample number {i} talks about topic {i}."}) + "\n" for i in range(30)))
    cfg = Config.model_validate({"home": str(tmp_path / "home"), "dataset": {"path": str(data), "text_field": "body"},
                                 "model": {"base_model": str(tmp_path / "my-lm"), "max_length": 32}, "projection": {"dim": 256}})
    base = run_base_model(cfg)
    assert base.metadata["kind"] == "local" and base.metadata["weights_hash"] == model_dir_hash(tmp_path / "my-lm")
    first = run_all_shards(cfg, progress=False)
    assert first.metadata["rows_kept"] == 30 and first.metadata["base_model_hash"] == base.data_version
    again = run_all_shards(cfg, progress=False)
    assert first.metadata["rows_computed"] == 30 and again.metadata["rows_computed"] == 0
    assert again.metadata["gradient_rows"] == 30 and again.data_version == first.data_version


def test_a_duplicate_across_files_is_quarantined_and_returns_when_its_first_file_leaves(tmp_path, local_lm):
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.data.tokenized import read_corpus, read_quarantine

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text(json.dumps({"text": "shared sample number 1"}) + "\n")
    (data / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["shared sample number 1", "only in b topic 2"]))
    cfg = Config.model_validate({"home": str(tmp_path / "home"), "dataset": {"path": str(data)},
                                 "model": {"base_model": str(local_lm), "max_length": 32}, "projection": {"dim": 128}})
    run_base_model(cfg)
    first = run_all_shards(cfg, progress=False)
    m = first.metadata
    assert (m["rows_read"], m["rows_kept"], m["rows_quarantined"], m["cross_shard_duplicates"], m["gradient_rows"]) == (3, 2, 1, 1, 2)
    paths = Paths(cfg.home_path)
    assert read_corpus(paths.corpus).num_rows == 2 and "duplicate of" in read_quarantine(paths.corpus).column("reason")[0].as_py()
    store = open_store(paths)
    assert sorted(store.all_ids()) == sorted(read_corpus(paths.corpus).column("sample_id").to_pylist())
    (data / "a.jsonl").unlink()  # b's bytes are unchanged, and b now keeps the shared sample: nothing recomputed
    again = run_all_shards(cfg, progress=False)
    m = again.metadata
    assert (m["rows_read"], m["rows_kept"], m["cross_shard_duplicates"], m["gradient_rows"], m["rows_computed"]) == (2, 2, 0, 2, 0)
    assert not list(paths.corpus.glob("a-*"))  # the removed file's shard is gone


def test_queries_may_hold_a_line_separator_inside_a_string(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"text": "one\u2028two", "prompt": "one"}, ensure_ascii=False) + "\n", encoding="utf-8")
    (q,) = read_queries(path)
    assert q["text"] == "one\u2028two" and q["prompt"] == "one"


@pytest.mark.slow
@pytest.mark.parametrize(("anchor_gradients", "checkpoints"), [("stored", 1), ("plain", 1), ("stored", 2)])
def test_the_teacher_attributes_warmed_up_lora_adapters_with_adam_preconditioned_pool_gradients(tmp_path, local_lm, anchor_gradients,
                                                                                                checkpoints):
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.stages.rankings import run_influence_rankings

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": f"sample number {i} talks about topic {i % 7}."}) + "\n" for i in range(40)))
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"text": "sample number 3 talks about topic 3."}) + "\n")
    cfg = Config.model_validate({
        "home": str(tmp_path / "home"), "dataset": {"path": str(data), "queries_path": str(queries)},
        "model": {"base_model": str(local_lm), "max_length": 32},
        "projection": {"dim": 256, "kind": "countsketch", "target": "lora", "lora_rank": 4, "lora_warmup_steps": 6,
                       "adam_precondition": True, "checkpoints": checkpoints},
        "rankings": {"anchor_fraction": 0.25, "top_k": 8, "n_bottom": 4, "n_random": 6, "eval_pool_size": 10,
                     "anchor_gradients": anchor_gradients},
    })
    base = run_base_model(cfg)
    assert base.metadata["adapter"] and base.data_version != model_dir_hash(local_lm)  # the model *with* its adapters
    teacher = run_all_shards(cfg, progress=False)
    store = open_store(Paths(cfg.home_path))
    assert teacher.metadata["gradient_rows"] == 40 and store.manifest["base_model_hash"] == base.data_version
    # A local model's checkpoints are steps of its LoRA warm-up (here 3 and 6), each with its own Adam state.
    assert [c["adapter"].rsplit("/", 2)[-2:] for c in base.metadata["checkpoints"]][:-1] == [["snapshots", "step-3"]][: checkpoints - 1]
    assert store.dim == 256 * checkpoints
    assert all(".lora_" in m["name"] for m in store.manifest["projection"]["modules"])
    rankings = run_influence_rankings(cfg, progress=False)
    assert rankings.metadata["score_rows_written"] > 0

    # The store's rows and the noise ceiling's second-seed rows come from the same (Adam) extractor.
    from influcoder_dagster.data.tokenized import read_corpus
    from influcoder_dagster.data.tokens import Encoded
    from influcoder_dagster.teacher.checkpoints import checkpoint_extractor, load_checkpoint_decoders
    from influcoder_dagster.teacher.gradients import compute_gradients
    from influcoder_dagster.teacher.projection import ProjectionSpec
    from influcoder_dagster.teacher.rankings_db import connect_readonly
    from influcoder_dagster.teacher.scoring import full_scores

    decoders = load_checkpoint_decoders(base.metadata)
    model, tokenizer, _ = decoders[-1]
    spec = ProjectionSpec.from_json(store.manifest["projection"])
    corpus = read_corpus(Paths(cfg.home_path).corpus)
    seqs = dict(zip(corpus.column("sample_id").to_pylist(), corpus.column("input_ids").to_pylist(), strict=True))

    def rows(spec_, ids, plain=False):
        extractor = checkpoint_extractor(decoders, spec_) if plain else pool_extractor(decoders, spec_, cfg)
        return compute_gradients(extractor, [Encoded(seqs[i]) for i in ids], 8).numpy()

    some = list(seqs)[:6]
    np.testing.assert_allclose(rows(spec, some), store.lookup(np.array(some)), rtol=2e-2, atol=2e-3)
    # An anchor's query side is its stored (Adam) row, or with "plain" its plain gradient as a user
    # query's, against the pool's Adam rows: under the store's seed ('eval') and the second ('eval_ceiling').
    plain = anchor_gradients == "plain"
    con = connect_readonly(cfg.home_path)
    scored = {kind: con.execute("""SELECT q.sample_id, s.sample_id, s.score FROM scores s JOIN queries q USING (query_id)
                                   WHERE s.kind = ? ORDER BY 1, 2""", [kind]).fetchall()
              for kind in ("eval", "eval_ceiling", "eval_as_queried")}
    con.close()
    anchor = scored["eval"][0][0]
    pool = [sid for a, sid, _ in scored["eval"] if a == anchor]
    np.testing.assert_allclose(full_scores(rows(spec, [anchor], plain=plain), store.lookup(np.array(pool)))[0],
                               [s for a, _, s in scored["eval"] if a == anchor], atol=1e-3)
    spec2 = ProjectionSpec(spec.kind, spec.seed + 1, spec.dim, spec.normalize_modules, spec.modules)
    np.testing.assert_allclose(full_scores(rows(spec2, [anchor], plain=plain), rows(spec2, pool))[0],
                               [s for a, _, s in scored["eval_ceiling"] if a == anchor], atol=1e-4)
    # With stored anchors, the same pairs are also scored as a user query is ('eval_as_queried');
    # with plain anchors, 'eval' already is that view.
    if plain:
        assert not scored["eval_as_queried"]
    else:
        assert [(a, p) for a, p, _ in scored["eval_as_queried"]] == [(a, p) for a, p, _ in scored["eval"]]
        np.testing.assert_allclose(full_scores(rows(spec, [anchor], plain=True), store.lookup(np.array(pool)))[0],
                                   [s for a, _, s in scored["eval_as_queried"] if a == anchor], atol=1e-3)


def test_every_quarantine_reason_is_counted_from_the_file_to_the_rankings_database(tmp_path, local_lm):
    from influcoder_dagster.stages.rankings import run_influence_rankings
    from influcoder_dagster.teacher.rankings_db import run_query

    data = tmp_path / "data"
    data.mkdir()
    good = [json.dumps({"text": f"sample number {i} talks about topic {i % 7}."}) for i in range(40)]
    bad = ['{"text": "\\ud800 lone surrogate"}', "[" * 100_000, "{not json", '{"text": null}', '{"text": "   "}',
           json.dumps({"text": "a NUL \u0000 here"}), json.dumps({"body": "no text field"}), good[0]]
    (data / "messy.jsonl").write_text("\n".join(good + bad) + "\n")
    (data / "quotes.csv").write_text('text\n"fine csv row"\n"bad"x\n"never closed\n')
    (data / "notes.docx").write_bytes(b"PK")
    cfg = Config.model_validate({"home": str(tmp_path / "home"), "dataset": {"path": str(data)},
                                 "model": {"base_model": str(local_lm), "max_length": 32},
                                 "projection": {"dim": 256, "kind": "logra", "target": "weights", "adam_precondition": False},
                                 "rankings": {"anchor_fraction": 0.2, "eval_pool_size": 10}})
    run_base_model(cfg)
    published = run_all_shards(cfg, progress=False).metadata
    assert published["rows_read"] == published["rows_kept"] + published["rows_quarantined"] == len(good) + len(bad) + 3
    assert [f["path"].endswith("notes.docx") for f in published["files_skipped"]] == [True] and published["warning"]
    run_influence_rankings(cfg, progress=False)
    _, rows = run_query(cfg.home_path, "SELECT regexp_extract(reason, '^[^:(]*'), count(*) FROM quarantine GROUP BY 1 ORDER BY 1")
    assert dict(rows) == {"JSON nested too deeply to parse": 1, "NUL character in 'text' at character 6": 1,
                          "duplicate of line 1": 1, "empty 'text'": 1, "field 'text' is null": 1,
                          "invalid Unicode in 'text'": 1, "malformed CSV": 1, "malformed JSON": 1,
                          "missing field 'text'": 1, "unclosed quote": 1}


def test_a_tiny_decoders_checkpoints_are_its_earlier_epochs_each_with_its_own_warmed_up_adapters(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": f"sample number {i} talks about topic {i % 7}."}) + "\n" for i in range(40)))
    cfg = Config.model_validate({
        "home": str(tmp_path / "home"), "dataset": {"path": str(data)},
        "model": {"epochs": 4, "n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 300, "max_length": 32},
        "projection": {"dim": 64, "target": "lora", "adam_precondition": True, "lora_rank": 2, "lora_warmup_steps": 3, "checkpoints": 3},
    })
    base = run_base_model(cfg)
    checkpoints = base.metadata["checkpoints"]
    assert [c["path"].rsplit("/", 1)[-1] for c in checkpoints[:-1]] == ["epoch-1", "epoch-2"]  # then the final decoder
    assert len({c["adapter"] for c in checkpoints}) == 3
    shards = run_all_shards(cfg, progress=False)
    assert open_store(Paths(cfg.home_path)).dim == 3 * 64 and shards.metadata["gradient_rows"] == 40
    assert run_base_model(cfg).data_version == base.data_version  # reused, not retrained


@pytest.mark.parametrize("logit_fisher", [False, True])
def test_the_head_target_stores_the_output_heads_gradient_and_a_query_of_a_stored_text_matches_its_row(tmp_path, local_lm, logit_fisher):
    from influcoder_dagster.stages.rankings import run_influence_rankings
    from influcoder_dagster.teacher.base_model import base_model_record
    from influcoder_dagster.teacher.projection import ProjectionSpec
    from influcoder_dagster.teacher.query_gradients import QueryGradients

    texts = [f"sample number {i} talks about topic {i % 7}." for i in range(30)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = Config.model_validate({"home": str(tmp_path / "home"), "dataset": {"path": str(data)},
                                 "model": {"base_model": str(local_lm), "max_length": 32},
                                 "projection": {"dim": 256, "kind": "countsketch", "target": "head", "adam_precondition": False,
                                                "logit_fisher": logit_fisher},
                                 "rankings": {"anchor_fraction": 0.2, "eval_pool_size": 10}})
    assert not run_base_model(cfg).metadata["adapter"]  # no warm-up: the head's gradient needs no adapters
    run_all_shards(cfg, progress=False)
    paths = Paths(cfg.home_path)
    store = open_store(paths)
    assert [m["name"] for m in store.manifest["projection"]["modules"]] == ["lm_head"] and store.dim == 256
    rows = np.concatenate([block for _, block in store.iter_blocks(64)])
    base, spec = base_model_record(paths), ProjectionSpec.from_json(store.manifest["projection"])
    cosine = lambda q: rows.astype(np.float32) @ q / (np.linalg.norm(rows.astype(np.float32), axis=1) * np.linalg.norm(q))  # noqa: E731
    cosines = cosine(QueryGradients(base, spec, 32).of_texts([texts[5]])[0])
    assert cosines.max() > 0.999 and np.sort(cosines)[-2] < 0.999  # its own row, and only it
    assert bool(base.get("logit_fisher")) == logit_fisher
    if logit_fisher:  # the rows are whitened: the same text's plain head gradient is another vector
        plain = QueryGradients({k: v for k, v in base.items() if k != "logit_fisher"}, spec, 32).of_texts([texts[5]])[0]
        assert cosine(plain)[np.argmax(cosines)] < 0.99
    assert run_influence_rankings(cfg, progress=False).metadata["score_rows_written"] > 0
