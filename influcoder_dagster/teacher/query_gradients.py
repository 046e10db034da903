"""The one query-side gradient path: what the rankings, the noise ceiling and the re-rank all call.

A *pool* row is what the store holds for a sample (with ``projection.adam_precondition``, the
warm-up's Adam direction); a *query* gradient is plain, as LESS scores validation gradients. Both
come from the same checkpoints' extractors over the store's projection, so a query and a stored
row differ only where the method says they should.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from influcoder_dagster.core.config import Config
from influcoder_dagster.data.tokens import Encoded, tokenize_for_loss
from influcoder_dagster.teacher.checkpoints import Checkpoint, checkpoint_extractor, checkpoints_of, load_checkpoint_decoders
from influcoder_dagster.teacher.gradients import compute_gradients
from influcoder_dagster.teacher.projection import ProjectionSpec

if TYPE_CHECKING:
    from influcoder_dagster.teacher.gradients import RowExtractor


def pool_extractor(decoders: list[tuple[Any, Any, Checkpoint]], spec: ProjectionSpec, cfg: Config) -> RowExtractor:
    """The extractor of pool samples' rows: with ``projection.adam_precondition``, each checkpoint's
    warm-up Adam direction. The store's rows and the noise ceiling's second-seed rows both come from here."""
    p = cfg.projection
    return checkpoint_extractor(decoders, spec, adam=p.adam_precondition, adam_momentum=p.adam_momentum)


class QueryGradients:
    """Plain projected gradients on the base model's checkpoints (with their adapters), for the store's projection.

    The decoders are loaded on first use, so a rankings update whose query gradients are all cached
    never loads them.
    """

    def __init__(self, base: dict[str, Any], spec: ProjectionSpec, max_length: int, batch_size: int = 16) -> None:
        self.base, self.spec, self.max_length, self.batch_size = base, spec, max_length, batch_size
        self._decoders: list[tuple[Any, Any, Checkpoint]] | None = None
        self._extractors: dict[int, RowExtractor] = {}

    def decoders(self) -> list[tuple[Any, Any, Checkpoint]]:
        """(model, tokenizer, checkpoint) per checkpoint, loaded once."""
        if self._decoders is None:
            self._decoders = load_checkpoint_decoders(self.base)
        return self._decoders

    def tokenizer(self) -> Any:
        return self.decoders()[-1][1]  # every checkpoint shares the final model's tokenizer

    def _extractor(self, spec: ProjectionSpec) -> RowExtractor:
        if spec.seed not in self._extractors:
            self._extractors[spec.seed] = checkpoint_extractor(self.decoders(), spec)
        return self._extractors[spec.seed]

    def of_texts(self, texts: list[str], prompts: list[str | None] | None = None) -> np.ndarray:
        """Query texts (a prompt's tokens carry no loss), tokenized as the corpus was."""
        return self.of_tokens(tokenize_for_loss(self.tokenizer(), texts, self.max_length, prompts))

    def of_tokens(self, samples: list[Encoded], spec: ProjectionSpec | None = None) -> np.ndarray:
        """Samples already tokenized (the corpus's own token ids), under ``spec`` (default: the store's)."""
        if not samples:
            return np.zeros((0, (spec or self.spec).dim * len(checkpoints_of(self.base))), dtype=np.float32)
        return compute_gradients(self._extractor(spec or self.spec), samples, self.batch_size).numpy()

    def pool_rows(self, samples: list[Encoded], spec: ProjectionSpec, cfg: Config) -> np.ndarray:
        """Samples' rows exactly as the store extracts them (the pool's Adam direction included), under ``spec``."""
        return compute_gradients(pool_extractor(self.decoders(), spec, cfg), samples, self.batch_size).numpy()


def plain_anchor_gradients(cfg: Config) -> bool:
    """Whether an anchor's query side is its plain gradient (as a user query's) rather than its stored row."""
    return cfg.projection.adam_precondition and cfg.rankings.anchor_gradients == "plain"
