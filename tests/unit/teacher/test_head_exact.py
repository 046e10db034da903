"""Exact head-gradient cosines from token factors against cosines of gradients formed by autograd."""

import numpy as np
import torch
from conftest import head_gradient

from influcoder_dagster.data.tokens import tokenize_for_loss
from influcoder_dagster.teacher.head_exact import ExactHeadScorer, HeadFactors

TEXTS = ["sample number 3 talks about topic 3.", "a short one", "sample number 12 talks about topic 5 and ends here, twice over.",
         "sample number 40 talks", "topic 6 ends here."]


def formed_cosines(model, queries, candidates, scale=None) -> np.ndarray:
    def unit(enc):
        g = head_gradient(model, enc, scale).flatten()
        return g / g.norm()

    q, c = torch.stack([unit(e) for e in queries]), torch.stack([unit(e) for e in candidates])
    return (q @ c.T).numpy()


def test_cosines_equal_formed_gradients_over_padded_batches_and_a_prompt(tiny_lm):
    model, tok = tiny_lm
    queries = tokenize_for_loss(tok, TEXTS[:2], 64, prompts=["sample number 3", None])
    assert queries[0].loss_start > 1
    candidates = tokenize_for_loss(tok, TEXTS, 64)
    scale = torch.rand(len(tok)) + 0.5
    got = ExactHeadScorer([HeadFactors(model, tok.pad_token_id, scale)], batch_size=2).cosines(queries, candidates)
    np.testing.assert_allclose(got, formed_cosines(model, queries, candidates, scale), atol=1e-5)


def test_several_checkpoints_score_the_mean_of_their_cosines(tiny_lm):
    model, tok = tiny_lm
    queries, candidates = tokenize_for_loss(tok, TEXTS[:1], 64), tokenize_for_loss(tok, TEXTS[1:], 64)
    scales = [torch.rand(len(tok)) + 0.5 for _ in range(2)]
    got = ExactHeadScorer([HeadFactors(model, tok.pad_token_id, s) for s in scales]).cosines(queries, candidates)
    want = np.mean([formed_cosines(model, queries, candidates, s) for s in scales], axis=0)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, formed_cosines(model, queries, candidates), atol=1e-3)  # the whitening is applied
