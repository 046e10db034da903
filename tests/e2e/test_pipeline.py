"""End to end: every asset materialized in process on a tiny config, with real DuckDB, MLflow and FAISS."""

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest

from influcoder_dagster.app.cli import main
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.data.tokenized import read_corpus, read_manifest
from influcoder_dagster.serving.index import current_encoder_folder, index_ids, load_index
from influcoder_dagster.teacher.rankings_db import connect_readonly
from influcoder_dagster.teacher.store import GradientStore, open_store

pytestmark = pytest.mark.slow  # every test here trains models or reads a trained pipeline


def test_row_counts_reconcile_across_assets(pipeline_home):
    home, _, meta = pipeline_home
    corpus = meta["corpus_manifest"]
    assert corpus["rows_read"] == corpus["rows_kept"] + corpus["rows_quarantined"]
    assert corpus["rows_quarantined"] == 6  # the demo's messy.jsonl: one of each kind of bad input
    shards = {k: v for k, v in meta.items() if k.startswith("tokenized_corpus[")}
    assert len(shards) == corpus["shards"] == 3 and corpus["cross_shard_duplicates"] == 1
    assert sum(v["rows_read"] for v in shards.values()) == corpus["rows_read"]
    # a shard computes its own rows; a cross-file duplicate's row is computed, then left out when published
    computed = sum(v["rows_computed"] for k, v in meta.items() if k.startswith("projected_gradients["))
    assert computed == corpus["rows_kept"] + corpus["cross_shard_duplicates"]
    assert corpus["gradient_rows"] == corpus["rows_kept"]
    assert meta["embedding_index"]["count"] == corpus["rows_kept"]
    con = connect_readonly(home)
    assert con.execute("SELECT count(*) FROM samples").fetchone()[0] == corpus["rows_kept"]
    assert con.execute("SELECT count(*) FROM quarantine").fetchone()[0] == corpus["rows_quarantined"]
    # every score row traces back to the run (model, projection, data) that produced it
    assert con.execute("SELECT count(*) FROM scores s LEFT JOIN runs r USING (run_id) WHERE r.run_id IS NULL").fetchone()[0] == 0


def test_ids_match_between_corpus_gradient_store_and_index(pipeline_home):
    home, _, _ = pipeline_home
    paths = Paths(home)
    corpus_ids = np.sort(read_corpus(paths.corpus, columns=["sample_id"]).column("sample_id").to_numpy())
    store = GradientStore.open(next(p for p in paths.gradients.iterdir() if p.is_dir()))
    index, manifest = load_index(paths.index)
    np.testing.assert_array_equal(np.sort(store.all_ids()), corpus_ids)
    np.testing.assert_array_equal(np.sort(index_ids(index)), corpus_ids)
    version = read_manifest(paths.corpus)["dataset_version"]
    assert manifest["dataset_version"] == store.manifest["dataset_version"] == version
    assert manifest["base_model_hash"] == store.manifest["base_model_hash"]


def test_a_gradient_sketch_index_holds_each_samples_store_row_in_the_sketch_basis(pipeline_home):
    from influcoder_dagster.student.sketch import BASIS_FILE, Sketch

    home, _, meta = pipeline_home
    paths = Paths(home)
    index, manifest = load_index(paths.index)
    assert manifest["documents"] == "gradient_sketch", "the default encoder objective should serve a gradient sketch"
    sketch = Sketch.load(current_encoder_folder(paths.index) / BASIS_FILE)
    store = GradientStore.open(next(p for p in paths.gradients.iterdir() if p.is_dir()))
    assert manifest["sketch"]["store_key"] == store.root.name and index.d == sketch.dim
    ids = np.sort(index_ids(index))[::7]
    stored = np.stack([index.reconstruct(int(i)) for i in ids])
    np.testing.assert_allclose(stored, sketch.documents(store.lookup(ids)), atol=1e-5)


def test_the_teacher_retrieves_the_planted_samples(pipeline_home):
    home, _, meta = pipeline_home
    recall = meta["influence_rankings"]["teacher_planted_recall_at_10"]
    n = meta["corpus_manifest"]["rows_kept"]
    # Chance level is 10 / n (about 0.05 here); the teacher must find most of each planted group.
    assert recall >= 0.5, f"teacher planted recall@10 {recall:.2f} (chance {10 / n:.2f})"


