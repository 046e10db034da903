"""The gradient teacher: the decoder and its adapters, projected per-sample gradients, the store, scores, the rankings database."""
