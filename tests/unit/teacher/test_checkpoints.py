"""Several checkpoints' gradients in one row: its dot products are the mean of the checkpoints' cosines."""

import copy

import numpy as np
import pytest
import torch

from influcoder_dagster.core.config import ModelConfig
from influcoder_dagster.data.tokens import tokenize_for_loss
from influcoder_dagster.teacher.checkpoints import CheckpointExtractor, checkpoints_of
from influcoder_dagster.teacher.decoder import checkpoint_epochs, epochs_folder, resolve_base_model
from influcoder_dagster.teacher.gradients import GradientExtractor, compute_gradients, projection_for

TEXTS = [f"sample number {i} talks about topic {i % 7} and ends here." for i in range(12)]


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_rows_dot_products_are_the_mean_of_each_checkpoints_cosine(tiny_lm):
    model, tok = tiny_lm
    later = copy.deepcopy(model)
    with torch.no_grad():
        for p in later.parameters():
            p.add_(0.05 * torch.randn_like(p))  # another training state of the same architecture
    spec = projection_for(model, "countsketch", 128, seed=0)
    enc = tokenize_for_loss(tok, TEXTS, 32)
    one = [compute_gradients(GradientExtractor(m, spec, tok.pad_token_id), enc, 4).numpy() for m in (model, later)]
    both = CheckpointExtractor([GradientExtractor(m, spec, tok.pad_token_id) for m in (model, later)])
    rows = compute_gradients(both, enc, 4).numpy()
    assert rows.shape == (len(TEXTS), 2 * spec.dim)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(rows @ rows.T, sum(unit(g) @ unit(g).T for g in one) / 2, atol=1e-5)
    alone = CheckpointExtractor([GradientExtractor(model, spec, tok.pad_token_id)])
    np.testing.assert_array_equal(compute_gradients(alone, enc, 4).numpy(), one[0])  # one checkpoint: the plain row


def test_checkpoint_epochs_are_geometric_and_end_at_the_last():
    assert checkpoint_epochs(8, 4) == [1, 2, 4, 8]
    assert checkpoint_epochs(8, 1) == [8]
    assert checkpoint_epochs(6, 3) == [2, 3, 6]
    assert checkpoint_epochs(2, 4) == [1, 2]


@pytest.mark.slow
def test_the_tiny_decoder_keeps_its_earlier_epochs_with_their_learning_rates(tmp_path):
    cfg = ModelConfig(epochs=4, n_layer=1, n_embd=16, n_head=2, vocab_size=300, max_length=32)
    texts = TEXTS * 4
    info = resolve_base_model(cfg, lambda: texts, tmp_path, "test", checkpoints=3)
    assert [f.name for f in info.epochs] == ["epoch-1", "epoch-2"]
    assert all((f / "config.json").is_file() and f.parent == epochs_folder(info.path) for f in info.epochs)
    final_only = resolve_base_model(cfg, lambda: texts, tmp_path, "test")  # the same decoder, reused
    assert final_only.path == info.path and final_only.epochs == () and final_only.model_hash == info.model_hash


def test_a_record_without_checkpoints_is_its_final_state():
    (only,) = checkpoints_of({"path": "/m", "adapter": "/a"})
    assert (only.path, only.adapter) == ("/m", "/a")
