"""LoRA-adapter gradients (peft) and LESS's Adam preconditioning, against plain autograd."""

import copy

import pytest
import torch
from test_gradients import TEXTS, reference

from influcoder_dagster.data.tokens import tokenize_for_loss
from influcoder_dagster.teacher.decoder import load_decoder
from influcoder_dagster.teacher.gradients import GradientExtractor, projection_for, trackable_modules
from influcoder_dagster.teacher.lora import LoraRecipe, adam_direction, adam_state, add_adapters, warm_up


@pytest.fixture(scope="module")
def warmed(tiny_lm, tmp_path_factory):
    """The tiny decoder with adapters trained for a few steps, reloaded from disk as the pipeline does."""
    model, tok = tiny_lm
    base = tmp_path_factory.mktemp("lm") / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    texts = [f"sample number {i} talks about topic {i % 7} and ends here." for i in range(40)]
    adapter = warm_up(copy.deepcopy(model), tok, texts, LoraRecipe(rank=4, steps=20, lr=1e-2, batch_size=8, max_length=32, seed=0),
                      tmp_path_factory.mktemp("lora") / "adapter", progress=False)
    return (*load_decoder(base, adapter), adapter)


@pytest.mark.slow
def test_fresh_adapters_have_zero_gradient_for_a_and_warm_ones_do_not(tiny_lm, warmed):
    model, tok = tiny_lm
    enc = tokenize_for_loss(tok, TEXTS, 64)
    fresh = add_adapters(copy.deepcopy(model), rank=4)
    spec = projection_for(fresh, "countsketch", 256, seed=0, target="lora")
    names = [m.name for m in spec.modules]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    a_cols = torch.cat([torch.arange(m.offset, m.offset + m.width) for m in spec.modules if ".lora_A." in m.name])
    cold = GradientExtractor(fresh, spec, tok.pad_token_id).batch(enc)
    assert cold[:, a_cols].abs().max() == 0  # the trap: B = 0 makes every gradient w.r.t. A vanish
    warm_model, _, _ = warmed
    warm = GradientExtractor(warm_model, projection_for(warm_model, "countsketch", 256, seed=0, target="lora"), tok.pad_token_id).batch(enc)
    assert warm[:, a_cols].abs().max() > 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["logra", "countsketch"])
def test_batched_lora_gradients_equal_the_per_sample_reference(tiny_lm, warmed, kind):
    model, tok, _ = warmed
    enc = tokenize_for_loss(tok, TEXTS, 64)
    spec = projection_for(model, kind, 512, seed=1, target="lora")
    assert len(spec.modules) == 2 * len(trackable_modules(tiny_lm[0]))  # A and B on every Linear/Conv1D but the head
    ex = GradientExtractor(model, spec, tok.pad_token_id)
    batched = ex.batch(enc)
    ref = torch.stack([reference(model, spec, ex.projector, e) for e in enc])
    assert ((batched - ref).norm(dim=1) / ref.norm(dim=1)).max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("momentum", [True, False])
def test_adam_preconditioned_gradients_follow_less_formula(warmed, momentum):
    model, tok, adapter = warmed
    enc = tokenize_for_loss(tok, TEXTS, 64)
    spec = projection_for(model, "countsketch", 512, seed=2, target="lora")
    state = adam_state(adapter, momentum)
    assert set(state) == {m.name for m in spec.modules}
    ex = GradientExtractor(model, spec, tok.pad_token_id, adam=state)
    got = ex.batch(enc)
    modules = dict(model.named_modules())
    saved = adam_state(adapter)  # the saved moments; without momentum, m' is the sample's own part
    for i, e in enumerate(enc):  # the reference: full per-sample gradient, then m'/sqrt(v' + eps), then the sketch
        reference(model, spec, ex.projector, e)
        parts = []
        for m in spec.modules:
            g = modules[m.name].weight.grad
            b1, b2 = 0.9, 0.999
            mean, sq = saved[m.name]
            direction = ((b1 * mean if momentum else 0) + (1 - b1) * g) / (b2 * sq + (1 - b2) * g * g + 1e-8).sqrt()
            parts.append(ex.projector.project_full(m.name, direction))
        want = torch.cat(parts)
        assert (got[i] - want).norm() / want.norm() < 1e-4
    plain = GradientExtractor(model, spec, tok.pad_token_id).batch(enc)
    assert not torch.allclose(got, plain, rtol=0.1)
    assert torch.equal(adam_direction(torch.zeros(1, 2, 2), torch.zeros(2, 2), torch.zeros(2, 2)), torch.zeros(1, 2, 2))


def test_adam_needs_lora_and_countsketch():
    from influcoder_dagster.core.config import Config

    with pytest.raises(ValueError, match="adam_precondition"):
        Config.model_validate({"projection": {"target": "weights", "adam_precondition": True}})  # the Adam direction needs the adapters
    with pytest.raises(ValueError, match="adam_precondition = false"):
        Config.model_validate({"projection": {"kind": "logra", "target": "lora", "adam_precondition": True}})
    Config.model_validate({"projection": {"adam_precondition": True, "kind": "countsketch", "target": "lora"}})
    Config.model_validate({"projection": {"adam_precondition": False, "kind": "logra", "target": "weights"}})


WARM_UP = """
import sys
from pathlib import Path
from influcoder_dagster.teacher.decoder import load_decoder, model_dir_hash
from influcoder_dagster.teacher.lora import LoraRecipe, warm_up
model, tok = load_decoder(sys.argv[1])
texts = [f"sample number {i} talks about topic {i % 7} and ends here." for i in range(40)]
print(model_dir_hash(warm_up(model, tok, texts, LoraRecipe(4, 5, 1e-2, 8, 32, 0), Path(sys.argv[2]), progress=False)))
"""


@pytest.mark.slow
def test_the_adapters_hash_the_same_in_processes_with_different_hash_seeds(local_lm, tmp_path):
    import os
    import subprocess
    import sys

    # Only the hash seed varies. MKL's float results can differ between processes in the last bits (its
    # kernels depend on memory alignment and thread count); one thread with MKL's reproducible mode
    # keeps that noise out of what this test asks.
    quiet_floats = {"OMP_NUM_THREADS": "1", "MKL_CBWR": "COMPATIBLE"}
    hashes = {subprocess.run([sys.executable, "-c", WARM_UP, str(local_lm), str(tmp_path / seed)], capture_output=True, text=True,
                             check=True, env={**os.environ, **quiet_floats, "PYTHONHASHSEED": seed}).stdout.strip()
              for seed in ("1", "2", "3")}
    assert len(hashes) == 1, hashes
