import pytest
import torch

from influcoder_dagster.core.config import ModelConfig
from influcoder_dagster.core.errors import ConfigError, DatasetError
from influcoder_dagster.data.tokens import tokenize_for_loss
from influcoder_dagster.teacher.decoder import load_decoder, model_dir_hash, train_tiny_decoder, train_tokenizer
from influcoder_dagster.teacher.tiny_training import TinyDecoderTraining, epochs_folder, training_folder

TEXTS = [f"The function number {i} returns a list of {i % 5} items." for i in range(40)]


@pytest.mark.slow
def test_tiny_decoder_trains_saves_reloads_and_hashes_by_content(tmp_path):
    cfg = ModelConfig(vocab_size=300, n_layer=1, n_embd=32, n_head=2, epochs=2, max_length=32)
    path = train_tiny_decoder(TEXTS, cfg, tmp_path / "tiny", progress=False)
    model, tok = load_decoder(path)
    assert model.config.n_layer == 1 and tok.pad_token_id is not None
    assert (path / "model.safetensors").exists()
    h = model_dir_hash(path)
    assert h == model_dir_hash(path)
    (path / "config.json").write_text((path / "config.json").read_text() + " ")
    assert model_dir_hash(path) != h


@pytest.mark.slow
def test_a_retrain_on_a_subset_keeps_the_given_tokenizer(tmp_path):
    cfg = ModelConfig(vocab_size=300, n_layer=1, n_embd=32, n_head=2, epochs=1, max_length=32)
    _, full = load_decoder(train_tiny_decoder(TEXTS, cfg, tmp_path / "full", progress=False))
    _, subset = load_decoder(train_tiny_decoder(TEXTS[:5], cfg, tmp_path / "subset", progress=False, tokenizer=full))
    _, own = load_decoder(train_tiny_decoder(TEXTS[:5], cfg, tmp_path / "own", progress=False))
    assert subset.get_vocab() == full.get_vocab()
    assert own.get_vocab() != full.get_vocab()  # without it, a subset trains a vocabulary of its own


@pytest.mark.slow
def test_an_interrupted_training_continues_step_for_step(tmp_path, one_thread):
    """A run stopped mid-epoch (its last saved state kept) and started again ends with the weights of
    a run never stopped, and leaves no state behind."""
    cfg = ModelConfig(vocab_size=300, n_layer=1, n_embd=32, n_head=2, epochs=3, batch_size=4, max_length=32)
    whole, _ = load_decoder(train_tiny_decoder(TEXTS, cfg, tmp_path / "whole", progress=False, keep_epochs=[1]))
    out = tmp_path / "stopped"
    start = lambda: TinyDecoderTraining(TEXTS, cfg, out, lambda texts: train_tokenizer(texts, cfg.vocab_size), keep_epochs=[1])  # noqa: E731
    run = start()
    assert run.total == 30
    for step in run.steps():
        if step == 13:  # three batches into the second epoch
            break
    run.save_state()
    assert not out.exists() and (epochs_folder(out) / "epoch-1" / "config.json").is_file()
    again = start()
    assert again.step == 13
    for _ in again.steps():
        pass
    resumed, _ = load_decoder(again.finish())
    assert not training_folder(out).exists()
    expected = whole.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in resumed.state_dict().items())


def test_loss_tokens_start_with_bos_and_after_the_prompt(tiny_lm):
    _, tok = tiny_lm
    whole, prompted = tokenize_for_loss(tok, ["sample number 3 talks", "sample number 3 talks"], 64, [None, "sample number"])
    assert whole.input_ids[0] == tok.bos_token_id and whole.loss_start == 0
    assert prompted.input_ids == whole.input_ids and 1 < prompted.loss_start < len(whole.input_ids)
    assert len(tokenize_for_loss(tok, ["sample number 3 talks about topic 3 and ends here."], 4)[0].input_ids) == 4
    with pytest.raises(DatasetError, match="covers the whole text"):
        tokenize_for_loss(tok, ["sample"], 64, ["sample"])


def test_a_folder_that_is_not_a_model_says_so(tmp_path):
    with pytest.raises(ConfigError, match="not a Hugging Face model folder"):
        load_decoder(tmp_path)


def test_the_loss_starts_at_the_prompt_boundary_even_when_bpe_merges_across_it(tiny_lm):
    _, tok = tiny_lm
    text = "sample number 12 talks about topic 5"
    for prompt in ("sample number 1", "sample num", "sample number 12 "):
        (e,) = tokenize_for_loss(tok, [text], 64, [prompt])
        completion = tok.decode(e.input_ids[e.loss_start:])
        prefix = tok.decode(e.input_ids[1 : e.loss_start])
        # the tokens left out of the loss hold prompt characters only; every completion character is in the loss
        assert prefix + completion == text and len(prefix) <= len(prompt), (prompt, prefix, completion)
