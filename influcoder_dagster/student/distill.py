"""Distil the teacher's rankings into a sentence encoder.

The encoder is a sentence-transformers model (tokenization, pooling and saving are its own). The
loop is written here because each step scores a variable-length candidate list per anchor,
which the stock trainer's (anchor, positive, negative) datasets do not express.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from influcoder_dagster.core.errors import MissingUpstreamError
from influcoder_dagster.student.encoder import freeze_lower_layers, is_asymmetric, sentence_embeddings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from influcoder_dagster.core.config import EncoderConfig


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

    from influcoder_dagster.student.losses import DistillationLoss

    if not groups:
        raise MissingUpstreamError("no training anchors with candidates (is rankings.anchor_fraction > 0?)", "influence_rankings")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    loss_fn = DistillationLoss.from_config(cfg)
    freeze_lower_layers(model, cfg.train_layers)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    n_per_kind = {"top": cfg.n_top, "bottom": cfg.n_bottom, "random": cfg.n_random}
    steps_per_epoch = (len(groups) + cfg.anchors_per_step - 1) // cfg.anchors_per_step
    result = TrainResult()
    routed = is_asymmetric(model)
    embed = lambda texts, role: sentence_embeddings(model, texts, role)  # noqa: E731
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
