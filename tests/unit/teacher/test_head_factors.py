"""Compressed head factors: scored against gradients formed from them, lossless at full width, and
read back from their shard file by sample id."""

import numpy as np
import pytest
import torch
from conftest import head_gradient
from safetensors import safe_open
from test_head_exact import TEXTS

from influcoder_dagster.data.tokens import tokenize_for_loss
from influcoder_dagster.teacher.head_exact import ExactHeadScorer, HeadFactors, squared_norms
from influcoder_dagster.teacher.head_factor_store import write_shard_factors
from influcoder_dagster.teacher.head_factors import compress, compressed_squared_norms, fit_basis, inner_products


def formed(c, vocab: int, basis: torch.Tensor) -> list[torch.Tensor]:
    """Each sample's compressed gradient ``sum_t sparse(delta_t) (B c_t)^T``, formed."""
    sparse = torch.zeros(len(c.ids), vocab).scatter_(1, c.ids, c.values)
    return [sparse[c.owner == i].T @ (c.coords[c.owner == i] @ basis.T) for i in range(c.n)]


def test_inner_products_and_norms_are_those_of_the_formed_compressed_gradients(tiny_lm):
    model, tok = tiny_lm
    head = HeadFactors(model, tok.pad_token_id, torch.rand(len(tok)) + 0.5)
    queries, candidates = head.of(tokenize_for_loss(tok, TEXTS[:2], 64)), head.of(tokenize_for_loss(tok, TEXTS, 64))
    basis = fit_basis(candidates.hidden, 8)
    assert basis.shape == (32, 8) and torch.allclose(basis.T @ basis, torch.eye(8), atol=1e-5)
    small = compress(candidates, basis, 4)
    assert small.ids.shape == (len(candidates.owner), 4)
    grads = formed(small, len(tok), basis)
    query_grads = [head_gradient(model, e, head.row_scale) for e in tokenize_for_loss(tok, TEXTS[:2], 64)]
    want = torch.tensor([[(q * g).sum() for g in grads] for q in query_grads])
    torch.testing.assert_close(inner_products(queries, small, basis), want, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(compressed_squared_norms(small, len(tok)), torch.stack([(g * g).sum() for g in grads]), rtol=1e-4, atol=1e-9)
    lossless = compress(candidates, fit_basis(candidates.hidden, 32), len(tok))
    cos = inner_products(queries, lossless, fit_basis(candidates.hidden, 32))
    cos = cos / squared_norms(queries).sqrt()[:, None] / compressed_squared_norms(lossless, len(tok)).sqrt()[None, :]
    exact = ExactHeadScorer([head]).cosines(tokenize_for_loss(tok, TEXTS[:2], 64), tokenize_for_loss(tok, TEXTS, 64))
    np.testing.assert_allclose(cos.numpy(), exact, atol=1e-5)


def test_a_shard_file_keeps_each_rows_tokens_in_row_order(tiny_lm, tmp_path):
    model, tok = tiny_lm
    heads = [HeadFactors(model, tok.pad_token_id), HeadFactors(model, tok.pad_token_id, torch.rand(len(tok)) + 0.5)]
    samples = tokenize_for_loss(tok, TEXTS, 64)
    path = tmp_path / "shard-0.head.safetensors"
    write_shard_factors(path, heads, samples, "fp", top_k=4, rank=8, batch_size=2)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["fingerprint"] == "fp" and f.metadata()["checkpoints"] == "2"
        for c, head in enumerate(heads):
            basis = f.get_tensor(f"{c}.basis")
            offsets = f.get_tensor(f"{c}.offsets")
            for row, sample in enumerate(samples):  # each row alone gives the stored tokens (length-sorted batches wrote them)
                alone = compress(head.of([sample]), basis, 4)
                span = slice(int(offsets[row]), int(offsets[row + 1]))
                torch.testing.assert_close(f.get_tensor(f"{c}.ids")[span].long(), alone.ids)
                torch.testing.assert_close(f.get_tensor(f"{c}.coords")[span].float(), alone.coords, rtol=1e-3, atol=1e-3)


def test_the_extractors_forward_pass_recorded_gives_the_heads_own_factors(tiny_lm):
    """The gradients stage keeps a fresh shard's head factors from the extractor's passes: recording
    them there must give what a pass of their own gives."""
    from influcoder_dagster.teacher.gradients import GradientExtractor, projection_for

    model, tok = tiny_lm
    scale = torch.rand(len(tok)) + 0.5
    head, samples = HeadFactors(model, tok.pad_token_id, scale), tokenize_for_loss(tok, TEXTS, 64)
    extractor = GradientExtractor(model, projection_for(model, "countsketch", 256, 0, target="head"), tok.pad_token_id)
    with head.recording() as seen:
        rows = extractor.batch(samples)
    recorded, own = head.recorded(samples, seen), head.of(samples)
    assert rows.shape == (len(samples), 256)
    for got, want in ((recorded.deltas, own.deltas), (recorded.hidden, own.hidden), (recorded.owner, own.owner)):
        torch.testing.assert_close(got, want)
    with pytest.raises(RuntimeError, match="one recorded forward pass"):
        head.recorded(samples, seen + seen)


def test_an_empty_shard_gets_a_file_with_its_metadata_only(tiny_lm, tmp_path):
    model, tok = tiny_lm
    path = tmp_path / "empty.head.safetensors"
    write_shard_factors(path, [HeadFactors(model, tok.pad_token_id)], [], "fp", top_k=4, rank=8)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["fingerprint"] == "fp" and not list(f.keys())
