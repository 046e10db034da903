"""A forward-only query encoder: the decoder's output gradient at every checkpoint beside its token bag.

A text's output gradient is ``(1/|T|) sum_t W_out^T (p_t - e_{y_t}) h_t^T`` over its loss
positions ``T``: the gradient of its loss with respect to a (d x d) linear map on the decoder's
final hidden states ``h_t`` (``W_out`` the output embedding, ``p_t`` the predicted distribution,
``y_t`` the next token). It is the teacher's own kind of feature, an outer product of a
back-propagated error and an input, taken at the output where one forward pass gives both: no
backward pass. Each side is cut to ``SIDE_MAX`` fixed directions when the decoder is wider.

The teacher's row holds one block per checkpoint it scores (``teacher/checkpoints.py``), and an
early state's gradient differs from the final one's, so the feature is taken at each of those
checkpoints: one forward pass each. The predicted sketch is ``A phi + bag + b``: a linear map of
the output gradients plus the decoder-token bag of ``token_bag.py`` (idf-weighted tokens averaged
over the text), one ridge regression over every block, each scaled to unit mean norm first. On
short real texts (``benchmarks/student_features.py``) the three checkpoints' output gradients (48
directions a side) recovered 0.441 of the gradient path's whole-store top-10 against 0.407 for the
final state's alone (64 a side) and 0.256 for the token bag. It costs a decoder forward pass per
checkpoint per query, which is cheap for the tiny decoder and a large part of the gradient path
for a 135M-parameter one.

The module is a sentence-transformers ``InputModule`` so the student stays a stock
``SentenceTransformer`` (saved, logged to MLflow, served); it saves the decoder beside its head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sentence_transformers.base.modules.input_module import InputModule

from influcoder_dagster.data.tokens import pad_batch, tokenize_for_loss
from influcoder_dagster.student.ridge import ROW_BLOCK, RidgeMap, SideBySide, StreamedRidge

if TYPE_CHECKING:
    from collections.abc import Sequence

SIDE_MAX = 48  # directions kept per side of each (d x d) output gradient: 2,304 features per checkpoint
HEAD_FILE = "head.safetensors"
DECODER_DIR = "decoder-{}"  # one folder per checkpoint, oldest first


def side_basis(d: int, side_max: int, seed: int) -> torch.Tensor | None:
    """Fixed Gaussian directions (``side_max`` x d) for a decoder wider than ``side_max``; None keeps every one."""
    if d <= side_max:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(side_max, d, generator=gen) / side_max ** 0.5


class OutputGradientQuery(InputModule):
    """Decoder forward passes (one per checkpoint) -> output gradients (and token bag) -> linear head:
    the predicted sketch. ``decoders`` share one tokenizer and width (a decoder's training states)."""

    config_keys = ["max_length", "embedding_dim", "side_max"]
    save_in_root = False
    onnx_export = False  # the decoders' forward passes run through torch at query time

    def __init__(self, decoders: Sequence[Any], tokenizer: Any, max_length: int, embedding_dim: int, side_max: int = SIDE_MAX,
                 seed: int = 0) -> None:
        super().__init__()
        self.decoders, self.tokenizer = torch.nn.ModuleList(d.eval() for d in decoders), tokenizer
        self.max_length, self.embedding_dim, self.side_max = max_length, embedding_dim, side_max
        d = decoders[0].get_output_embeddings().weight.shape[1]
        for name in ("error_basis", "state_basis"):
            basis = side_basis(d, side_max, seed + (name == "state_basis"))
            self.register_buffer(name, basis if basis is not None else torch.zeros(0, d))
        self.block = min(d, side_max) ** 2  # features per checkpoint
        self.gradient_head = torch.nn.Linear(len(decoders) * self.block, embedding_dim, bias=False)
        self.token_table = torch.nn.EmbeddingBag(len(tokenizer), embedding_dim, mode="sum")

    def preprocess(self, inputs: Sequence[str], prompt: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        encoded = tokenize_for_loss(self.tokenizer, [prompt + t if prompt else t for t in inputs], self.max_length)
        ids, mask = pad_batch([e.input_ids for e in encoded], self.tokenizer.pad_token_id)
        return {"input_ids": ids, "attention_mask": mask, "loss_start": torch.tensor([e.loss_start for e in encoded])}

    def features(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's output gradients (B, checkpoints * side * side; each checkpoint's block in
        turn), and its token bag as ``EmbeddingBag`` input: flat token ids, offsets and per-token
        weights (1 / the text's token count)."""
        return (self.gradients(batch), *self._bag_input(batch["input_ids"], batch["attention_mask"]))

    def gradients(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's output gradients alone (B, checkpoints * side * side)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with torch.no_grad():  # forward only: the feature is a gradient computed in closed form
            return torch.cat([self._output_gradient(d, ids, mask, batch["loss_start"]) for d in self.decoders], 1)

    def _output_gradient(self, decoder: Any, ids: torch.Tensor, mask: torch.Tensor, loss_start: torch.Tensor) -> torch.Tensor:
        out = decoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        error = out.logits[:, :-1].float().softmax(-1)  # p_t - e_{y_t}, for the token after position t
        error.scatter_add_(2, ids[:, 1:, None], -torch.ones(*ids[:, 1:].shape, 1))
        scored = mask[:, 1:].float() * (torch.arange(ids.shape[1] - 1)[None, :] >= (loss_start - 1).clamp_min(0)[:, None])
        back = (error @ decoder.get_output_embeddings().weight.float()) * scored[..., None]
        states = out.hidden_states[-1][:, :-1].float()
        if len(self.error_basis):
            back, states = back @ self.error_basis.T, states @ self.state_basis.T
        return (torch.einsum("btd,bte->bde", back, states) / scored.sum(1).clamp_min(1)[:, None, None]).flatten(1)

    def _bag_input(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The text's tokens (its leading BOS left out) as ``EmbeddingBag`` input with mean weights."""
        tokens = mask.clone()
        if self.tokenizer.bos_token_id is not None:
            tokens[:, 0] *= (ids[:, 0] != self.tokenizer.bos_token_id).long()
        lengths = tokens.sum(1)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
        return ids[tokens.bool()], offsets, (1 / lengths.clamp_min(1).float()).repeat_interleave(lengths)

    def forward(self, features: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        gradient, flat, offsets, weights = self.features(features)
        bag = self.token_table(flat, offsets, per_sample_weights=weights)
        features["sentence_embedding"] = self.gradient_head(gradient) + bag
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.embedding_dim

    @property
    def max_seq_length(self) -> int:
        """Tokens read per text: the teacher's truncation."""
        return self.max_length

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        from safetensors.torch import save_file

        folder = Path(output_path)
        for i, decoder in enumerate(self.decoders):
            decoder.save_pretrained(folder / DECODER_DIR.format(i))
            self.tokenizer.save_pretrained(folder / DECODER_DIR.format(i))
        head = {k: v.contiguous() for k, v in self.state_dict().items() if not k.startswith("decoders.")}
        save_file(head, str(folder / HEAD_FILE))
        (folder / self.config_file_name).write_text(json.dumps(self.get_config_dict()))

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> OutputGradientQuery:
        from safetensors.torch import load_file

        from influcoder_dagster.teacher.decoder import load_decoder

        folder = Path(model_name_or_path) / subfolder
        head = load_file(str(folder / HEAD_FILE))
        config = json.loads((folder / cls.config_file_name).read_text())
        n_checkpoints = len(list(folder.glob(DECODER_DIR.format("*"))))
        loaded = [load_decoder(folder / DECODER_DIR.format(i)) for i in range(n_checkpoints)]
        module = cls([decoder for decoder, _ in loaded], loaded[0][1], **config)
        for name in ("error_basis", "state_basis"):  # registered with their loaded size, so load_state_dict fits
            setattr(module, name, head[name])
        module.load_state_dict(head, strict=False)
        return module


def output_gradients(module: OutputGradientQuery, texts: list[str], batch: int = 64) -> np.ndarray:
    """Every text's output gradients (float32, dense; one block per checkpoint)."""
    gradients = np.empty((len(texts), module.gradient_head.in_features), dtype=np.float32)  # filled in place: no second copy
    for start in range(0, len(texts), batch):
        gradients[start:start + batch] = module.gradients(module.preprocess(texts[start:start + batch])).numpy()
    return gradients


def token_bags(module: OutputGradientQuery, texts: list[str], batch: int = 1024) -> Any:
    """Every text's token bag (sparse token weights over the vocabulary), from its tokens alone (no forward pass)."""
    import scipy.sparse as sp

    bags = []
    for start in range(0, len(texts), batch):
        encoded = module.preprocess(texts[start:start + batch])
        flat, offsets, weights = module._bag_input(encoded["input_ids"], encoded["attention_mask"])
        rows = np.repeat(np.arange(len(offsets)), np.diff(np.append(offsets.numpy(), len(flat))))
        bags.append(sp.csr_matrix((weights.numpy(), (rows, flat.numpy())), shape=(len(offsets), len(module.tokenizer))))
    return sp.vstack(bags).tocsr()


@dataclass(frozen=True)
class Design:
    """How texts become ridge rows, fitted on the training texts: the token columns kept (the
    ``MAX_FEATURES`` most frequent), their idf, and each block's scale: the token block's RMS norm,
    and each checkpoint's output-gradient block's RMS norm times the root of their count, so the
    output gradients together weigh as much as the tokens."""

    kept: np.ndarray
    idf: np.ndarray
    gradient_scales: np.ndarray  # one per checkpoint
    token_scale: float

    def gradient_columns(self, block: int) -> np.ndarray:
        """Each output-gradient column's scale (its checkpoint's)."""
        return np.repeat(self.gradient_scales, block).astype(np.float32)


def design_rows(module: OutputGradientQuery, texts: list[str], design: Design) -> SideBySide:
    """``texts`` as ridge rows, ``[output gradients / their scales, idf-weighted token bag / its scale]``
    (the token block kept sparse)."""
    from influcoder_dagster.student.token_bag import idf_weighted

    gradients = output_gradients(module, texts)
    gradients /= design.gradient_columns(module.block)
    return SideBySide(gradients, (idf_weighted(token_bags(module, texts), design.kept, design.idf) / design.token_scale).astype(np.float32))


def fit_head(module: OutputGradientQuery, texts: list[str], targets: np.ndarray, seed: int = 0, progress: bool = False
             ) -> tuple[RidgeMap, Design]:
    """The ridge map from ``texts``' rows (:func:`design_rows`) onto ``targets``, and the design it
    reads, fitted together in one pass over the texts: ``ROW_BLOCK`` texts' output gradients at a
    time enter the ridge's sums and are dropped, so the dense rows (2.2 GB at 80,000 texts and
    three checkpoints) never exist whole. Each checkpoint's scale, known only at the end, scales
    the sums instead."""
    from tqdm.auto import tqdm

    from influcoder_dagster.student.token_bag import ALPHAS, idf_weighted, kept_tokens

    bags = token_bags(module, texts)
    kept, idf = kept_tokens(bags)
    tokens = idf_weighted(bags, kept, idf)
    token_scale = rms_norm(tokens)
    tokens = (tokens / token_scale).astype(np.float32)
    ridge, squares = StreamedRidge(len(texts), seed), np.zeros(len(module.decoders))
    with tqdm(total=len(texts), desc="output gradients", unit="text", disable=not progress) as bar:
        for start in range(0, len(texts), ROW_BLOCK):
            gradients = output_gradients(module, texts[start:start + ROW_BLOCK])
            squares += [np.einsum("ij,ij->", g, g, dtype=np.float64) for g in np.hsplit(gradients, len(squares))]
            ridge.add(SideBySide(gradients, tokens[start:start + ROW_BLOCK]), targets[start:start + ROW_BLOCK])
            bar.update(len(gradients))
    design = Design(kept, idf, np.sqrt(squares / len(texts) * len(squares)), token_scale)
    columns = np.concatenate([1 / design.gradient_columns(module.block), np.ones(len(kept), dtype=np.float32)])
    return ridge.fit(tuple(a * len(texts) / 1000 for a in ALPHAS), columns), design


def output_gradient_student(base: dict[str, Any], max_length: int, texts: list[str], targets: np.ndarray, seed: int = 0,
                            progress: bool = False) -> tuple[Any, dict[str, float]]:
    """An ``OutputGradientQuery`` student on the teacher's checkpoints (their LoRA adapters merged),
    its head fitted by ridge from ``texts``' output gradients and token bags onto ``targets``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize

    from influcoder_dagster.core.errors import MissingUpstreamError

    if not texts:
        raise MissingUpstreamError("no training samples to fit the output-gradient student on", "influence_rankings")
    decoders, tokenizer = checkpoint_decoders(base)
    module = OutputGradientQuery(decoders, tokenizer, max_length, targets.shape[1], seed=seed)
    ridge, design = fit_head(module, texts, targets, seed, progress)
    set_head(module, ridge, design)
    fit = {"ridge_alpha": ridge.alpha, "held_back_cosine": ridge.held_back_cosine[ridge.alpha], "token_features": len(design.kept),
           "gradient_features": module.gradient_head.in_features}
    return SentenceTransformer(modules=[module, Normalize()], device="cpu"), fit


def set_head(module: OutputGradientQuery, ridge: RidgeMap, design: Design) -> None:
    """Write the ridge map into the module: the gradient head reads raw output gradients, the token
    table holds each kept token's idf-weighted, scaled coefficients (plus the intercept, as every
    bag's weights sum to one)."""
    width, kept = module.gradient_head.in_features, design.kept
    table = np.tile(ridge.intercept, (module.token_table.num_embeddings, 1))
    table[kept] += design.idf[kept, None] * ridge.coef[width:] / design.token_scale
    gradient_coef = ridge.coef[:width].T / design.gradient_columns(module.block)[None, :]
    with torch.no_grad():
        module.gradient_head.weight.copy_(torch.from_numpy(np.ascontiguousarray(gradient_coef)))
        module.token_table.weight.copy_(torch.from_numpy(table))


def checkpoint_decoders(base: dict[str, Any]) -> tuple[list[Any], Any]:
    """The decoder at each checkpoint the teacher scores, oldest first, its LoRA adapters (if any)
    merged into its weights; and their tokenizer."""
    from influcoder_dagster.teacher.checkpoints import checkpoints_of
    from influcoder_dagster.teacher.decoder import load_decoder

    decoders = []
    for checkpoint in checkpoints_of(base):
        decoder, tokenizer = load_decoder(checkpoint.path, checkpoint.adapter)
        decoders.append((decoder.merge_and_unload() if checkpoint.adapter else decoder).eval())
    return decoders, tokenizer


def rms_norm(x: Any) -> float:
    """The rows' root-mean-square norm (1 for an all-zero block), so two blocks weigh alike in one
    ridge; ``x`` dense or scipy-sparse."""
    squares = x.multiply(x).sum(axis=1) if hasattr(x, "toarray") else np.einsum("ij,ij->i", x, x)
    return float(np.sqrt(np.mean(squares))) or 1.0
