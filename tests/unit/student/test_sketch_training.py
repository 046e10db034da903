"""No leak: the sketch basis is fitted on training rows only, so held-out rows cannot shape it."""

import numpy as np

from influcoder_dagster.core.config import Config
from influcoder_dagster.student.sketch_training import fit_training_sketch
from influcoder_dagster.teacher.store import GradientStore


def test_held_out_rows_do_not_enter_the_sketch_basis(tmp_path):
    rng = np.random.default_rng(0)
    train = np.zeros((20, 16), np.float32)
    train[:, :4] = rng.standard_normal((20, 4))  # training rows live in dims 0-3 ...
    held = np.zeros((60, 16), np.float32)
    held[:, 8:12] = rng.standard_normal((60, 4))  # ... held-out rows, three times as many, in dims 8-11
    store = GradientStore.create(tmp_path, {"kind": "logra", "dim": 16, "seed": 0, "modules": []}, "m")
    writer = store.writer("s", np.arange(80, dtype=np.int64))
    writer.write(np.arange(80), np.concatenate([train, held]))
    writer.finish()
    store.publish({"s": ""}, {}, keep=["s"])
    cfg = Config.model_validate({"encoder": {"sketch_dim": 4}})
    sketch = fit_training_sketch(cfg, GradientStore.open(store.root), np.arange(20, dtype=np.int64), None)
    assert sketch.provenance["fit_rows"] == 20 and sketch.provenance["fitted_on"] == "train split"
    assert np.abs(sketch.basis[:, 8:12]).max() < 1e-6  # fitted on every row, the basis would be the held-out dims
    np.testing.assert_allclose(np.linalg.norm(sketch.basis[:, :4], axis=1), 1.0, atol=1e-5)
