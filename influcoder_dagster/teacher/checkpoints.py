"""Gradients from several training states, combined as LESS and TracIn combine them.

Once a model has memorized a span, its gradient on that span is almost zero: the samples that
taught it a behaviour are the ones whose final-state gradient says least. Scoring earlier states
too brings them back (LESS sums per-checkpoint cosines; TracIn sums gradient products over
training checkpoints).

A store row here is one block per checkpoint, each unit-normalized and scaled by ``1/sqrt(C)``.
The dot product of two such rows is then the mean of the C cosines, and every row has norm 1, so
the store, the rankings' cosine, the sketch and the index use it unchanged. With one checkpoint
the row is the plain projected gradient. LESS weights each checkpoint by its learning rate; under
the tiny decoder's one-cycle schedule that all but drops the final state, so the weights are equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from influcoder_dagster.teacher.decoder import load_decoder
from influcoder_dagster.teacher.gradients import GradientExtractor, trackable_modules
from influcoder_dagster.teacher.logit_fisher import read_row_scale
from influcoder_dagster.teacher.lora import adam_state

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from influcoder_dagster.data.tokens import Encoded
    from influcoder_dagster.teacher.projection import ProjectionSpec


@dataclass(frozen=True)
class Checkpoint:
    """One training state the teacher scores: a decoder folder, its LoRA adapters (with their Adam
    state) when the teacher attributes adapters, and its logits' Fisher diagonal when the head's
    rows are whitened by it (``teacher.logit_fisher``)."""

    path: str
    adapter: str | None
    logit_fisher: str | None = None


def checkpoints_of(base: dict[str, Any]) -> list[Checkpoint]:
    """The base model record's checkpoints, oldest first; a record without any is its one final state."""
    entries = base.get("checkpoints") or [base]
    return [Checkpoint(str(e["path"]), e.get("adapter"), e.get("logit_fisher")) for e in entries]


class CheckpointExtractor:
    """One :class:`GradientExtractor` per checkpoint; a batch's rows are their blocks side by side."""

    def __init__(self, extractors: list[GradientExtractor]) -> None:
        self.extractors = extractors
        self.scale = 1 / math.sqrt(len(extractors))

    @property
    def dim(self) -> int:
        return sum(e.dim for e in self.extractors)

    def batch(self, samples: Sequence[Encoded]) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        if len(self.extractors) == 1:
            return self.extractors[0].batch(samples)
        return torch.cat([F.normalize(e.batch(samples), dim=1) * self.scale for e in self.extractors], dim=1)


def load_checkpoint_decoders(base: dict[str, Any]) -> list[tuple[Any, Any, Checkpoint]]:
    """(model, tokenizer, checkpoint) for every checkpoint of the record."""
    return [(*load_decoder(c.path, c.adapter), c) for c in checkpoints_of(base)]


def checkpoint_extractor(decoders: list[tuple[Any, Any, Checkpoint]], spec: ProjectionSpec, adam: bool = False,
                         adam_momentum: bool = False) -> CheckpointExtractor:
    """The extractor over ``decoders``; with ``adam``, each checkpoint's rows in its own warm-up's Adam
    direction; a checkpoint with a logits' Fisher diagonal has its output head's gradient whitened by it."""
    extractors = [GradientExtractor(model, spec, tokenizer.pad_token_id,
                                    adam_state(Path(c.adapter), adam_momentum) if adam and c.adapter else None,
                                    head_whitening(model, c))
                  for model, tokenizer, c in decoders]
    return CheckpointExtractor(extractors)


def head_whitening(model: Any, checkpoint: Checkpoint) -> dict[str, torch.Tensor] | None:
    """``{output head's name: its row scale}`` for the extractor's ``output_scale``, or None."""
    if checkpoint.logit_fisher is None:
        return None
    import torch

    (name, _, _), = trackable_modules(model, "head")
    return {name: torch.from_numpy(read_row_scale(checkpoint.logit_fisher))}
