"""No leak into the student: held-out rows and texts cannot change the sketch basis, the ridge head
or the fine-tuning; they only enter as indexed documents."""

import numpy as np
import pytest

from influcoder_dagster.core.config import Config
from influcoder_dagster.student.evaluation import EvalSet
from influcoder_dagster.student.sketch_training import train_sketch_student
from influcoder_dagster.teacher.pair_teacher import PairTeacher
from influcoder_dagster.teacher.store import GradientStore

TRAIN = [f"Return item {i} of the {['list', 'tuple', 'mapping', 'queue'][i % 4]} after {i % 5} retries." for i in range(32)]
N_HELD = 12


def _student(tmp_path, held_rows: np.ndarray, held_texts: list[str], features: str, decoder):
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.student.encoder import load_encoder
    from influcoder_dagster.teacher.base_model import write_base_model_record

    rng = np.random.default_rng(0)
    train_rows = rng.standard_normal((len(TRAIN), 16)).astype(np.float32)
    n = len(TRAIN) + N_HELD
    store = GradientStore.create(tmp_path, {"kind": "logra", "dim": 16, "seed": 0, "modules": []}, "m")
    writer = store.writer("s", np.arange(n, dtype=np.int64))
    writer.write(np.arange(n), np.concatenate([train_rows, held_rows]))
    writer.finish()
    store.publish({"s": ""}, {}, keep=["s"])
    cfg = Config.model_validate({"home": str(tmp_path / "home"), "encoder": {
        "sketch_dim": 4, "sketch_epochs": 1, "train_layers": 1, "max_seq_length": 32, "layers": 1, "query_features": features}})
    write_base_model_record(Paths(cfg.home_path), {"path": str(decoder), "model_hash": "m"})  # the token bag reads its tokenizer
    data = EvalSet(anchor_texts=held_texts[:4], pool_texts=held_texts[4:], teacher=np.zeros((4, N_HELD - 4)), probe_texts=[],
                   probe_relevant=[], corpus_ids=np.arange(n), corpus_texts=TRAIN + held_texts)
    start = load_encoder(cfg.encoder)
    model, scorer, _, fit = train_sketch_student(cfg, start, PairTeacher(GradientStore.open(store.root)), data,
                                                 (list(range(len(TRAIN))), TRAIN), lambda *_: None, progress=False)
    return model, scorer, fit


@pytest.mark.slow
@pytest.mark.parametrize("features", ["decoder_tokens", "decoder_output_gradient", "sentence_encoder"])
def test_held_out_rows_and_texts_change_neither_the_head_nor_the_fine_tuning(tmp_path, local_lm, features):
    from influcoder_dagster.student.encoder import encode

    rng = np.random.default_rng(1)
    first = _student(tmp_path / "a", rng.standard_normal((N_HELD, 16)).astype(np.float32),
                     [f"Held-out sentence {i} about parsing options." for i in range(N_HELD)], features, local_lm)
    other = _student(tmp_path / "b", 50 * rng.standard_normal((N_HELD, 16)).astype(np.float32),
                     [f"A different held-out text {i} on network sockets." for i in range(N_HELD)], features, local_lm)
    probes = ["Return the queue after two retries.", "Parse the options of a socket."]
    np.testing.assert_array_equal(encode(first[0], probes, "query"), encode(other[0], probes, "query"))
    assert first[2] == other[2]  # the same ridge alpha, training cosine and sketch
    np.testing.assert_array_equal(first[1].sketch.basis, other[1].sketch.basis)
    # The held-out rows did change: they are documents of the index, sketched in the training basis.
    held = [first[1].docs[t] for t in first[1].docs if t.startswith("Held-out")]
    assert len(held) == N_HELD and not np.allclose(held[0], other[1].docs["A different held-out text 0 on network sockets."])