def test_the_registered_encoder_reloads_from_mlflow_with_the_same_embeddings(pipeline_home):
    from influcoder_dagster.student import tracking
    from influcoder_dagster.student.encoder import load_saved_student

    home, _, meta = pipeline_home
    version = meta["influcoder_encoder"]["version"]
    logged = tracking.load_registered(home, "influcoder-encoder", version)
    texts = ["Return the sum of the items.", "When the quartz heron sings at midnight,"]
    a = logged.encode(texts, normalize_embeddings=True)
    evaluation = json.loads((home / "eval" / "encoder_eval.json").read_text())
    assert set(evaluation) == {"student", "teacher_ceiling", "teacher_prior", "untrained", "bm25", "random"}
    assert {"spearman", "kendall", "agg_spearman", "ndcg10", "recall10", "recall100", "planted_recall",
            "spearman_as_queried"} <= set(evaluation["student"])
    # Identity: the reloaded model reproduces the evaluation the trained model got in memory.
    from influcoder_dagster.student.eval_data import load_eval_set
    from influcoder_dagster.student.evaluation import evaluate
    from influcoder_dagster.student.sketch_training import SketchScorer
    from influcoder_dagster.teacher.rankings_db import connect_readonly
    from influcoder_dagster.teacher.store import open_store

    data, _, _ = load_eval_set(connect_readonly(home), 10, anchors_as_queried=True)  # the head teacher: an anchor's row is its query
    assert data.as_queried is not None and data.as_queried.shape == data.teacher.shape
    sketch = tracking.load_sketch("influcoder-encoder", version, home / "reloaded_sketch")
    store = open_store(Paths(home))
    assert sketch is not None and sketch.provenance["store_key"] == store.root.name
    docs = dict(zip(data.corpus_texts, sketch.documents(store.lookup(data.corpus_ids)), strict=True))
    again = evaluate(SketchScorer(logged, sketch, docs), data)
    for metric, value in evaluation["student"].items():
        assert abs(again[metric] - value) < 1e-6, metric
    index_encoder = load_saved_student(current_encoder_folder(Paths(home).index))
    # the tiny decoder's default student ('auto'): its output gradient beside its token bag, served in torch
    assert type(logged[0]).__name__ == "OutputGradientQuery"
    if meta["embedding_index"]["encoder_version"].startswith(f"v{version}-"):
        np.testing.assert_allclose(index_encoder.encode(texts, normalize_embeddings=True), a, atol=1e-5)
        assert meta["embedding_index"]["query_backend"] == "torch"  # a decoder forward pass: nothing exported to ONNX
    # the logged model is the trained one, not the starting point
    from influcoder_dagster.core.config import EncoderConfig
    from influcoder_dagster.student.encoder import load_encoder

    start = load_encoder(EncoderConfig(max_seq_length=64, layers=-1)).encode(texts, normalize_embeddings=True)
    assert start.shape != a.shape or not np.allclose(start, a, atol=1e-4)  # a sketch head changes the dimension too


