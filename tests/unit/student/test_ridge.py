"""The student's ridge is scikit-learn's Ridge at the alpha that wins on rows held back from the fit."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.linear_model import Ridge

from influcoder_dagster.student.ridge import SideBySide, fit_ridge


def _data(rng, n=200, p=30, t=8, noise=0.5):
    x = rng.random((n, p)) * (rng.random((n, p)) < 0.3)
    return x, x @ rng.standard_normal((p, t)) + 3.0 + noise * rng.standard_normal((n, t))


ROWS = {"dense": lambda x: x, "sparse": sp.csr_matrix, "side_by_side": lambda x: SideBySide(x[:, :12], sp.csr_matrix(x[:, 12:]))}


@pytest.mark.parametrize("rows", sorted(ROWS))
def test_the_map_equals_sklearn_ridge_with_an_unpenalized_intercept(rows):
    x, y = _data(np.random.default_rng(0))
    fitted = fit_ridge(ROWS[rows](x), y, (0.1, 1.0, 10.0))
    reference = Ridge(alpha=fitted.alpha).fit(x, y)
    np.testing.assert_allclose(fitted.coef, reference.coef_.T, atol=1e-5)
    np.testing.assert_allclose(fitted.intercept, reference.intercept_, atol=1e-5)
    np.testing.assert_allclose(fitted.predict(ROWS[rows](x[:5])), reference.predict(x[:5]), atol=1e-4)


def test_products_run_a_block_of_rows_at_a_time_with_the_same_result():
    from influcoder_dagster.student.ridge import _matmul

    x, y = _data(np.random.default_rng(2), n=50)
    coef = np.random.default_rng(3).standard_normal((x.shape[1], 4))
    rows = np.array([7, 3, 41, 0, 19])
    for make in ROWS.values():
        np.testing.assert_allclose(_matmul(make(x), coef, block=7), x @ coef, atol=1e-9)
        np.testing.assert_allclose(_matmul(make(x), coef, rows, block=2), x[rows] @ coef, atol=1e-9)


def test_alpha_is_chosen_by_the_held_back_rows_not_the_fit():
    rng = np.random.default_rng(1)
    clean_x, clean_y = _data(rng, noise=0.01)
    noisy_x, noisy_y = _data(rng, n=60, p=50, noise=5.0)  # few rows, many features, mostly noise
    clean, noisy = fit_ridge(clean_x, clean_y, (1e-3, 1.0, 1e3)), fit_ridge(noisy_x, noisy_y, (1e-3, 1.0, 1e3))
    assert clean.alpha < noisy.alpha
    assert set(clean.held_back_cosine) == {1e-3, 1.0, 1e3}
    assert clean.held_back_cosine[clean.alpha] == max(clean.held_back_cosine.values())


def test_one_row_is_too_few_to_choose_alpha():
    with pytest.raises(ValueError, match="at least 2 training rows"):
        fit_ridge(np.ones((1, 3)), np.ones((1, 2)), (1.0,))


def test_rows_streamed_in_blocks_and_scaled_afterwards_give_the_same_map():
    from influcoder_dagster.student.ridge import StreamedRidge

    x, y = _data(np.random.default_rng(4), n=120)
    scale = np.random.default_rng(5).uniform(0.2, 5.0, x.shape[1])
    whole = fit_ridge(x * scale, y, (0.1, 1.0, 10.0), seed=3)
    streamed = StreamedRidge(len(x), seed=3)
    for start, stop in [(0, 7), (7, 50), (50, 51), (51, 120)]:
        streamed.add(x[start:stop], y[start:stop])
    fitted = streamed.fit((0.1, 1.0, 10.0), column_scale=scale)
    assert fitted.alpha == whole.alpha
    np.testing.assert_allclose(fitted.coef, whole.coef, atol=1e-5)
    np.testing.assert_allclose(fitted.intercept, whole.intercept, atol=1e-5)


def test_a_stream_must_deliver_the_rows_it_announced():
    from influcoder_dagster.student.ridge import StreamedRidge

    x, y = _data(np.random.default_rng(6), n=40)
    streamed = StreamedRidge(41)
    streamed.add(x, y)
    with pytest.raises(ValueError, match="40 rows were added, 41 announced"):
        streamed.fit((1.0,))
