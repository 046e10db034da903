"""The asymmetric encoder: query and pool heads on one shared encoder."""

import numpy as np
import pytest

from influcoder_dagster.core.config import EncoderConfig
from influcoder_dagster.core.errors import ConfigError
from influcoder_dagster.student.distill import AnchorGroup, train_encoder
from influcoder_dagster.student.encoder import encode, is_asymmetric, load_encoder

TEXTS = ["Return the sum of the items.", "Open a file and return a stream.", "When the quartz heron sings at midnight,"]


@pytest.mark.slow
def test_asymmetric_heads_start_as_the_identity_learn_apart_and_survive_a_reload(tmp_path):
    from sentence_transformers import SentenceTransformer

    plain = load_encoder(EncoderConfig(max_seq_length=32, layers=-1))
    model = load_encoder(EncoderConfig(max_seq_length=32, asymmetric=True, layers=-1))
    assert is_asymmetric(model) and not is_asymmetric(plain)
    np.testing.assert_allclose(encode(model, TEXTS, "query"), encode(plain, TEXTS), atol=1e-6)
    np.testing.assert_allclose(encode(model, TEXTS, "document"), encode(plain, TEXTS), atol=1e-6)

    groups = [AnchorGroup(t, {"top": ([TEXTS[(i + 1) % 3]], np.array([1.0], np.float32)),
                              "bottom": ([TEXTS[(i + 2) % 3]], np.array([-1.0], np.float32))}) for i, t in enumerate(TEXTS)]
    cfg = EncoderConfig(epochs=3, anchors_per_step=3, n_top=1, n_bottom=1, n_random=0, lr=1e-3, max_seq_length=32, asymmetric=True)
    train_encoder(model, groups, cfg, progress=False)
    query, document = encode(model, TEXTS, "query"), encode(model, TEXTS, "document")
    assert not np.allclose(query, document, atol=1e-4)  # the two heads moved apart
    model.save(str(tmp_path / "enc"))
    again = SentenceTransformer(str(tmp_path / "enc"), device="cpu", local_files_only=True)
    np.testing.assert_allclose(encode(again, TEXTS, "query"), query, atol=1e-5)
    np.testing.assert_allclose(encode(again, TEXTS, "document"), document, atol=1e-5)


def test_one_forward_pass_for_a_query_embeds_exactly_like_batched_encoding():
    import torch

    for asymmetric in (False, True):
        model = load_encoder(EncoderConfig(max_seq_length=32, asymmetric=asymmetric, layers=-1))
        if asymmetric:  # make the two heads differ, so a wrong head would show
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() == 2 and p.shape[0] == p.shape[1]:
                        p.add_(0.05 * torch.randn_like(p))
        for role in ("query", "document"):
            single = encode(model, TEXTS, role)  # one batch: a single forward pass
            batched = encode(model, TEXTS, role, batch_size=2)  # sentence-transformers' encode
            np.testing.assert_allclose(single, batched, atol=1e-5)
        if asymmetric:
            assert not np.allclose(encode(model, TEXTS, "query"), encode(model, TEXTS, "document"), atol=1e-3)


def test_a_starting_encoder_cut_to_its_first_layers_embeds_and_saves_as_such(tmp_path):
    import pytest
    from sentence_transformers import SentenceTransformer

    full, cut = load_encoder(EncoderConfig(max_seq_length=32, layers=-1)), load_encoder(EncoderConfig(max_seq_length=32, layers=2))
    assert len(cut[0].auto_model.encoder.layer) == 2 and len(full[0].auto_model.encoder.layer) == 6
    assert len(load_encoder(EncoderConfig(max_seq_length=32, layers=-1))[0].auto_model.encoder.layer) == 6  # -1: all, as configs spell it
    texts = ["Return the sum of the items.", "Open the file and read its lines."]
    assert not np.allclose(encode(cut, texts), encode(full, texts), atol=1e-3)
    cut.save(str(tmp_path / "cut"))
    again = SentenceTransformer(str(tmp_path / "cut"), device="cpu", local_files_only=True)
    assert len(again[0].auto_model.encoder.layer) == 2
    np.testing.assert_allclose(encode(again, texts), encode(cut, texts), atol=1e-5)
    with pytest.raises(ConfigError, match="has 6 layers"):
        load_encoder(EncoderConfig(max_seq_length=32, layers=7))
