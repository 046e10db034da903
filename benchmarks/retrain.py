"""Retraining the tiny decoder on chosen training rows, cached: the ground truth of ``benchmarks/lds.py``.

Each retrain runs the default tiny-decoder recipe (``ModelConfig``: the same seed, epochs and
schedule) from scratch on the chosen rows, with the full corpus's tokenizer so every retrain's
losses are in one vocabulary, then measures per-text losses. Only the losses are kept, one JSON file
per retrain named by a hash of the rows and the recipe, so a rerun or a new method costs nothing
here. The models themselves are deleted.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np


def text_losses(model: Any, tokenizer: Any, texts: list[str], prompts: list[str | None], max_length: int) -> np.ndarray:
    """Mean next-token loss (nats) of each text, over its completion when it has a prompt."""
    import torch

    from influcoder_dagster.data.tokens import pad_batch, tokenize_for_loss

    out = []
    for enc in tokenize_for_loss(tokenizer, texts, max_length, prompts):
        ids, mask = pad_batch([enc.input_ids], tokenizer.pad_token_id)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[0, :-1], -1)
        token = -logp.gather(1, ids[0, 1:, None])[:, 0]
        out.append(float(token[max(enc.loss_start, 1) - 1 :].mean()))
    return np.array(out)


class Retrainer:
    """Trains on subsets of ``corpus`` and returns the losses of ``texts`` (with ``prompts``), cached in ``cache``."""

    def __init__(self, corpus: list[str], tokenizer_dir: Path, texts: list[str], prompts: list[str | None], cache: Path) -> None:
        from transformers import AutoTokenizer

        from influcoder_dagster.core.config import ModelConfig

        self.corpus, self.texts, self.prompts, self.cache = corpus, texts, prompts, cache
        self.tokenizer, self.cfg = AutoTokenizer.from_pretrained(tokenizer_dir), ModelConfig()
        cache.mkdir(parents=True, exist_ok=True)

    def key(self, rows: np.ndarray) -> str:
        h = hashlib.sha256(np.sort(rows).astype(np.int64).tobytes())
        h.update(json.dumps([self.cfg.model_dump(), self.texts, self.prompts], sort_keys=True).encode())
        return h.hexdigest()[:20]

    def losses(self, rows: np.ndarray) -> np.ndarray:
        """The texts' losses after training on ``corpus[rows]`` (cached)."""
        path = self.cache / f"{self.key(rows)}.json"
        if path.exists():
            return np.array(json.loads(path.read_text())["losses"])
        from influcoder_dagster.teacher.decoder import load_decoder, train_tiny_decoder

        folder = self.cache / f"model-{path.stem}"
        train_tiny_decoder([self.corpus[i] for i in sorted(rows)], self.cfg, folder, progress=False, tokenizer=self.tokenizer)
        model, tok = load_decoder(folder)
        losses = text_losses(model, tok, self.texts, self.prompts, self.cfg.max_length)
        shutil.rmtree(folder)
        path.write_text(json.dumps({"rows": int(len(rows)), "losses": losses.tolist()}))
        return losses
