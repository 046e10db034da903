"""The default query encoder of the gradient-sketch student: a bag of the decoder's own tokens.

A text's predicted sketch is ``W (idf * counts / length) + b``: its tokens under the decoder's
tokenizer (truncated where the teacher truncates), each weighted by its idf on the training
texts, averaged over the text, then a linear map fitted by ridge regression onto the training
samples' query-side sketches. That is exactly what sentence-transformers' ``StaticEmbedding``
(an embedding bag) computes once row ``t`` of its table is ``idf[t] * W[:, t] + b``, so the
student is a stock sentence-transformers model: saved, logged to MLflow and served like any other,
and a query costs one tokenization and one table lookup, with no network.

Why the decoder's tokens: the teacher's gradient is a function of exactly those tokens. On two
real corpora a ridge head on them recovered 0.22-0.25 of the gradient path's top-10, against
0.14-0.15 for the same head on MiniLM's sentence embedding (``benchmarks/student_features.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from influcoder_dagster.core.errors import ConfigError, MissingUpstreamError
from influcoder_dagster.student.metrics import mean_cosine
from influcoder_dagster.student.ridge import fit_ridge

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MAX_FEATURES = 8192  # most frequent training tokens the head reads; a rarer token adds only the bias
ALPHAS = (0.03, 0.1, 0.3, 1.0, 3.0)  # per 1,000 training texts; the held-back tenth picks one


def decoder_tokenizer(model_dir: str | Path, max_length: int) -> Any:
    """The decoder's fast tokenizer (``tokenizers.Tokenizer``), truncating at the teacher's ``max_length``."""
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"encoder.query_features = 'decoder_tokens' reads the decoder's fast tokenizer, and {path} is "
                          "missing; set encoder.query_features = 'sentence_encoder' for a model saved without one")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer


def token_bag_student(tokenizer: Any, texts: list[str], targets: np.ndarray, seed: int = 0) -> tuple[SentenceTransformer, dict[str, float]]:
    """A ``StaticEmbedding`` student over ``tokenizer`` whose table maps ``texts`` onto ``targets``
    (ridge regression with an intercept, ``fit_ridge``), followed by ``Normalize``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    if not texts:
        raise MissingUpstreamError("no training samples to fit the token-bag student on", "influence_rankings")
    bag = StaticEmbedding(tokenizer, embedding_dim=targets.shape[1])
    counts = mean_counts(bag, texts)
    kept, idf = kept_tokens(counts)
    x = idf_weighted(counts, kept, idf)
    ridge = fit_ridge(x, targets, tuple(a * len(texts) / 1000 for a in ALPHAS), seed)
    table = np.tile(ridge.intercept, (bag.num_embeddings, 1))
    table[kept] += idf[kept, None] * ridge.coef
    with torch.no_grad():
        bag.embedding.weight.copy_(torch.from_numpy(table))
    fit = {"ridge_alpha": ridge.alpha, "held_back_cosine": ridge.held_back_cosine[ridge.alpha],
           "train_cosine": mean_cosine(ridge.predict(x), targets), "token_features": len(kept)}
    return SentenceTransformer(modules=[bag, Normalize()], device="cpu"), fit


def mean_counts(bag: Any, texts: list[str]) -> Any:
    """Token counts over each text's length (the embedding bag's mean), as a sparse (texts, vocab) matrix."""
    import scipy.sparse as sp

    features = bag.preprocess(texts)
    ids, offsets = features["input_ids"].numpy(), features["offsets"].numpy()
    lengths = np.diff(np.append(offsets, len(ids)))
    rows = np.repeat(np.arange(len(texts)), lengths)
    weights = (1 / np.maximum(lengths, 1))[rows].astype(np.float32)
    return sp.csr_matrix((weights, (rows, ids)), shape=(len(texts), bag.num_embeddings))


def kept_tokens(counts: Any) -> tuple[np.ndarray, np.ndarray]:
    """The ``MAX_FEATURES`` tokens found in the most texts of ``counts`` (ascending ids), and every
    token's smoothed idf over those texts."""
    df = document_frequency(counts)
    seen = np.flatnonzero(df)
    return np.sort(seen[np.argsort(-df[seen], kind="stable")[:MAX_FEATURES]]), smooth_idf(df, counts.shape[0])


def idf_weighted(counts: Any, kept: np.ndarray, idf: np.ndarray) -> Any:
    """The ``kept`` columns of ``counts``, each times its idf: sparse float32 rows."""
    return counts[:, kept].multiply(idf[kept]).tocsr().astype(np.float32, copy=False)


def document_frequency(counts: Any) -> np.ndarray:
    """Texts each token occurs in (``counts`` as ``mean_counts`` gives it: one entry per token and text)."""
    return np.bincount(counts.indices, minlength=counts.shape[1])


def smooth_idf(df: np.ndarray, n_texts: int) -> np.ndarray:
    """scikit-learn's smoothed idf, ``ln((1 + n) / (1 + df)) + 1``."""
    return (np.log((1 + n_texts) / (1 + df)) + 1).astype(np.float32)
