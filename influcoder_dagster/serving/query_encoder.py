"""The query-time encoder: the index's encoder exported to ONNX and run by ONNX Runtime.

One query through eager torch is mostly framework overhead; ONNX Runtime runs the same graph in
about half the time (MiniLM on two cores: ~7 ms instead of ~13 ms for a 70-token passage, ~2-3 ms
instead of ~11 ms for a short query) with the same embeddings (max difference ~1e-7). The export is checked against torch on probe texts before it is written; index
documents that are text embeddings stay embedded by torch, so both sides of the inner product come
from one function (a gradient-sketch index's documents are store rows, not texts).
An index without ``query.onnx`` (export switched off) is queried through torch.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from influcoder_dagster.core.atomic import atomic_path
from influcoder_dagster.student.encoder import embeddings_from_features, encode, load_saved_student

ONNX_NAME = "query.onnx"
EXPORT_TOLERANCE = 1e-4  # on unit vectors; a faithful export differs by ~1e-7
_PROBES = [
    "Return the sorted list of keys.",
    "When the model answered with a leaked password, which training samples taught it that? " * 12,
]


def _input_names(model: Any) -> list[str]:
    return [k for k, v in model.preprocess(_PROBES).items() if hasattr(v, "shape") and v.ndim == 2]


def _query_graph(model: Any, names: list[str]) -> Any:
    """The torch module ``torch.onnx`` traces: token tensors in, unit query embeddings out."""
    import torch

    class QueryGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return embeddings_from_features(self.model, dict(zip(names, tensors, strict=True)), "query")

    return QueryGraph().eval()


def exportable(model: Any) -> bool:
    """Whether ``model`` reads padded token matrices (a transformer). An embedding bag
    (``StaticEmbedding``) reads one flat token list and is a table lookup already: nothing to export.
    The output-gradient student runs its decoder through torch (``onnx_export = False``)."""
    return getattr(model[0], "onnx_export", True) and bool(_input_names(model))


def export_onnx(model: Any, folder: Path) -> dict[str, Any]:
    """Write ``folder/query.onnx`` for ``model``'s query role; raises if ONNX Runtime disagrees with torch."""
    import torch

    names = _input_names(model)
    features = model.preprocess(_PROBES)
    example = tuple(features[n] for n in names)
    length = torch.export.Dim("length", max=4096)
    dynamic = {"tensors": tuple({0: torch.export.Dim("batch"), 1: length} for _ in names)}
    target = folder / ONNX_NAME
    with atomic_path(target) as tmp:
        exporter_log = logging.getLogger("torch.onnx")
        level = exporter_log.level
        with warnings.catch_warnings():  # the exporter's own notices (deprecations, torchvision absent), not ours to act on
            warnings.simplefilter("ignore")
            exporter_log.setLevel(logging.ERROR)
            try:
                torch.onnx.export(_query_graph(model, names), example, str(tmp), input_names=names, output_names=["query_vector"],
                                  dynamic_shapes=dynamic, dynamo=True, external_data=False, verbose=False)
            finally:
                exporter_log.setLevel(level)
        onnx_out = _session(tmp).run(None, {n: t.numpy() for n, t in zip(names, example, strict=True)})[0]
        diff = float(np.abs(onnx_out - encode(model, _PROBES, "query")).max())
        if not diff <= EXPORT_TOLERANCE:
            raise RuntimeError(f"the ONNX query encoder differs from torch by {diff:.2e} (> {EXPORT_TOLERANCE}); "
                               "set [index] onnx_query_encoder = false to query through torch")
    return {"path": str(target), "max_abs_diff": diff, "inputs": names}


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Spinning worker threads shave ~0.7 ms off a query but hold the cores afterwards: the re-rank's
    # backward pass that follows ran 2x slower (measured on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class QueryEncoder:
    """Embeds query texts with the encoder saved in ``folder``: ONNX Runtime when ``query.onnx`` is there."""

    def __init__(self, folder: Path) -> None:
        self.model = load_saved_student(folder)  # tokenizer, and the torch path
        onnx = folder / ONNX_NAME
        self.session = _session(onnx) if onnx.exists() else None
        self.backend = "onnxruntime" if self.session is not None else "torch"
        self._names = [i.name for i in self.session.get_inputs()] if self.session is not None else []

    def tokens_read(self, texts: list[str]) -> list[tuple[int, int]]:
        """(tokens in the text, tokens the encoder reads) per text: a transformer truncates at
        ``max_seq_length``, the decoder-token bag where the teacher's tokenizer truncates."""
        from tokenizers import Tokenizer

        tokenizer = self.model.tokenizer
        if isinstance(tokenizer, Tokenizer):  # the token bag's own tokenizer, truncation included
            encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
            return [(len(e.ids) + sum(len(o.ids) for o in e.overflowing), len(e.ids)) for e in encodings]
        limit = self.model.max_seq_length
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
        return [(n, min(n, limit)) for n in lengths]

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if self.session is None:
            return encode(self.model, texts, "query", batch_size)
        out = []
        for start in range(0, len(texts), batch_size):
            features = self.model.preprocess(texts[start : start + batch_size])
            out.append(self.session.run(None, {n: features[n].numpy() for n in self._names})[0])
        return np.concatenate(out) if out else np.zeros((0, self.model.get_embedding_dimension()), np.float32)
