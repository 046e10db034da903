"""Ridge regression with an intercept, its alpha chosen on a held-back tenth of the training rows.

Hand-written because scikit-learn's ``RidgeCV`` chooses alpha by leave-one-out, which keeps
several (rows x targets) float64 arrays: 6.4 GB at 100,000 samples and 1,024 targets, against
the ~4 GB a 100k training run may use. Here the rows enter only through the centred Gram
matrix ``X'X`` and ``X'Y`` (features x features and features x targets), so memory does not
grow with the rows beyond the inputs themselves, and one Gram matrix serves every alpha (one
Cholesky solve each); the sums are taken a block of rows at a time, so a dense ``x`` is never
copied whole into float64. The dense algebra runs through torch (MKL): NumPy's and SciPy's bundled
OpenBLAS (0.3.31) segfaulted here on the Gram matrix and the Cholesky solve of 18,432 features
(two cores), which the output-gradient student reaches. Alpha is the one whose predictions have the highest mean cosine with the
held-back rows' targets, which is what the served, normalized student is scored on; the map is
then refitted on all rows. With that alpha the result is scikit-learn's ``Ridge``. Rows may be
dense, scipy-sparse, or :class:`SideBySide` (a dense block beside a sparse one, joined a block
of rows at a time, so the whole dense matrix never exists). :class:`StreamedRidge` takes rows a
block at a time as they are computed, keeping only the sums and the held-back rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from influcoder_dagster.student.metrics import mean_cosine

HELD_BACK = 0.1  # share of the training rows that chooses alpha
ROW_BLOCK = 4096  # rows per block of the sums and the products


@dataclass(frozen=True)
class SideBySide:
    """Rows ``[dense, sparse]``: a dense block (float32) beside a scipy-sparse one, made dense only
    for the rows asked for. At 80,000 texts the output-gradient student's rows would be 3.9 GB dense;
    this way they cost their dense block (1.3 GB) and the sparse token weights."""

    dense: np.ndarray
    sparse: Any

    @property
    def shape(self) -> tuple[int, int]:
        return self.dense.shape[0], self.dense.shape[1] + self.sparse.shape[1]

    def __getitem__(self, rows: Any) -> np.ndarray:
        return np.hstack([self.dense[rows], self.sparse[rows].toarray()])


@dataclass(frozen=True)
class RidgeMap:
    """``x @ coef + intercept``: the fitted map, with the alpha chosen and each alpha's held-back cosine."""

    coef: np.ndarray  # (features, targets)
    intercept: np.ndarray  # (targets,)
    alpha: float
    held_back_cosine: dict[float, float]

    def predict(self, x: Any) -> np.ndarray:
        return _matmul(x, self.coef).astype(np.float32) + self.intercept


def fit_ridge(x: Any, targets: np.ndarray, alphas: tuple[float, ...], seed: int = 0) -> RidgeMap:
    """Ridge from ``x`` (dense, scipy-sparse or :class:`SideBySide` rows) to ``targets``, intercept unpenalized, alpha
    among ``alphas`` chosen on a random tenth of the rows (seeded) held back from a first fit."""
    ridge = StreamedRidge(x.shape[0], seed)
    for start in range(0, x.shape[0], ROW_BLOCK):
        ridge.add(x[start:start + ROW_BLOCK], targets[start:start + ROW_BLOCK])
    return ridge.fit(alphas)


class StreamedRidge:
    """:func:`fit_ridge` for rows that arrive a block at a time, in order, and are never all held:
    only their sums and the held-back tenth are kept. ``n`` is the number of rows to come."""

    def __init__(self, n: int, seed: int = 0) -> None:
        if n < 2:
            raise ValueError(f"ridge needs at least 2 training rows to choose alpha, got {n}")
        self.held = np.zeros(n, dtype=bool)
        self.held[np.random.default_rng(seed).permutation(n)[: max(1, round(n * HELD_BACK))]] = True
        self.fit_sums: _Sums | None = None
        self.held_x: list[Any] = []
        self.held_y: list[np.ndarray] = []
        self.seen = 0

    def add(self, x: Any, y: np.ndarray) -> None:
        """The next ``len(y)`` rows (dense, scipy-sparse or :class:`SideBySide`) and their targets."""
        held = self.held[self.seen:self.seen + len(y)]
        self.seen += len(y)
        self.fit_sums = _sums(x, y, np.flatnonzero(~held), into=self.fit_sums)
        if held.any():
            self.held_x.append(x[np.flatnonzero(held)])
            self.held_y.append(y[held])

    def fit(self, alphas: tuple[float, ...], column_scale: np.ndarray | None = None) -> RidgeMap:
        """Choose alpha on the held-back rows, then refit on every row. ``column_scale``, if given,
        multiplies each feature column first (as if the rows had been scaled before they were added)."""
        import scipy.sparse as sp

        if self.seen != len(self.held):
            raise ValueError(f"{self.seen} rows were added, {len(self.held)} announced")
        held_x = sp.vstack(self.held_x).tocsr() if sp.issparse(self.held_x[0]) else np.vstack(self.held_x)
        held_y, sums = np.concatenate(self.held_y), self.fit_sums
        if column_scale is not None:
            c = column_scale.astype(np.float32)
            sums, held_x = _scaled(sums, column_scale), held_x.multiply(c).tocsr() if sp.issparse(held_x) else held_x * c
        scores = {}
        for alpha in alphas:
            coef, intercept = _solve(sums, alpha)
            scores[float(alpha)] = mean_cosine(_matmul(held_x, coef) + intercept, held_y)
        alpha = max(scores, key=scores.get)
        coef, intercept = _solve(_sums(held_x, held_y, np.arange(len(held_y)), into=sums), alpha)  # all rows' sums, in place
        return RidgeMap(coef.astype(np.float32), intercept.astype(np.float32), alpha, scores)


