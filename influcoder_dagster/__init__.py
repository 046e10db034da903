"""Influcoder: which training samples made a language model say this? See README.md and docs/."""
