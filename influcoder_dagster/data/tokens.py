"""Token ids for the loss: a sample as the decoder sees it, and batches of them.

Shared by the tokenized corpus (data), the decoder's training and the gradient extraction
(teacher): one place decides where a text's loss starts and how a batch is padded.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from influcoder_dagster.core.errors import DatasetError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Encoded:
    """A tokenized sample; the loss covers tokens from ``loss_start`` on (0: the whole text)."""

    input_ids: list[int]
    loss_start: int = 0


def tokenize_for_loss(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, prompts: Sequence[str | None] | None = None
) -> list[Encoded]:
    """Token ids with a leading BOS (so a text's first token is predicted too), truncated to ``max_length``.

    With a prompt, the loss covers every token holding a character of the completion, found by
    character offsets (BPE may merge across the boundary): a completion-only loss.
    """
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    prompts = prompts if prompts is not None else [None] * len(texts)
    bos = tokenizer.bos_token_id
    out = []
    for i, prompt in enumerate(prompts):
        raw = list(enc["input_ids"][i])
        shift = int(bos is not None and not (raw and raw[0] == bos))
        seq = ([bos] * shift + raw)[:max_length]
        start = 0
        if prompt and tokenizer.is_fast:
            start = shift + next((j for j, (_, end) in enumerate(enc["offset_mapping"][i]) if end > len(prompt)), len(raw))
        elif prompt:
            start = shift + len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if prompt and start >= len(seq):
            raise DatasetError(f"prompt {prompt[:60]!r} covers the whole text; the completion has no tokens for the loss")
        out.append(Encoded(seq, start))
    return out


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Index batches of similar length, so little compute goes to padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """Right-padded (B, T) token ids and the matching attention mask."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask
