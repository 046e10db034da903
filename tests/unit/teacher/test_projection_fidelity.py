"""Projected-gradient cosines track the exact ones on a trained tiny decoder, and better as dim grows."""

import numpy as np
import pytest
import torch

from influcoder_dagster.core.config import ModelConfig
from influcoder_dagster.data.tokens import tokenize_for_loss
from influcoder_dagster.student.metrics import per_query_spearman
from influcoder_dagster.teacher.decoder import load_decoder, train_tiny_decoder
from influcoder_dagster.teacher.gradients import GradientExtractor, compute_gradients, projection_for, trackable_modules

pytestmark = pytest.mark.slow  # every test here trains models or reads a trained pipeline


TEXTS = [f"{w} number {i} {v} the list of {i % 6} items and {w}s." for i in range(24)
         for w, v in [("function", "returns"), ("method", "sorts"), ("parser", "reads")][i % 3: i % 3 + 1]]


def exact_gradients(model, enc) -> np.ndarray:
    """Full, unprojected per-sample weight gradients of the tracked layers (plain autograd, one by one)."""
    from transformers.pytorch_utils import Conv1D

    names = [n for n, _, _ in trackable_modules(model)]
    modules = dict(model.named_modules())
    out = []
    for e in enc:
        for p in model.parameters():
            p.requires_grad_(True)
            p.grad = None
        ids = torch.tensor([e.input_ids])
        model(input_ids=ids, labels=ids).loss.backward()
        out.append(torch.cat([(modules[n].weight.grad.T if isinstance(modules[n], Conv1D) else modules[n].weight.grad).flatten() for n in names]))
    return torch.stack(out).numpy()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = ModelConfig(vocab_size=400, n_layer=2, n_embd=32, n_head=2, epochs=6, max_length=32, lr=5e-3)
    path = train_tiny_decoder(TEXTS * 3, cfg, tmp_path_factory.mktemp("m") / "tiny", progress=False)
    return load_decoder(path)


def test_spearman_to_the_exact_cosine_rises_with_dim(trained):
    model, tok = trained
    enc = tokenize_for_loss(tok, TEXTS, 32)
    exact = exact_gradients(model, enc)
    unit = exact / np.linalg.norm(exact, axis=1, keepdims=True)
    truth = unit[:8] @ unit.T
    fidelity = {}
    for dim in (32, 128, 512, 2048):
        g = compute_gradients(GradientExtractor(model, projection_for(model, "logra", dim, seed=0), tok.pad_token_id), enc, 8).numpy()
        gu = g / np.linalg.norm(g, axis=1, keepdims=True)
        fidelity[dim] = float(per_query_spearman(truth, gu[:8] @ gu.T).mean())
    dims = sorted(fidelity)
    assert all(fidelity[a] < fidelity[b] for a, b in zip(dims, dims[1:])), fidelity
    # Measured with projection seeds 0, 1, 2: dim 32 -> 0.84-0.85, 128 -> 0.92-0.95, 512 -> 0.96-0.98,
    # 2048 -> 0.98-0.99. The bars sit below the lowest of those by a margin for other seeds and machines.
    assert fidelity[512] > 0.93 and fidelity[2048] > 0.95, fidelity
