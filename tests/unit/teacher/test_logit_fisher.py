"""The output head's query-side preconditioner: its statistic and its use in the extractor."""

import numpy as np
import pytest
import torch
from conftest import head_gradient_reference

from influcoder_dagster.data.tokens import tokenize_for_loss
from influcoder_dagster.teacher.gradients import GradientExtractor, projection_for
from influcoder_dagster.teacher.logit_fisher import (
    logit_fisher_hash,
    logit_fisher_sums,
    read_row_scale,
    row_scale,
    write_logit_fisher,
)

TEXTS = ["sample number 3 talks about topic 3.", "a short one", "sample number 12 talks about topic 5 and ends here, twice over."]
PROMPTS = [None, None, "sample number 12"]


def test_the_sums_are_each_loss_tokens_squared_logit_error_batched_as_one_at_a_time(tiny_lm):
    model, tok = tiny_lm
    enc = tokenize_for_loss(tok, TEXTS, 64, PROMPTS)
    expected, count = np.zeros(len(tok)), 0
    for e in enc:
        ids = torch.tensor([e.input_ids])
        with torch.no_grad():
            p = model(input_ids=ids).logits[0, :-1].softmax(-1).double()
        for t in range(max(e.loss_start, 1), len(e.input_ids)):  # the loss tokens: the prompt's are not
            err = p[t - 1].clone()
            err[e.input_ids[t]] -= 1
            expected += (err ** 2).numpy()
            count += 1
    sums, tokens = logit_fisher_sums(model, enc, tok.pad_token_id, batch_size=2)
    assert tokens == count
    np.testing.assert_allclose(sums, expected, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("kind", ["logra", "countsketch"])
def test_a_scaled_row_is_the_projection_of_the_heads_gradient_with_its_vocabulary_rows_scaled(tiny_lm, kind):
    model, tok = tiny_lm
    spec = projection_for(model, kind, 512, seed=0, target="head")
    sums, tokens = logit_fisher_sums(model, tokenize_for_loss(tok, TEXTS, 64), tok.pad_token_id)
    scale = torch.from_numpy(row_scale(sums, tokens, 0.1))
    ex = GradientExtractor(model, spec, tok.pad_token_id, output_scale={"lm_head": scale})
    enc = tokenize_for_loss(tok, TEXTS, 64, PROMPTS)
    ref = torch.stack([head_gradient_reference(model, ex.projector, e, scale) for e in enc])
    batched = ex.batch(enc)
    assert ((batched - ref).norm(dim=1) / ref.norm(dim=1)).max() < 1e-4
    assert not torch.allclose(batched, GradientExtractor(model, spec, tok.pad_token_id).batch(enc))


def test_the_scale_is_finite_for_a_token_never_seen_and_refuses_no_tokens():
    scale = row_scale(np.array([0.0, 1.0, 3.0]), 2, 0.1)
    assert np.isfinite(scale).all() and scale[0] > scale[1] > scale[2]
    np.testing.assert_allclose(scale[1] ** -2, 0.5 + 0.1 * (4 / 3 / 2), rtol=1e-6)  # S_vv + damping * mean S
    with pytest.raises(ValueError, match="at least one training token"):
        row_scale(np.zeros(3), 0, 0.1)


def test_the_statistic_round_trips_through_its_file_and_its_hash_follows_its_values(tmp_path):
    sums = np.array([0.5, 2.0, 0.0])
    path = write_logit_fisher(tmp_path / "s.npz", sums, 4)
    np.testing.assert_array_equal(read_row_scale(path), row_scale(sums, 4))
    same = write_logit_fisher(tmp_path / "t.npz", sums, 4)
    assert logit_fisher_hash(path) == logit_fisher_hash(same) != logit_fisher_hash(write_logit_fisher(tmp_path / "u.npz", sums, 5))