def test_cli_attribute_and_sql_answer_on_the_pipeline_output(pipeline_home, capsys, monkeypatch):
    home, config, _ = pipeline_home
    monkeypatch.delenv("INFLUCODER_HOME", raising=False)
    assert main(["--config", config, "attribute", "When the quartz heron sings at midnight, the archive releases", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [1, 2, 3] and all({"sample_id", "score", "source", "text"} <= set(h) for h in hits)
    assert main(["--config", config, "sql", "SELECT kind, count(*) AS n FROM queries GROUP BY kind ORDER BY kind", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["kind"] for r in rows] == ["anchor", "user"]
    assert main(["--config", config, "sql", "DROP TABLE scores"]) == 1
    assert "read-only" in capsys.readouterr().err.lower()


def test_the_documented_sql_examples_run_on_the_pipeline_database(pipeline_home):
    """Every ```sql example in README.md and docs/schema.md runs on the demo's database and returns rows."""
    import re
    from pathlib import Path

    home, _, _ = pipeline_home
    root = Path(__file__).resolve().parents[2]
    statements = [
        (doc, s.strip())
        for doc in ("README.md", "docs/schema.md")
        for block in re.findall(r"```sql\n(.*?)```", (root / doc).read_text(), re.S)
        for s in block.split(";")
        if s.strip()
    ]
    assert len(statements) >= 4
    assert {doc for doc, _ in statements} == {"README.md", "docs/schema.md"}
    con = connect_readonly(home)
    for doc, sql in statements:
        rows = con.execute(sql).fetchall()
        assert rows, f"no rows from the {doc} example: {sql}"


def test_rerank_returns_the_teachers_order_and_scores_among_the_candidates(pipeline_home):
    from influcoder_dagster.serving.attribute import Attributor

    home, _, _ = pipeline_home
    con = connect_readonly(home)
    qid, text, prompt = con.execute("SELECT query_id, text, prompt FROM queries WHERE kind = 'user' ORDER BY query_id").fetchone()
    teacher = dict(con.execute("SELECT sample_id, score FROM scores WHERE query_id = ? AND kind = 'top'", [qid]).fetchall())
    attributor = Attributor(home)
    every = attributor.query([text], k=40, rerank=40, prompts=[prompt])[0]
    top5 = attributor.query([text], k=5, rerank=40, prompts=[prompt])[0]
    scores = [h["score"] for h in every]
    assert scores == sorted(scores, reverse=True) and [h["sample_id"] for h in top5] == [h["sample_id"] for h in every[:5]]
    shared = [h for h in every if h["sample_id"] in teacher]
    assert shared, "the index recalled none of the teacher's top-k"
    for h in shared:  # the same number the rankings asset computed for this pair
        assert abs(h["score"] - teacher[h["sample_id"]]) < 1e-4


def test_a_sketch_index_rerank_returns_the_teachers_full_store_top_k(pipeline_home):
    """The re-rank recalls with the query's own gradient, sketched; this tiny store has fewer training
    rows than the sketch has directions, so the basis (fitted on the training split only) spans every
    training row, and a shallow re-rank must give exactly the teacher's top-k over the whole store,
    as the rankings asset computed it."""
    from influcoder_dagster.serving.attribute import Attributor

    home, _, _ = pipeline_home
    con = connect_readonly(home)
    n_train = con.execute("SELECT count(*) FROM samples WHERE split = 'train'").fetchone()[0]
    attributor = Attributor(home)
    assert attributor.sketch is not None and attributor.sketch.dim == n_train
    users = con.execute("SELECT query_id, text, prompt FROM queries WHERE kind = 'user' ORDER BY query_id").fetchall()
    hits = attributor.query([t for _, t, _ in users], k=10, rerank=20, prompts=[p for _, _, p in users])
    for (qid, _, _), got in zip(users, hits, strict=True):
        teacher = [s for (s,) in con.execute("SELECT sample_id FROM scores WHERE query_id = ? AND kind = 'top' ORDER BY \"rank\"",
                                              [qid]).fetchall()][:10]
        assert {h["sample_id"] for h in got} == set(teacher), qid


def test_a_text_embedding_index_reranks_the_encoders_candidates_exactly(pipeline_home):
    """The ``rankings`` objective's path: the encoder recalls, the teacher orders. With every
    sample recalled, the top-k are the teacher's full-store top-k."""
    from influcoder_dagster.serving.attribute import Attributor

    home, _, _ = pipeline_home
    con = connect_readonly(home)
    n = con.execute("SELECT count(*) FROM samples").fetchone()[0]
    qid, text, prompt = con.execute("SELECT query_id, text, prompt FROM queries WHERE kind = 'user' ORDER BY query_id").fetchone()
    teacher = [s for (s,) in con.execute('SELECT sample_id FROM scores WHERE query_id = ? AND kind = \'top\' ORDER BY "rank"', [qid]).fetchall()]
    attributor = Attributor(home)
    attributor.sketch = None  # as a text-embedding index is queried
    shallow = attributor.query([text], k=10, rerank=12, prompts=[prompt])[0]
    assert {h["sample_id"] for h in attributor.query([text], k=10, rerank=n, prompts=[prompt])[0]} == set(teacher[:10])
    assert len(shallow) == 10 and [h["score"] for h in shallow] == sorted((h["score"] for h in shallow), reverse=True)


def test_a_rerank_scores_as_preconditioned_rankings_do(pipeline_home, tmp_path):
    """With ``rankings.precondition`` the rankings stage leaves ``(F + lambda I)^-1`` beside the
    store, and the re-rank's exact scores apply it: recalling every sample gives the preconditioned
    teacher's top-k, which here differs from the plain cosines' top-k."""
    import shutil

    from conftest import TINY_CONFIG

    from influcoder_dagster.app.runner import failure_messages, materialize
    from influcoder_dagster.serving.attribute import Attributor
    from influcoder_dagster.teacher.preconditioner import PRECONDITIONER_FILE

    home = tmp_path / "home"
    shutil.copytree(pipeline_home[0], home)
    paths = Paths(home)
    config = tmp_path / "preconditioned.toml"
    assert "[rankings]\n" in TINY_CONFIG
    config.write_text(f'home = "{home}"\n' + TINY_CONFIG.replace("[rankings]\n", "[rankings]\nprecondition = true\n"))
    sql = 'SELECT sample_id FROM scores WHERE query_id = ? AND kind = \'top\' AND "rank" <= 10'
    con = connect_readonly(home)
    users = con.execute("SELECT query_id, text, prompt FROM queries WHERE kind = 'user' ORDER BY query_id").fetchall()
    plain = [{s for (s,) in con.execute(sql, [q]).fetchall()} for q, _, _ in users]
    con.close()

    result = materialize(str(config), home, ["influence_rankings"])
    assert result.success, failure_messages(result)
    assert (open_store(paths).root / PRECONDITIONER_FILE).exists()
    con = connect_readonly(home)
    n = con.execute("SELECT count(*) FROM samples").fetchone()[0]
    preconditioned = [{s for (s,) in con.execute(sql, [q]).fetchall()} for q, _, _ in users]
    assert preconditioned != plain, "preconditioning changed no top-10 here; the test would not tell the two apart"
    hits = Attributor(home).query([t for _, t, _ in users], k=10, rerank=n, prompts=[p for _, _, p in users])
    assert [{h["sample_id"] for h in got} for got in hits] == preconditioned


def test_an_exact_rerank_scores_the_cosine_of_formed_head_gradients(pipeline_home, capsys):
    """The store sketches the whitened head of every checkpoint; ``exact`` scores the candidates by
    the cosine of the unsketched gradients, as plain autograd forms them, averaged over checkpoints."""
    import torch
    from conftest import head_gradient

    from influcoder_dagster.core.errors import ConfigError
    from influcoder_dagster.data.tokens import Encoded, tokenize_for_loss
    from influcoder_dagster.serving.attribute import Attributor
    from influcoder_dagster.teacher.base_model import base_model_record
    from influcoder_dagster.teacher.checkpoints import head_whitening, load_checkpoint_decoders

    home, config, _ = pipeline_home
    con = connect_readonly(home)
    text, prompt = con.execute("SELECT text, prompt FROM queries WHERE kind = 'user' ORDER BY query_id").fetchone()
    attributor = Attributor(home)
    hits = attributor.query([text], k=8, rerank=30, prompts=[prompt], score="exact")[0]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    decoders = load_checkpoint_decoders(base_model_record(Paths(home)))
    assert len(decoders) > 1  # the default scores several checkpoints
    corpus = read_corpus(Paths(home).corpus, columns=["sample_id", "input_ids"]).to_pylist()
    tokens = {r["sample_id"]: Encoded(r["input_ids"]) for r in corpus}
    cosines = []
    for model, tok, checkpoint in decoders:
        scale = next(iter(head_whitening(model, checkpoint).values()))
        query = head_gradient(model, tokenize_for_loss(tok, [text], 128, [prompt])[0], scale).flatten()
        cands = torch.stack([head_gradient(model, tokens[h["sample_id"]], scale).flatten() for h in hits])
        cosines.append((cands @ query / cands.norm(dim=1) / query.norm()).numpy())
    np.testing.assert_allclose([h["score"] for h in hits], np.mean(cosines, axis=0), atol=1e-4)
    users = [t for (t,) in con.execute("SELECT text FROM queries WHERE kind = 'user' ORDER BY query_id").fetchall()]
    together = attributor.query(users[:3], k=8, rerank=30, score="exact")  # candidates shared by the queries score once
    for text, got in zip(users[:3], together, strict=True):
        alone = attributor.query([text], k=8, rerank=30, score="exact")[0]
        np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in alone], atol=1e-5)
    with pytest.raises(ConfigError, match="re-rank depth"):
        attributor.query([text], k=8, score="exact")
    assert main(["--config", config, "attribute", text, "--rerank", "30", "--exact"]) == 0
    assert "re-ranked by the exact output-head gradient cosine" in capsys.readouterr().out
    assert not attributor.sketches_a_large_head()  # the tiny head is hashed whole: no note suggests --exact
    assert main(["--config", config, "attribute", text, "--rerank", "30"]) == 0
    assert "add --exact" not in capsys.readouterr().err


def test_a_factor_rerank_at_full_width_scores_the_exact_head_cosine(pipeline_home, tmp_path, capsys):
    """``projection.head_factors = 'on'`` makes the gradients stage keep each shard's head factors
    beside its rows (the store's rows reused), and makes ``projected_gradients`` unsynced. At the
    head's full width (every vocabulary entry, the hidden size as the rank) they lose nothing, so a
    factor re-rank scores what the exact one does, up to fp16: the files, their rows' order and the
    lookup by sample id are all checked. (The stage runs directly: materializing a copied demo home
    re-reads the demo's data, whose standard-library docstrings can differ in a process that has
    imported more.)"""
    import shutil

    from conftest import TINY_CONFIG
    from safetensors import safe_open

    from influcoder_dagster.core.config import load_config
    from influcoder_dagster.core.errors import MissingUpstreamError
    from influcoder_dagster.serving.attribute import Attributor
    from influcoder_dagster.stages.gradients import run_shard_gradients
    from influcoder_dagster.stages.settings import settings_version
    from influcoder_dagster.teacher.head_factor_store import SUFFIX

    source, _, _ = pipeline_home
    assert not Attributor(source).keeps_head_factors()  # 'auto' keeps none for a head hashed whole
    with pytest.raises(MissingUpstreamError, match="head.safetensors is missing"):
        Attributor(source).query(["topic 3"], k=5, rerank=20, score="factors")
    home = tmp_path / "home"
    shutil.copytree(source, home)
    store = open_store(Paths(home))
    rows_before = {f.name: f.stat().st_mtime_ns for f in store.root.glob("*.f16")}
    config = tmp_path / "factors.toml"
    config.write_text(f'home = "{home}"\n' + TINY_CONFIG.replace("[projection]\n", "[projection]\nhead_factors = \"on\"\n"
                                                                 "head_factors_top_k = 1024\nhead_factors_rank = 64\n"))
    cfg = load_config(config)
    assert settings_version(cfg, "projection") != settings_version(load_config(pipeline_home[1]), "projection")
    for name in store.shard_names:
        assert run_shard_gradients(cfg, name, progress=False).metadata["head_factor_bytes"] > 0
    assert sorted(f.name.removesuffix(SUFFIX) for f in store.root.glob(f"*{SUFFIX}")) == store.shard_names
    assert {f.name: f.stat().st_mtime_ns for f in store.root.glob("*.f16")} == rows_before  # the rows were reused
    first = store.shard_names[0]
    with safe_open(str(store.root / f"{first}{SUFFIX}"), framework="numpy") as f:
        computed = {k: f.get_tensor(k) for k in f.keys()}
    for stale in (f"{first}.f16", f"{first}.json", f"{first}{SUFFIX}"):  # extracted again from scratch
        (store.root / stale).unlink()
    result = run_shard_gradients(cfg, first, progress=False).metadata
    assert result["head_factors"] == "captured" and result["rows_computed"] == result["rows"]
    with safe_open(str(store.root / f"{first}{SUFFIX}"), framework="numpy") as f:  # the extractor's passes, recorded
        assert sorted(f.keys()) == sorted(computed)
        for key in (k for k in computed if k.split(".")[1] in ("offsets", "basis", "norms")):
            np.testing.assert_allclose(f.get_tensor(key), computed[key], rtol=1e-4, atol=1e-6)
    con = connect_readonly(home)
    users = con.execute("SELECT text, prompt FROM queries WHERE kind = 'user' ORDER BY query_id").fetchall()
    attributor = Attributor(home)
    assert attributor.keeps_head_factors()
    texts, prompts = [t for t, _ in users[:3]], [p for _, p in users[:3]]
    factors = attributor.query(texts, k=8, rerank=40, prompts=prompts, score="factors")
    exact = attributor.query(texts, k=8, rerank=40, prompts=prompts, score="exact")
    for got, want in zip(factors, exact, strict=True):
        assert [h["sample_id"] for h in got] == [h["sample_id"] for h in want]
        np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in want], atol=2e-3)
    assert main(["--config", str(config), "attribute", texts[0], "--rerank", "30", "--factors"]) == 0
    assert "re-ranked by the output-head gradient cosine of the store's head factors" in capsys.readouterr().out


