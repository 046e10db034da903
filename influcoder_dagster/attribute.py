"""The query path: encode the query, search the FAISS index, join the samples' text and provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .index import IndexError_, load_index
from .paths import Paths
from .tokenized import read_corpus, read_manifest


class Attributor:
    """Loads the index, its encoder and the corpus once; answers many queries."""

    def __init__(self, home: Path) -> None:
        from sentence_transformers import SentenceTransformer

        paths = Paths(home)
        self.index, self.manifest = load_index(paths.index)
        corpus_version = read_manifest(paths.corpus)["dataset_version"]
        if self.manifest["dataset_version"] != corpus_version:
            raise IndexError_(
                f"the index was built for dataset {self.manifest['dataset_version']} but the corpus is now {corpus_version}; "
                "materialize the 'embedding_index' asset (influcoder materialize --select embedding_index)"
            )
        if not paths.index_encoder.exists():
            raise IndexError_(f"{paths.index_encoder} missing; materialize the 'embedding_index' asset")
        self.encoder = SentenceTransformer(str(paths.index_encoder), device="cpu", local_files_only=True)
        corpus = read_corpus(paths.corpus, columns=["sample_id", "text", "source", "row"])
        self._row = {int(s): i for i, s in enumerate(corpus.column("sample_id").to_numpy())}
        self._cols = {c: corpus.column(c).to_pylist() for c in ("text", "source", "row")}

    def query(self, texts: list[str], k: int = 10) -> list[list[dict[str, Any]]]:
        from .index import search

        emb = self.encoder.encode(texts, convert_to_numpy=True, normalize_embeddings=True).astype(np.float32)
        scores, ids = search(self.index, emb, k)
        out = []
        for srow, irow in zip(scores, ids, strict=True):
            hits = []
            for rank, (score, sid) in enumerate(zip(srow, irow, strict=True), start=1):
                if sid < 0:  # fewer than k samples in the index
                    break
                i = self._row[int(sid)]
                hits.append({"rank": rank, "sample_id": int(sid), "score": float(score), "source": self._cols["source"][i],
                             "row": self._cols["row"][i], "text": self._cols["text"][i]})
            out.append(hits)
        return out
