"""The one query-side gradient path: what the rankings, the noise ceiling and the re-rank all call.

A *pool* row is what the store holds for a sample (with ``projection.adam_precondition``, the
warm-up's Adam direction); a *query* gradient is plain, as LESS scores validation gradients. Both
come from one ``GradientExtractor`` over the store's projection, so a query and a stored row
differ only where the method says they should.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from influcoder_dagster.core.config import Config
from influcoder_dagster.data.tokens import Encoded, tokenize_for_loss
from influcoder_dagster.teacher.decoder import load_decoder
from influcoder_dagster.teacher.gradients import GradientExtractor, compute_gradients
from influcoder_dagster.teacher.lora import adam_state
from influcoder_dagster.teacher.projection import ProjectionSpec

if TYPE_CHECKING:
    from influcoder_dagster.teacher.gradients import GradientExtractor


def pool_extractor(model: Any, tokenizer: Any, spec: ProjectionSpec, base: dict[str, Any], cfg: Config) -> GradientExtractor:
    """The extractor of pool samples' rows: with ``projection.adam_precondition``, the warm-up's Adam
    direction. The store's rows and the noise ceiling's second-seed rows both come from here."""
    adam = adam_state(Path(base["adapter"]), cfg.projection.adam_momentum) if cfg.projection.adam_precondition else None
    return GradientExtractor(model, spec, tokenizer.pad_token_id, adam)


class QueryGradients:
    """Plain projected gradients on the base model (with its adapters), for the store's projection.

    The decoder is loaded on first use, so a rankings update whose query gradients are all cached
    never loads it.
    """

    def __init__(self, base: dict[str, Any], spec: ProjectionSpec, max_length: int, batch_size: int = 16) -> None:
        self.base, self.spec, self.max_length, self.batch_size = base, spec, max_length, batch_size
        self._decoder: tuple[Any, Any] | None = None
        self._extractors: dict[int, GradientExtractor] = {}

    def decoder(self) -> tuple[Any, Any]:
        """(model, tokenizer), loaded once."""
        if self._decoder is None:
            self._decoder = load_decoder(self.base["path"], self.base.get("adapter"))
        return self._decoder

    def _extractor(self, spec: ProjectionSpec) -> GradientExtractor:
        if spec.seed not in self._extractors:
            model, tokenizer = self.decoder()
            self._extractors[spec.seed] = GradientExtractor(model, spec, tokenizer.pad_token_id)
        return self._extractors[spec.seed]

    def of_texts(self, texts: list[str], prompts: list[str | None] | None = None) -> np.ndarray:
        """Query texts (a prompt's tokens carry no loss), tokenized as the corpus was."""
        _, tokenizer = self.decoder()
        return self.of_tokens(tokenize_for_loss(tokenizer, texts, self.max_length, prompts))

    def of_tokens(self, samples: list[Encoded], spec: ProjectionSpec | None = None) -> np.ndarray:
        """Samples already tokenized (the corpus's own token ids), under ``spec`` (default: the store's)."""
        if not samples:
            return np.zeros((0, (spec or self.spec).dim), dtype=np.float32)
        return compute_gradients(self._extractor(spec or self.spec), samples, self.batch_size).numpy()

    def pool_rows(self, samples: list[Encoded], spec: ProjectionSpec, cfg: Config) -> np.ndarray:
        """Samples' rows exactly as the store extracts them (the pool's Adam direction included), under ``spec``."""
        model, tokenizer = self.decoder()
        return compute_gradients(pool_extractor(model, tokenizer, spec, self.base, cfg), samples, self.batch_size).numpy()


def plain_anchor_gradients(cfg: Config) -> bool:
    """Whether an anchor's query side is its plain gradient (as a user query's) rather than its stored row."""
    return cfg.projection.adam_precondition and cfg.rankings.anchor_gradients == "plain"
