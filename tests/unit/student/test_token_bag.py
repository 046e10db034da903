"""The decoder-token bag serves exactly the ridge map it was fitted as, through a stock StaticEmbedding."""

import numpy as np
import pytest

from influcoder_dagster.core.errors import ConfigError
from influcoder_dagster.student.token_bag import decoder_tokenizer, token_bag_student

TEXTS = [f"Return item {i} of the {['list', 'tuple', 'mapping', 'queue'][i % 4]} after {i % 5} retries." for i in range(48)]


def _reference(tokenizer, targets, queries, alpha):
    """The same model built from scikit-learn's text features: idf-weighted token counts over the
    text's length, then Ridge with an intercept at the chosen alpha; its normalized predictions for ``queries``."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer
    from sklearn.linear_model import Ridge

    counts = CountVectorizer(analyzer=lambda t: tokenizer.encode(t, add_special_tokens=False).ids)
    tfidf = TfidfTransformer(norm=None)
    x = tfidf.fit_transform(counts.fit_transform(TEXTS))
    lengths = lambda texts: np.array([[len(tokenizer.encode(t, add_special_tokens=False).ids)] for t in texts])  # noqa: E731
    ridge = Ridge(alpha=alpha).fit(x.multiply(1 / lengths(TEXTS)).tocsr(), targets)
    pred = ridge.predict(tfidf.transform(counts.transform(queries)).multiply(1 / lengths(queries)).tocsr())
    return pred / np.linalg.norm(pred, axis=1, keepdims=True)


@pytest.mark.slow
def test_the_bag_embeds_as_the_ridge_map_on_idf_weighted_token_means_and_round_trips(local_lm, tmp_path):
    from sentence_transformers import SentenceTransformer

    tokenizer = decoder_tokenizer(local_lm, 8)
    targets = np.random.default_rng(0).standard_normal((len(TEXTS), 6)).astype(np.float32)
    model, fit = token_bag_student(tokenizer, TEXTS, targets)
    queries = ["Return item 3 of the queue after 4 retries.", "mapping tuple list", "Return item 7 of the mapping after 9 retries and more"]
    got = model.encode(queries)
    np.testing.assert_allclose(got, _reference(tokenizer, targets, queries, fit["ridge_alpha"]), atol=1e-4)
    assert fit["token_features"] > 5 and 0 < fit["train_cosine"] <= 1
    assert -1 <= fit["held_back_cosine"] <= 1
    # Truncated where the teacher truncates: words past the 8th token change nothing.
    long = "Return item 3 of the queue after 4 retries."
    np.testing.assert_allclose(model.encode([long]), model.encode([long + " and then many more unrelated words"]), atol=1e-6)
    model.save(str(tmp_path / "bag"))
    np.testing.assert_allclose(SentenceTransformer(str(tmp_path / "bag"), device="cpu").encode(queries), got, atol=1e-6)


def test_a_decoder_without_a_fast_tokenizer_says_what_to_set(tmp_path):
    with pytest.raises(ConfigError, match="set encoder.query_features = 'sentence_encoder'"):
        decoder_tokenizer(tmp_path, 32)
