"""Exact cosines of output-head gradients, from each token's two factors; no gradient is formed.

A sample's (whitened) head gradient is ``G = sum_t delta_t h_t^T``: ``delta_t`` the loss's gradient
with respect to token ``t``'s logits (``softmax - onehot``, over the sample's mean-token loss, times
the logits' Fisher row scale when the teacher whitens), ``h_t`` the head's input. So
``<G_a, G_b> = sum_{t in a, s in b} (delta_t . delta_s)(h_t . h_s)``: a token Gram matrix, at a
cost of the product of the two token counts instead of the head's size (SmolLM2's head has 28 M
coordinates; the store keeps a 2,048-wide sketch of them, which agrees with these cosines on a
fifth of a sample's top-10: ``benchmarks/results/projection_exact.json``).

The cosine of several checkpoints is the mean of theirs, as the store's rows define it
(:mod:`influcoder_dagster.teacher.checkpoints`). No library scores head gradients from token
factors without forming them (LogIX and Kronfluence materialize or project the gradient), hence
this module.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from influcoder_dagster.data.tokens import Encoded, length_sorted_batches, pad_batch
from influcoder_dagster.teacher.checkpoints import Checkpoint, head_whitening

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TokenFactors:
    """The loss tokens of ``n`` samples: logit gradients (tokens, vocab), head inputs (tokens, d) and
    each token's sample (tokens,)."""

    deltas: torch.Tensor
    hidden: torch.Tensor
    owner: torch.Tensor
    n: int


class HeadFactors:
    """Token factors of one decoder's output head, batches of samples at a time (no backward pass).

    :meth:`recording` keeps the head's input and output of a forward pass someone else runs (the
    gradient extractor's), so a store's factors cost no pass of their own."""

    def __init__(self, model: Any, pad_token_id: int, row_scale: torch.Tensor | None = None) -> None:
        self.model, self.pad_token_id, self.row_scale = model.eval(), pad_token_id, row_scale
        self.head = model.get_output_embeddings()

    def of(self, samples: Sequence[Encoded]) -> TokenFactors:
        """The factors of ``samples`` (in order), each sample's loss the mean over its loss tokens."""
        import torch

        ids, mask = pad_batch([s.input_ids for s in samples], self.pad_token_id)
        with self.recording() as seen, torch.no_grad():
            self.model(input_ids=ids, attention_mask=mask)
        return self.recorded(samples, seen)

    @contextmanager
    def recording(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Within it, each forward pass of the model appends the head's (input, output), detached."""
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        handle = self.head.register_forward_hook(lambda module, args, output: seen.append((args[0].detach(), output.detach())))
        try:
            yield seen
        finally:
            handle.remove()

    def recorded(self, samples: Sequence[Encoded], seen: list[tuple[torch.Tensor, torch.Tensor]]) -> TokenFactors:
        """The factors of ``samples`` from the one forward pass of them that ``seen`` recorded."""
        import torch

        if len(seen) != 1:
            raise RuntimeError(f"expected one recorded forward pass of the output head, got {len(seen)}")
        (hidden, logits), = seen
        ids, mask = pad_batch([s.input_ids for s in samples], self.pad_token_id)
        starts = torch.tensor([max(s.loss_start, 1) for s in samples])[:, None]  # token t is predicted from t-1
        loss_mask = (mask.bool() & (torch.arange(ids.shape[1])[None, :] >= starts))[:, 1:]
        where = loss_mask.nonzero(as_tuple=True)
        deltas = logits[:, :-1][where].float().softmax(-1)
        deltas[torch.arange(len(deltas)), ids[:, 1:][where]] -= 1
        deltas /= loss_mask.sum(1).clamp(min=1)[where[0], None]
        if self.row_scale is not None:
            deltas *= self.row_scale
        return TokenFactors(deltas, hidden[:, :-1][where].float(), where[0], len(samples))


def inner_products(a: TokenFactors, b: TokenFactors) -> torch.Tensor:
    """(a.n, b.n) inner products of the samples' head gradients."""
    import torch

    tokens = (a.deltas @ b.deltas.T) * (a.hidden @ b.hidden.T)
    rows = torch.zeros(a.n, tokens.shape[1], dtype=tokens.dtype).index_add_(0, a.owner, tokens)
    return torch.zeros(a.n, b.n, dtype=tokens.dtype).index_add_(1, b.owner, rows)


def squared_norms(f: TokenFactors) -> torch.Tensor:
    """(f.n,) squared norms of the samples' head gradients: each sample's own token Gram matrix only
    (the diagonal blocks), not every pair of the batch's tokens."""
    import torch

    counts = torch.bincount(f.owner, minlength=f.n).tolist()  # tokens come sample by sample
    norms = [((d @ d.T) * (h @ h.T)).sum() for d, h in zip(f.deltas.split(counts), f.hidden.split(counts), strict=True)]
    return torch.stack(norms).clamp(min=1e-30)


class ExactHeadScorer:
    """Exact head-gradient cosines of queries against candidates, over every checkpoint the store scores."""

    def __init__(self, heads: list[HeadFactors], batch_size: int = 16) -> None:
        self.heads, self.batch_size = heads, batch_size

    def cosines(self, queries: Sequence[Encoded], candidates: Sequence[Encoded], progress: bool = False) -> np.ndarray:
        """(queries, candidates) cosines, the mean over checkpoints; candidates are streamed in batches,
        so a scan of a whole corpus holds one batch's logit gradients at a time."""
        out = np.zeros((len(queries), len(candidates)), dtype=np.float64)
        if not len(queries) or not len(candidates):
            return out
        batches = list(length_sorted_batches([len(c.input_ids) for c in candidates], self.batch_size))
        for head in self.heads:
            query = head.of(queries)
            query_norms = squared_norms(query).sqrt()
            for idx in tqdm(batches, desc="exact head cosines", disable=not progress):
                batch = head.of([candidates[i] for i in idx])
                cos = inner_products(query, batch) / query_norms[:, None] / squared_norms(batch).sqrt()[None, :]
                out[:, idx] += cos.double().numpy()
        return out / len(self.heads)


def exact_head_scorer(decoders: list[tuple[Any, Any, Checkpoint]], batch_size: int = 16) -> ExactHeadScorer:
    """The scorer over ``(model, tokenizer, checkpoint)`` decoders, each head whitened as its checkpoint says."""
    heads = []
    for model, tokenizer, checkpoint in decoders:
        whitening = head_whitening(model, checkpoint)
        heads.append(HeadFactors(model, tokenizer.pad_token_id, next(iter(whitening.values())) if whitening else None))
    return ExactHeadScorer(heads, batch_size)
