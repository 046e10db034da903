"""The gradient-sketch student: documents keep the teacher's own gradient rows, compressed; only
queries go through the encoder.

The store's unit rows are projected onto their top ``k`` right singular vectors (the *sketch*
basis); inner products of sketches approximate the teacher's cosines. ``k`` must grow with the
corpus: a query's own gradient, sketched, finds 0.47 of its full-row top-10 among 20,000 real
passages at k = 256 and 0.81 at k = 1,024 (the default). The encoder gets a linear head that predicts a
text's sketch from its embedding: fitted in closed form by ridge regression on every training
sample of the store, then optionally fine-tuned with sentence-transformers' ``MSELoss``. A query is
one encoder pass and an inner product against the indexed sketches.

Why: a distilled two-tower student has to learn both sides of the teacher's score from text. Here
the document side is exact up to the compression, and the query side learns from every training
sample's own gradient rather than from anchor rankings (measured on the demo's held-out anchors,
as queried: 0.22-0.27 for a ridge head against 0.076 for the ranking-distilled student).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from influcoder_dagster.core.atomic import atomic_path
from influcoder_dagster.core.config import EncoderConfig
from influcoder_dagster.core.errors import ConfigError, MissingUpstreamError
from influcoder_dagster.student.encoder import encode, freeze_lower_layers, is_asymmetric
from influcoder_dagster.student.metrics import mean_cosine
from influcoder_dagster.student.ridge import fit_ridge
from influcoder_dagster.teacher.scoring import unit_rows

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

BASIS_FILE = "sketch.safetensors"


@dataclass
class Sketch:
    """An orthonormal (k, dim) basis of the gradient store's row space, and where it came from."""

    basis: np.ndarray
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.basis.shape[0])

    def documents(self, rows: np.ndarray) -> np.ndarray:
        """Index vectors for store rows: their unit rows' coordinates in the basis, not renormalized,
        so an inner product with a unit query sketch estimates the teacher's cosine."""
        return self._coordinates(rows).numpy()

    def targets(self, rows: np.ndarray) -> np.ndarray:
        """Unit sketches of (query-side) rows: what the query head learns to output for a text, and
        what a re-rank searches the index with for a query's own gradient."""
        import torch

        return torch.nn.functional.normalize(self._coordinates(rows), dim=1, eps=1e-12).numpy()

    def _coordinates(self, rows: np.ndarray) -> torch.Tensor:
        # torch, not NumPy: NumPy's BLAS threads spin after a product and took the cores from the
        # re-rank's backward pass that follows (two demo backward passes with a NumPy sketch between
        # them: 32 ms; with this one: 15 ms).
        import torch

        return unit_rows(rows) @ torch.from_numpy(np.ascontiguousarray(self.basis, dtype=np.float32)).T

    def save(self, path: Path) -> Path:
        with atomic_path(path) as tmp:
            save_file({"basis": np.ascontiguousarray(self.basis, dtype=np.float32)}, str(tmp),
                      metadata={"provenance": json.dumps(self.provenance, sort_keys=True)})
        return path

    @classmethod
    def load(cls, path: Path) -> Sketch:
        with safe_open(str(path), framework="numpy") as f:
            return cls(f.get_tensor("basis"), json.loads(f.metadata().get("provenance", "{}")))


def fit_sketch(rows: np.ndarray, k: int, seed: int = 0, **provenance: Any) -> Sketch:
    """The top-``k`` right singular vectors of the unit ``rows`` (scikit-learn's randomized SVD)."""
    from sklearn.utils.extmath import randomized_svd

    x = unit_rows(rows).numpy()
    k = min(k, *x.shape)
    if k < 1:
        raise MissingUpstreamError("cannot fit a gradient sketch on an empty store", "projected_gradients")
    _, _, vt = randomized_svd(x, n_components=k, random_state=seed)
    return Sketch(vt.astype(np.float32), {"k": k, "fit_rows": len(x), "seed": seed, **provenance})


def with_sketch_head(model: SentenceTransformer, texts: list[str], targets: np.ndarray, alphas: tuple[float, ...] = (0.1, 1.0, 10.0),
                     seed: int = 0) -> tuple[SentenceTransformer, dict[str, float]]:
    """``model`` followed by a linear head fitted by ridge regression (``fit_ridge``) from its unit
    embeddings of ``texts`` to ``targets``, then normalized."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize

    if is_asymmetric(model):
        raise ConfigError("the gradient-sketch student needs a symmetric base encoder; set encoder.asymmetric = false")
    features = encode(model, texts, "query", progress=len(texts) > 5000)
    ridge = fit_ridge(features, targets, alphas, seed)
    head = Dense(features.shape[1], targets.shape[1], bias=True, activation_function=torch.nn.Identity())
    with torch.no_grad():
        head.linear.weight.copy_(torch.from_numpy(ridge.coef.T.copy()))
        head.linear.bias.copy_(torch.from_numpy(ridge.intercept))
    modules = list(model)
    if not isinstance(modules[-1], Normalize):  # the head reads unit embeddings, as it was fitted on
        modules.append(Normalize())
    student = SentenceTransformer(modules=[*modules, head, Normalize()], device="cpu")
    student.max_seq_length = model.max_seq_length
    return student, {"ridge_alpha": ridge.alpha, "held_back_cosine": ridge.held_back_cosine[ridge.alpha],
                     "train_cosine": mean_cosine(ridge.predict(features), targets)}


def fine_tune(model: SentenceTransformer, texts: list[str], targets: np.ndarray, cfg: EncoderConfig, batch_size: int = 32,
              progress: bool = True) -> list[float]:
    """Fine-tune the encoder and its head on (text, target sketch) with sentence-transformers'
    ``MSELoss`` (on unit vectors, 2 - 2 cosine); returns the mean loss per epoch. A plain loop:
    the stock trainer needs the ``datasets`` package for what is one list of pairs here."""
    import torch
    from sentence_transformers.losses import MSELoss

    epochs = cfg.sketch_epochs
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    freeze_lower_layers(model, cfg.train_layers)
    loss_fn = MSELoss(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.sketch_lr)
    y = torch.as_tensor(targets, dtype=torch.float32)
    losses = []
    model.train()
    with tqdm(total=epochs * -(-len(texts) // batch_size), desc="fine-tune sketch head", disable=not progress) as bar:
        for _ in range(epochs):
            total, order = 0.0, rng.permutation(len(texts))
            for start in range(0, len(texts), batch_size):
                b = order[start : start + batch_size]
                loss = loss_fn([model.preprocess([texts[i] for i in b])], y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
                bar.update()
            losses.append(total / len(texts))
    model.eval()
    return losses