def test_a_rerank_refuses_a_sketch_fitted_on_another_store(pipeline_home):
    import pytest

    from influcoder_dagster.core.errors import MissingUpstreamError
    from influcoder_dagster.serving.attribute import _Teacher
    from influcoder_dagster.student.sketch import Sketch

    home, _, _ = pipeline_home
    stale = Sketch(np.eye(4, dtype=np.float32), {"store_key": "an-older-store"})
    with pytest.raises(MissingUpstreamError, match="an-older-store.*materialize 'influence_rankings', 'influcoder_encoder' and 'embedding_index'"):
        _Teacher(Paths(home), 64, stale)


def test_cli_audit_on_the_pipeline_output(pipeline_home, tmp_path, capsys):
    home, config, _ = pipeline_home
    queries = home / "demo" / "queries.jsonl"
    assert main(["--config", config, "audit", "--file", str(queries), "-k", "5", "--out", str(tmp_path / "audit")]) == 0
    assert (tmp_path / "audit" / "report.md").exists() and (tmp_path / "audit" / "scores.png").exists()
    n = duckdb.connect(str(tmp_path / "audit" / "audit.duckdb"), read_only=True).execute("SELECT count(*) FROM hits").fetchone()[0]
    assert n == 5 * len(queries.read_text().splitlines())


