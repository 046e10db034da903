"""The gradient sketch keeps the teacher's cosines in its span, and the ridge head is what the encoder serves."""

import numpy as np
import pytest

from influcoder_dagster.student.sketch import Sketch, fine_tune, fit_sketch, with_sketch_head
from influcoder_dagster.teacher.scoring import full_scores, unit_rows


def test_a_sketch_spanning_the_rows_keeps_every_teacher_cosine():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((60, 4)) @ rng.standard_normal((4, 32))  # rank 4 in 32 dimensions
    queries = rng.standard_normal((5, 4)) @ rng.standard_normal((4, 32))
    queries = np.concatenate([queries, rows[:3]])  # queries need not lie in the span; these do
    sketch = fit_sketch(rows, k=4, seed=0, store_key="s")
    assert sketch.basis.shape == (4, 32)
    np.testing.assert_allclose(sketch.basis @ sketch.basis.T, np.eye(4), atol=1e-5)
    np.testing.assert_allclose(sketch.documents(rows[:3]) @ sketch.documents(rows).T, full_scores(rows[:3], rows), atol=1e-5)
    # A unit query sketch ranks the documents exactly as the teacher does (its norm differs, not the order).
    scores = sketch.targets(rows[:3]) @ sketch.documents(rows).T
    assert (np.argsort(-scores, axis=1) == np.argsort(-full_scores(rows[:3], rows), axis=1)).all()
    smaller = fit_sketch(rows, k=2, seed=0)
    assert smaller.dim == 2 and not np.allclose(smaller.documents(rows) @ smaller.documents(rows).T, full_scores(rows, rows), atol=1e-3)


def test_a_sketch_round_trips_with_its_provenance(tmp_path):
    sketch = fit_sketch(np.random.default_rng(1).standard_normal((20, 8)), k=3, seed=0, store_key="abc", dataset_version="d1")
    again = Sketch.load(sketch.save(tmp_path / "s.safetensors"))
    np.testing.assert_array_equal(again.basis, sketch.basis)
    assert again.provenance == {"k": 3, "fit_rows": 20, "seed": 0, "store_key": "abc", "dataset_version": "d1"}


@pytest.mark.slow
def test_the_ridge_head_is_wired_into_the_encoder_and_fine_tuning_lowers_its_loss():
    from influcoder_dagster.core.config import EncoderConfig
    from influcoder_dagster.student.encoder import encode, load_encoder

    texts = [f"Return item {i} of the {['list', 'tuple', 'mapping', 'queue'][i % 4]} after {i % 5} retries." for i in range(48)]
    base = load_encoder(EncoderConfig(max_seq_length=32, layers=-1))
    w = np.random.default_rng(0).standard_normal((base.get_embedding_dimension(), 6)).astype(np.float32)
    targets = unit_rows(encode(base, texts) @ w).numpy()  # a function of the text the head can learn

    student, fit = with_sketch_head(base, texts, targets)
    served = encode(student, texts, "query")
    assert served.shape == (48, 6)
    # The served encoder reproduces scikit-learn's ridge prediction (same weights, bias and input).
    assert abs(float(np.mean(np.sum(served * targets, axis=1))) - fit["train_cosine"]) < 1e-3
    assert fit["train_cosine"] > 0.9
    losses = fine_tune(student, texts, targets, EncoderConfig(sketch_epochs=3, sketch_lr=1e-4, train_layers=1), batch_size=16, progress=False)
    assert len(losses) == 3 and losses[-1] < losses[0]
