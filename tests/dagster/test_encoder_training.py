"""Distillation learns the teacher's ranking, and the quality gate keeps a worse encoder out."""

import numpy as np
import pytest

from influcoder_dagster.core.config import EncoderConfig
from influcoder_dagster.data.demo import docstring_passages
from influcoder_dagster.student.distill import AnchorGroup, train_encoder
from influcoder_dagster.student.encoder import encode, load_encoder
from influcoder_dagster.student.gate import prior_warning, promotion_decision
from influcoder_dagster.student.metrics import per_query_spearman

# The teacher below ranks by a made-up label that no pretrained encoder knows: a sample's code word.
CODE_WORDS = ["zorblat", "quiffen", "drabnix", "plimvex", "troskel", "vandrup"]


def _fixture(n: int = 72):
    passages = docstring_passages(n, seed=3, max_chars=120)
    group = np.arange(n) % 2  # the first three code words are group 0, the last three group 1
    texts = [f"{CODE_WORDS[3 * g + (i // 2) % 3]} {p}" for i, (p, g) in enumerate(zip(passages, group, strict=True))]
    jitter = np.random.default_rng(0).normal(0, 0.1, (n, n))

    def teacher(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (np.where(group[a][:, None] == group[b][None, :], 1.0, -1.0) + jitter[np.ix_(a, b)]).astype(np.float32)

    return texts, teacher


def _groups(texts, teacher, anchors, pool, rng):
    out = []
    for a in anchors:
        cands = rng.choice(pool[pool != a], size=12, replace=False)
        s = teacher(np.array([a]), cands)[0]
        order = np.argsort(-s)
        out.append(AnchorGroup(texts[a], {"top": ([texts[c] for c in cands[order[:6]]], s[order[:6]]),
                                          "random": ([texts[c] for c in cands[order[6:]]], s[order[6:]])},
                               int(a), {"top": cands[order[:6]], "random": cands[order[6:]]}))
    return out


@pytest.mark.slow
def test_a_short_distillation_run_raises_held_out_spearman_over_the_untrained_encoder():
    texts, teacher = _fixture()
    train, held = np.arange(48), np.arange(48, 72)
    h_anchor, h_pool = held[:8], held[8:]

    def heldout_spearman(model) -> float:
        student = encode(model, [texts[i] for i in h_anchor], "query") @ encode(model, [texts[i] for i in h_pool], "document").T
        return float(per_query_spearman(teacher(h_anchor, h_pool), student).mean())

    model = load_encoder(EncoderConfig(max_seq_length=40, layers=-1))
    before = heldout_spearman(model)
    cfg = EncoderConfig(epochs=2, anchors_per_step=4, n_top=4, n_bottom=0, n_random=4, lr=1e-4, max_seq_length=40)
    train_encoder(model, _groups(texts, teacher, train, train, np.random.default_rng(0)), cfg, progress=False, pair_teacher=teacher)
    after = heldout_spearman(model)
    print(f"held-out Spearman: untrained {before:.3f}, distilled {after:.3f}")
    assert after > before + 0.2


def test_the_gate_refuses_a_student_that_loses_to_a_baseline_or_to_the_champion():
    row = lambda s: {"spearman": s}  # noqa: E731
    table = {"student": row(0.30), "untrained": row(0.05), "bm25": row(0.12), "random": row(0.0)}
    assert promotion_decision(table, None)[0]
    assert promotion_decision(table, 0.25)[0]
    refused, why = promotion_decision(table, 0.31)
    assert not refused and "champion" in why
    refused, why = promotion_decision({**table, "bm25": row(0.35)}, None)
    assert not refused and "bm25" in why
    refused, why = promotion_decision({**table, "student": row(float("nan"))}, None)
    assert not refused and "no ranking" in why


def test_a_student_level_with_the_teacher_prior_is_promoted_with_a_warning():
    table = {"student": {"spearman": 0.30, "spearman_as_queried": 0.20}, "untrained": {"spearman": 0.05}, "bm25": {"spearman": 0.1},
             "random": {"spearman": 0.0}, "teacher_prior": {"spearman": 0.25, "spearman_as_queried": 0.22}}
    assert promotion_decision(table, None)[0]  # better than what would serve instead
    warning = prior_warning(table)
    assert warning and "spearman_as_queried (0.200)" in warning and "prior (0.220)" in warning
    table["teacher_prior"]["spearman_as_queried"] = 0.1
    assert prior_warning(table) is None
    assert prior_warning({k: v for k, v in table.items() if k != "teacher_prior"}) is None


@pytest.mark.slow
def test_an_encoder_no_better_than_its_start_fails_the_blocking_gate_and_stays_out_of_the_index(pipeline_home, tmp_path):
    import shutil

    from conftest import TINY_CONFIG
    from dagster import DagsterEventType

    from influcoder_dagster.app.runner import materialize, only_gate_failed
    from influcoder_dagster.core.atomic import read_json
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.student import tracking

    home = tmp_path / "home"
    shutil.copytree(pipeline_home[0], home)
    config = tmp_path / "untrained.toml"
    assert "[encoder]\nepochs = 1" in TINY_CONFIG
    config.write_text(f'home = "{home}"\n' + TINY_CONFIG.replace("[encoder]\nepochs = 1", '[encoder]\nobjective = "rankings"\nepochs = 0'))
    tracking.setup(home)
    champion = tracking.champion_version("influcoder-encoder")
    index_before = read_json(Paths(home).index / "manifest.json")

    result = materialize(str(config), home, ["influcoder_encoder", "embedding_index"])

    assert only_gate_failed(result)
    checks = [e.event_specific_data for _, events in result.runs for e in events
              if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION]
    assert [(c.check_name, c.passed) for c in checks] == [("quality_gate", False)]
    record = read_json(Paths(home).encoder_pointer)
    assert not record["promoted"] and "does not beat untrained" in record["promotion_reason"]
    assert tracking.champion_version("influcoder-encoder") == champion  # the alias did not move
    assert read_json(Paths(home).index / "manifest.json") == index_before  # the index was not rebuilt from it
    evaluation = read_json(Paths(home).eval / "encoder_eval.json")
    assert evaluation["student"]["spearman"] == evaluation["untrained"]["spearman"]


@pytest.mark.slow
def test_the_default_sketch_student_is_held_back_by_the_gate_when_training_ruins_it(pipeline_home, tmp_path):
    """The shipped objective (gradient_sketch) goes through the same blocking gate: a fine-tuning run
    with an absurd learning rate wrecks the encoder, and the gate keeps it out of the alias and the index."""
    import shutil

    from conftest import TINY_CONFIG

    from influcoder_dagster.app.runner import materialize, only_gate_failed
    from influcoder_dagster.core.atomic import read_json
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.student import tracking

    home = tmp_path / "home"
    shutil.copytree(pipeline_home[0], home)
    config = tmp_path / "ruined.toml"
    assert "sketch_epochs = 1" in TINY_CONFIG and "objective" not in TINY_CONFIG  # the default objective
    config.write_text(f'home = "{home}"\n' + TINY_CONFIG.replace("sketch_epochs = 1", "sketch_epochs = 2\nsketch_lr = 1000.0"))
    tracking.setup(home)
    champion = tracking.champion_version("influcoder-encoder")
    index_before = read_json(Paths(home).index_manifest)

    result = materialize(str(config), home, ["influcoder_encoder", "embedding_index"])

    assert only_gate_failed(result)
    record = read_json(Paths(home).encoder_pointer)
    assert not record["promoted"] and record["version"] != champion, record["promotion_reason"]
    assert tracking.champion_version("influcoder-encoder") == champion
    assert read_json(Paths(home).index_manifest) == index_before


@pytest.mark.slow
def test_the_pair_teacher_gives_the_scores_the_rankings_database_holds(pipeline_home):
    from influcoder_dagster.core.config import load_config
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.teacher.pair_teacher import pair_teacher_for
    from influcoder_dagster.teacher.rankings_db import connect_readonly

    home, config, _ = pipeline_home
    con = connect_readonly(home)
    rows = con.execute("""SELECT q.sample_id, s.sample_id, s.score FROM scores s JOIN queries q USING (query_id)
                          WHERE q.kind = 'anchor' AND s.kind IN ('top', 'bottom', 'random') ORDER BY 1, 2""").fetchall()
    con.close()
    anchors, samples, stored = (np.array(c) for c in zip(*rows, strict=True))
    cfg = load_config(config)
    store_key = connect_readonly(home).execute("SELECT store_key FROM runs ORDER BY created_at DESC LIMIT 1").fetchone()[0]
    teacher = pair_teacher_for(cfg, Paths(home), store_key)
    assert teacher.any_sample_as_query == (cfg.rankings.anchor_gradients == "stored")
    for a in np.unique(anchors)[:20]:
        mine = anchors == a
        np.testing.assert_allclose(teacher(np.array([a]), samples[mine])[0], stored[mine], atol=1e-5)


def test_in_batch_pairs_align_student_and_teacher_and_leave_out_self_pairs():
    import torch

    from influcoder_dagster.student.distill import _in_batch_pairs

    vec = {f"t{i}": torch.nn.functional.one_hot(torch.tensor(i), 8).float() * (i + 1) for i in range(8)}
    embed = lambda texts, role: torch.stack([vec[t] * (2 if role == "query" else 1) for t in texts])  # noqa: E731
    teacher = lambda a, b: (np.asarray(a)[:, None] * 10 + np.asarray(b)[None, :]).astype(np.float32)  # noqa: E731
    batch = [AnchorGroup("t0", {}, 0), AnchorGroup("t1", {}, 1)]
    lists = [(["t2", "t3", "t1"], np.zeros(3), [2, 3, 1]), (["t3", "t4"], np.zeros(2), [3, 4])]  # t1 is also an anchor

    student, scores = _in_batch_pairs(batch, lists, embed, teacher, anchors_as_queries=False)
    ids = [0, 1, 2, 3, 4]  # anchors first, candidates once each
    assert student.shape == scores.shape == (5, 4)
    for r, i in enumerate(ids):
        others = [j for j in ids if j != i]
        assert scores[r].tolist() == [10 * i + j for j in others]
        assert student[r].tolist() == [0.0] * 4  # one-hot rows: no overlap between different items

    student, scores = _in_batch_pairs(batch, lists, embed, teacher, anchors_as_queries=True)
    assert scores.tolist() == [[2, 3, 4], [12, 13, 14]]  # anchors (query head) x candidates that are not anchors
    assert student.shape == (2, 3)


@pytest.mark.slow
def test_the_champion_reloads_by_alias_with_identical_embeddings(pipeline_home, tmp_path):
    import shutil

    from influcoder_dagster.student import tracking

    home = tmp_path / "home"
    shutil.copytree(pipeline_home[0], home)
    version = pipeline_home[2]["influcoder_encoder"]["version"]
    tracking.setup(home)
    tracking.set_champion("influcoder-encoder", version)
    texts = ["Return the sum of the items.", "When the quartz heron sings at midnight,"]
    by_alias = tracking.load_registered(home, "influcoder-encoder", tracking.CHAMPION)
    by_version = tracking.load_registered(home, "influcoder-encoder", version)
    np.testing.assert_array_equal(encode(by_alias, texts, "query"), encode(by_version, texts, "query"))
    assert tracking.champion_version("influcoder-encoder") == version