def _scaled(sums: _Sums, c: np.ndarray) -> _Sums:
    """The sums of rows whose columns are multiplied by ``c``, in place: ``X'X`` a band of rows at a time."""
    for start in range(0, len(c), 1024):
        sums.xtx[start:start + 1024] *= c[start:start + 1024, None] * c[None, :]
    np.multiply(sums.xty, c[:, None], out=sums.xty)
    np.multiply(sums.x_sum, c, out=sums.x_sum)
    return sums


class _Sums(NamedTuple):
    """``X'X``, ``X'Y``, the column sums of ``x`` and ``y`` (float64) and the row count: additive
    over row sets, so the held-back rows are added to the fitting rows' sums in place."""

    xtx: np.ndarray
    xty: np.ndarray
    x_sum: np.ndarray
    y_sum: np.ndarray
    n: int


def _sums(x: Any, y: np.ndarray, rows: np.ndarray, into: _Sums | None = None, block: int = ROW_BLOCK) -> _Sums:
    """The sums over ``rows`` (added in place to ``into``'s), a block of rows at a time in float64
    (a sparse ``x`` never densified), so no float64 copy of ``x`` is ever whole."""
    import torch

    p, t = x.shape[1], y.shape[1]
    xtx, xty, x_sum, y_sum, n = into or (np.zeros((p, p)), np.zeros((p, t)), np.zeros(p), np.zeros(t), 0)
    for start in range(0, len(rows), block):
        part = rows[start:start + block]
        xb, yb = x[part].astype(np.float64), y[part].astype(np.float64)
        if hasattr(xb, "toarray"):  # scipy-sparse products: no BLAS
            xtx += (xb.T @ xb).toarray()
            xty += np.asarray(xb.T @ yb)
        else:
            dense = torch.from_numpy(xb)
            torch.from_numpy(xtx).addmm_(dense.T, dense)  # in place, into the numpy array
            torch.from_numpy(xty).addmm_(dense.T, torch.from_numpy(yb))
        x_sum += np.asarray(xb.sum(axis=0)).ravel()
        y_sum += yb.sum(axis=0)
    return _Sums(xtx, xty, x_sum, y_sum, n + len(rows))


def _solve(sums: _Sums, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The coefficients and intercept at ``alpha``: centring and the ridge term go into one copy of
    ``X'X``, which its Cholesky factor then overwrites."""
    import torch

    x_mean, y_mean = sums.x_sum / sums.n, sums.y_sum / sums.n
    gram = torch.from_numpy(sums.xtx.copy())
    for start in range(0, len(gram), 1024):  # centred a band of rows at a time: no second (p x p) temporary
        gram[start:start + 1024] -= torch.from_numpy(sums.n * np.outer(x_mean[start:start + 1024], x_mean))
    gram.diagonal().add_(alpha)
    torch.linalg.cholesky(gram, out=gram)
    rhs = torch.from_numpy(sums.xty - sums.n * np.outer(x_mean, y_mean))
    coef = torch.cholesky_solve(rhs, gram).numpy()
    return coef, y_mean - x_mean @ coef


def _matmul(x: Any, coef: np.ndarray, rows: np.ndarray | None = None, block: int = ROW_BLOCK) -> np.ndarray:
    """``x[rows] @ coef`` (every row by default), a block of rows at a time; dense blocks through
    torch (see the module docstring)."""
    import torch

    rows = np.arange(x.shape[0]) if rows is None else rows
    out = np.empty((len(rows), coef.shape[1]), dtype=coef.dtype)
    for start in range(0, len(rows), block):
        xb = x[rows[start:start + block]]
        product = xb @ coef if hasattr(xb, "toarray") else torch.from_numpy(np.asarray(xb, dtype=coef.dtype)) @ torch.from_numpy(coef)
        out[start:start + block] = np.asarray(product)
    return out
