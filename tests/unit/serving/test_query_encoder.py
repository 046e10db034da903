"""The ONNX query encoder gives the torch encoder's embeddings, for plain and two-head encoders."""

import numpy as np
import pytest

from influcoder_dagster.core.config import EncoderConfig
from influcoder_dagster.serving.query_encoder import ONNX_NAME, QueryEncoder, export_onnx
from influcoder_dagster.student.encoder import encode, load_encoder

TEXTS = ["x", "Return the sorted keys of a mapping.", "a long query about parsing dates " * 40]


@pytest.mark.parametrize("asymmetric", [False, True])
def test_onnx_query_encoder_equals_torch(tmp_path, asymmetric):
    model = load_encoder(EncoderConfig(max_seq_length=64, asymmetric=asymmetric, layers=-1))
    if asymmetric:  # make the query head differ from the document head, so the role matters
        import torch

        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 2 and p.shape[0] == p.shape[1] == 384:
                    p.add_(0.05 * torch.randn_like(p))
    model.save(str(tmp_path))
    assert QueryEncoder(tmp_path).backend == "torch"  # no export yet: torch answers

    report = export_onnx(model, tmp_path)
    assert report["max_abs_diff"] < 1e-5
    assert (tmp_path / ONNX_NAME).exists() and not list(tmp_path.glob(".tmp-*"))
    queries = QueryEncoder(tmp_path)
    assert queries.backend == "onnxruntime"

    expected = encode(model, TEXTS, "query")
    np.testing.assert_allclose(queries.encode(TEXTS), expected, atol=1e-5)  # one padded batch
    for text, row in zip(TEXTS, expected, strict=True):  # one query at a time, as the CLI sends them
        np.testing.assert_allclose(queries.encode([text])[0], row, atol=1e-5)
    np.testing.assert_allclose(queries.encode(TEXTS, batch_size=2), expected, atol=1e-5)
    assert queries.encode([]).shape == (0, expected.shape[1])
    if asymmetric:
        assert np.abs(encode(model, TEXTS, "document") - expected).max() > 1e-3
