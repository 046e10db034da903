"""The output-gradient student: its forward-only feature is the loss's gradient on a map at the
decoder's output, and it serves the ridge map it was fitted as, saved and reloaded."""

import numpy as np
import pytest
import torch

from influcoder_dagster.student.output_gradient import OutputGradientQuery, design_rows, fit_head, output_gradient_student

TEXTS = [f"sample number {i} talks about topic {i % 7} and ends here." for i in range(40)]
QUERIES = ["sample number 3 talks about topic 5.", "topic 2 and ends here, sample number 11 says"]


def _autograd_gradient(model, tokenizer, text: str) -> torch.Tensor:
    """d(mean next-token loss)/dM for logits = W_out (h + M h), at M = 0: the feature by backpropagation."""
    from influcoder_dagster.data.tokens import tokenize_for_loss

    ids = torch.tensor([tokenize_for_loss(tokenizer, [text], 64)[0].input_ids])
    h = model.transformer(input_ids=ids).last_hidden_state
    m = torch.zeros(h.shape[-1], h.shape[-1], requires_grad=True)
    logits = model.lm_head(h + h @ m.T)
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    loss.backward()
    return m.grad


@pytest.mark.parametrize("side_max", [128, 16])  # the decoder is 32 wide: every direction kept, or each side cut to 16
def test_the_feature_is_the_gradient_of_a_map_on_the_output_from_one_forward_pass(tiny_lm, side_max):
    model, tokenizer = tiny_lm
    module = OutputGradientQuery([model], tokenizer, max_length=64, embedding_dim=4, side_max=side_max)
    texts = ["sample number 12 talks about topic 3 and ends here.", "topic 4"]  # unequal lengths: padding is left out
    got = module.features(module.preprocess(texts))[0]
    for row, text in zip(got, texts, strict=True):
        want = _autograd_gradient(model, tokenizer, text)
        if side_max < 32:
            want = module.error_basis @ want @ module.state_basis.T
        torch.testing.assert_close(row, want.flatten(), atol=1e-6, rtol=1e-4)


def test_each_checkpoint_gives_its_own_block(tiny_lm):
    """Two training states: the feature is each one's output gradient in turn, oldest first."""
    import copy

    model, tokenizer = tiny_lm
    later = copy.deepcopy(model)
    with torch.no_grad():
        for p in later.parameters():
            p.add_(0.05 * torch.randn_like(p))
    both = OutputGradientQuery([model, later], tokenizer, max_length=64, embedding_dim=4, side_max=16)
    assert both.gradient_head.in_features == 2 * 16 * 16
    got = both.features(both.preprocess(QUERIES))[0]
    for i, decoder in enumerate([model, later]):
        alone = OutputGradientQuery([decoder], tokenizer, max_length=64, embedding_dim=4, side_max=16)
        torch.testing.assert_close(got[:, i * 256:(i + 1) * 256], alone.features(alone.preprocess(QUERIES))[0])
    assert not torch.allclose(got[:, :256], got[:, 256:])


@pytest.mark.slow
def test_the_student_serves_its_ridge_map_and_round_trips(local_lm, tmp_path):
    from influcoder_dagster.serving.query_encoder import QueryEncoder, exportable
    from influcoder_dagster.student.encoder import encode, load_saved_student
    from influcoder_dagster.student.metrics import mean_cosine

    targets = np.random.default_rng(0).standard_normal((len(TEXTS), 6)).astype(np.float32)
    two_states = {"path": str(local_lm), "checkpoints": [{"path": str(local_lm)}, {"path": str(local_lm)}]}
    model, fit = output_gradient_student(two_states, 64, TEXTS, targets)
    assert fit["gradient_features"] == 2 * 32 * 32 and fit["token_features"] > 5
    # The served model is the fitted map: the ridge's own predictions on the texts' rows, normalized.
    module = model[0]
    ridge, design = fit_head(module, TEXTS, targets)
    assert ridge.alpha == fit["ridge_alpha"]
    predicted = ridge.predict(design_rows(module, TEXTS, design))
    assert mean_cosine(encode(model, TEXTS, "query"), predicted) == pytest.approx(1.0, abs=1e-5)
    model.save(str(tmp_path / "student"))
    reloaded = load_saved_student(tmp_path / "student")
    np.testing.assert_allclose(encode(reloaded, QUERIES, "query"), encode(model, QUERIES, "query"), atol=1e-6)
    served = QueryEncoder(tmp_path / "student")
    assert not exportable(reloaded) and served.backend == "torch"
    np.testing.assert_allclose(served.encode(QUERIES), encode(model, QUERIES, "query"), atol=1e-6)


def test_a_module_with_cut_sides_reloads_its_directions(tiny_lm, tmp_path):
    from sentence_transformers import SentenceTransformer

    from influcoder_dagster.student.encoder import encode, load_saved_student

    model, tokenizer = tiny_lm
    module = OutputGradientQuery([model], tokenizer, max_length=64, embedding_dim=4, side_max=8, seed=3)
    torch.nn.init.normal_(module.gradient_head.weight)
    student = SentenceTransformer(modules=[module], device="cpu")
    student.save(str(tmp_path / "cut"))
    reloaded = load_saved_student(tmp_path / "cut")
    torch.testing.assert_close(reloaded[0].error_basis, module.error_basis)
    assert reloaded[0].side_max == 8 and reloaded[0].gradient_head.in_features == 64
    np.testing.assert_allclose(encode(reloaded, QUERIES, "query"), encode(student, QUERIES, "query"), atol=1e-6)


def test_the_streamed_fit_equals_a_ridge_on_the_whole_scaled_rows(tiny_lm, monkeypatch):
    """Fitted a few texts at a time, scales applied to the sums afterwards: the same map as one ridge
    over every row, built whole and scaled first."""
    import influcoder_dagster.student.output_gradient as og
    from influcoder_dagster.student.ridge import fit_ridge
    from influcoder_dagster.student.token_bag import ALPHAS

    model, tokenizer = tiny_lm
    module = OutputGradientQuery([model, model], tokenizer, max_length=64, embedding_dim=6, side_max=16)
    targets = np.random.default_rng(1).standard_normal((len(TEXTS), 6)).astype(np.float32)
    monkeypatch.setattr(og, "ROW_BLOCK", 7)  # six blocks of texts, the last one short
    streamed, design = fit_head(module, TEXTS, targets, seed=2)
    whole = fit_ridge(design_rows(module, TEXTS, design), targets, tuple(a * len(TEXTS) / 1000 for a in ALPHAS), seed=2)
    assert streamed.alpha == whole.alpha
    for texts in (TEXTS, QUERIES):  # more features than texts: compare what the maps predict
        rows = design_rows(module, texts, design)
        np.testing.assert_allclose(streamed.predict(rows), whole.predict(rows), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(design.gradient_scales[0], design.gradient_scales[1])  # the same state twice
