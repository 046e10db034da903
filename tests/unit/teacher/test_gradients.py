"""Batched hook gradients against a per-sample reference computed with ordinary autograd."""

import pytest
import torch
from conftest import head_gradient_reference

from influcoder_dagster.data.tokens import Encoded, tokenize_for_loss
from influcoder_dagster.teacher.gradients import GradientExtractor, compute_gradients, projection_for, trackable_modules
from influcoder_dagster.teacher.projection import FACTORED_ABOVE, ProjectionSpec, Projector, plan_projection

TEXTS = ["sample number 3 talks about topic 3.", "a short one", "sample number 12 talks about topic 5 and ends here, twice over."]


def reference(model, spec, projector, enc: Encoded) -> torch.Tensor:
    """Full per-sample weight gradient (one sample, no padding), projected the same way."""
    from transformers.pytorch_utils import Conv1D

    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    ids = torch.tensor([enc.input_ids])
    labels = ids.clone()
    labels[0, : max(enc.loss_start, 1)] = -100
    model(input_ids=ids, labels=labels).loss.backward()
    modules = dict(model.named_modules())
    parts = []
    for m in spec.modules:
        mod = modules[m.name]
        g = mod.weight.grad.T if isinstance(mod, Conv1D) else mod.weight.grad
        parts.append(projector.project_full(m.name, g))
    return torch.cat(parts)


@pytest.mark.parametrize("kind", ["logra", "countsketch"])
def test_padded_batch_equals_per_sample_reference(tiny_lm, kind):
    model, tok = tiny_lm
    enc = tokenize_for_loss(tok, TEXTS, 64)
    assert len({len(e.input_ids) for e in enc}) == 3  # mixed lengths: the batch is padded
    spec = projection_for(model, kind, 512, seed=1)
    ex = GradientExtractor(model, spec, tok.pad_token_id)
    batched = ex.batch(enc)
    ref = torch.stack([reference(model, spec, ex.projector, e) for e in enc])
    assert ((batched - ref).norm(dim=1) / ref.norm(dim=1)).max() < 1e-4


def test_prompt_is_excluded_from_the_loss(tiny_lm):
    model, tok = tiny_lm
    (enc,) = tokenize_for_loss(tok, [TEXTS[2]], 64, prompts=["sample number 12"])
    assert enc.loss_start > 1
    spec = projection_for(model, "logra", 512, seed=0)
    ex = GradientExtractor(model, spec, tok.pad_token_id)
    got = ex.batch([enc])[0]
    assert torch.allclose(got, reference(model, spec, ex.projector, enc), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(got, ex.batch([Encoded(enc.input_ids)])[0], atol=1e-6)


def test_same_spec_rebuilds_the_same_projection_and_order_does_not_matter(tiny_lm):
    model, tok = tiny_lm
    enc = tokenize_for_loss(tok, TEXTS, 64)
    spec = projection_for(model, "logra", 512, seed=3)
    a = compute_gradients(GradientExtractor(model, spec, tok.pad_token_id), enc, batch_size=2)
    b = compute_gradients(GradientExtractor(model, spec, tok.pad_token_id), enc[::-1], batch_size=3)
    assert torch.allclose(a, b.flip(0), atol=1e-6)
    other = compute_gradients(GradientExtractor(model, projection_for(model, "logra", 512, seed=4), tok.pad_token_id), enc, 3)
    assert not torch.allclose(a, other)


def test_linear_layers_of_a_llama_model_work_too():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, attn_implementation="eager")).eval()
    names = [n for n, _, _ in trackable_modules(model)]
    assert "model.layers.0.mlp.gate_proj" in names and "lm_head" not in names
    spec = projection_for(model, "logra", 256, seed=0)
    ex = GradientExtractor(model, spec, pad_token_id=0)
    enc = [Encoded([1, 5, 7, 9, 3]), Encoded([1, 4, 2])]
    batched = ex.batch(enc)
    ref = torch.stack([reference(model, spec, ex.projector, e) for e in enc])
    assert ((batched - ref).norm(dim=1) / ref.norm(dim=1)).max() < 1e-4


@pytest.mark.parametrize("kind", ["logra", "countsketch"])
def test_head_target_is_the_output_heads_own_gradient(tiny_lm, kind):
    """The output head's weight is tied to the input embeddings; the head target is its use as the
    output map only: the gradient of a separate copy of it applied to the final hidden states."""
    model, tok = tiny_lm
    spec = projection_for(model, kind, 512, seed=0, target="head")
    assert [m.name for m in spec.modules] == ["lm_head"]
    ex = GradientExtractor(model, spec, tok.pad_token_id)
    enc = tokenize_for_loss(tok, TEXTS, 64, prompts=[None, None, "sample number 12"])
    ref = torch.stack([head_gradient_reference(model, ex.projector, e) for e in enc])
    batched = ex.batch(enc)
    assert ((batched - ref).norm(dim=1) / ref.norm(dim=1)).max() < 1e-4


def test_factored_countsketch_of_the_head_equals_its_explicit_gradient_hashed(tiny_lm):
    """A head above the size bound (forced here with ``factored_above=0``) is sketched from its two
    factors by FFT; the result is the explicit gradient hashed with the same factored hash."""
    model, tok = tiny_lm
    spec = plan_projection("countsketch", 512, 0, trackable_modules(model, "head"), factored_above=0)
    assert [m.factored for m in spec.modules] == [True]
    ex = GradientExtractor(model, spec, tok.pad_token_id)
    enc = tokenize_for_loss(tok, TEXTS, 64, prompts=[None, None, "sample number 12"])
    ref = torch.stack([head_gradient_reference(model, ex.projector, e) for e in enc])
    assert ((ex.batch(enc) - ref).norm(dim=1) / ref.norm(dim=1)).max() < 1e-4


def test_only_modules_above_the_bound_are_factored_and_inner_products_stay_unbiased():
    shapes = [("small", 64, 64), ("head", 2048, FACTORED_ABOVE // 2048 + 1)]
    assert [m.factored for m in plan_projection("countsketch", 256, 0, shapes).modules] == [False, True]
    assert not any(m.factored for m in plan_projection("logra", 256, 0, shapes).modules)
    for spec in (plan_projection("countsketch", 256, 0, shapes), plan_projection("countsketch", 256, 0, shapes[:1])):
        assert ProjectionSpec.from_json(spec.to_json()) == spec
    assert "factored" not in plan_projection("countsketch", 256, 0, shapes[:1]).to_json()["modules"][0]  # older stores keep their key
    torch.manual_seed(0)
    a, b = torch.randn(40, 30), torch.randn(40, 30)
    b = a + 0.5 * b  # a known inner product, averaged over many seeds of the factored hash
    estimates = []
    for seed in range(200):
        projector = Projector(plan_projection("countsketch", 64, seed, [("m", 30, 40)], factored_above=0))
        estimates.append(float(projector.project_full("m", a) @ projector.project_full("m", b)))
    exact = float((a * b).sum())
    assert abs(sum(estimates) / len(estimates) - exact) < 0.05 * exact