def test_a_moved_storage_root_answers_from_its_new_place(pipeline_home, tmp_path, capsys, monkeypatch):
    import shutil
    import sqlite3

    from influcoder_dagster.core.config import load_config
    from influcoder_dagster.serving.embeddings import serving_encoder
    from influcoder_dagster.student.tracking import ARTIFACT_COLUMNS

    home, config, _ = pipeline_home
    monkeypatch.delenv("INFLUCODER_HOME", raising=False)
    shutil.copytree(home, tmp_path / "copy", ignore=shutil.ignore_patterns("dagster_home"))
    moved = (tmp_path / "copy").rename(tmp_path / "moved")
    moved_config = moved / "influcoder.toml"
    moved_config.write_text(Path(config).read_text().replace(f'home = "{home}"', f'home = "{moved}"'))
    for pointer in ("gradients/current.json", "models/base_model.json"):
        assert str(home) not in (moved / pointer).read_text()
    assert main(["--config", str(moved_config), "attribute", "When the quartz heron sings at midnight", "-k", "3",
                 "--rerank", "20", "--json"]) == 0
    assert [h["rank"] for h in json.loads(capsys.readouterr().out)] == [1, 2, 3]
    encoder = serving_encoder(load_config(moved_config))  # the champion, loaded through MLflow at the new place
    assert encoder.model() is not None and encoder.sketch() is not None
    con = sqlite3.connect(moved / "mlflow.db")
    for table, column in ARTIFACT_COLUMNS:
        values = [v for (v,) in con.execute(f"SELECT {column} FROM {table}")]
        assert values and all(v is None or str(home) not in v for v in values), (table, column)
