"""Shared fixtures: a tiny random decoder for unit tests, and one end-to-end pipeline run per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_CONFIG = """
k = 10
[demo]
n_passages = 160
n_triggers = 3
planted_per_trigger = 6
[model]
epochs = 6
n_layer = 2
n_embd = 64
vocab_size = 1024
[projection]
dim = 1024
[rankings]
anchor_fraction = 0.25
eval_pool_size = 60
[encoder]
epochs = 1
anchors_per_step = 8
max_seq_length = 64
sketch_epochs = 1
"""


def head_gradient(model, enc, scale=None):
    """One sample's output-head gradient by plain autograd on a separate copy of the head applied to
    the final hidden states, its vocabulary rows times ``scale``."""
    import torch
    import torch.nn.functional as F

    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
    weight = model.get_output_embeddings().weight.detach().clone().requires_grad_(True)
    start = max(enc.loss_start, 1)
    F.cross_entropy((hidden @ weight.T)[start - 1:-1], ids[0, start:]).backward()
    return weight.grad if scale is None else scale[:, None] * weight.grad


def head_gradient_reference(model, projector, enc, scale=None):
    """:func:`head_gradient`, projected by ``projector``."""
    return projector.project_full("lm_head", head_gradient(model, enc, scale))


@pytest.fixture(scope="session")
def tiny_lm():
    """A randomly initialised 2-layer GPT-2 with a BPE tokenizer trained on a few sentences."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from influcoder_dagster.teacher.decoder import train_tokenizer

    texts = [f"sample number {i} talks about topic {i % 7} and ends here." for i in range(200)]
    tokenizer = train_tokenizer(texts, 300)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        attn_implementation="eager", bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(config).eval(), tokenizer


@pytest.fixture
def one_thread():
    """Torch on one CPU thread for the test. On two threads the last bits of a gradient or a training
    step vary between runs (a resumed tiny-decoder training differed from an unbroken one in 3 of 10
    runs, none in 15 on one thread), and Ray workers run one thread each: comparing bit for bit
    needs every side on one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def local_lm(tmp_path_factory, tiny_lm):
    """The tiny random decoder saved as a local Hugging Face model folder."""
    path = tmp_path_factory.mktemp("lm") / "my-lm"
    tiny_lm[0].save_pretrained(path)
    tiny_lm[1].save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def pipeline_home(tmp_path_factory):
    """Materialize every asset once, in process, with real DuckDB, MLflow (sqlite) and FAISS files."""
    from influcoder_dagster.app.runner import failure_messages, materialize_with_gate

    home = tmp_path_factory.mktemp("influcoder_home")
    config = home / "influcoder.toml"
    config.write_text(f'home = "{home}"\n' + TINY_CONFIG)
    old = os.environ.pop("INFLUCODER_HOME", None)
    try:
        result, meta, _ = materialize_with_gate(str(config), home)
        assert result.success, failure_messages(result)
    finally:
        if old is not None:
            os.environ["INFLUCODER_HOME"] = old
    return Path(home), str(config), meta
