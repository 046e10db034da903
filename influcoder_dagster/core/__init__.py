"""The base of every layer: the config model, where each file lives (``Paths``), atomic writes, hashes, the errors."""
