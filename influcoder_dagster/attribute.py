"""The query path: encode the query, search the FAISS index, join the samples' text and provenance.

With ``rerank=N`` the index only recalls N candidates; the query's projected gradient on the base
model then scores exactly those N against the gradient store (the teacher's cosine), and the
top-k come back in the teacher's order: teacher precision for the price of one backward pass
and N dot products, instead of a scan of the whole store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .index import IndexError_, load_index
from .paths import Paths
from .tokenized import read_corpus, read_manifest


class Attributor:
    """Loads the index, its encoder and the corpus once; answers many queries."""

    def __init__(self, home: Path, max_length: int = 128) -> None:
        from .query_encoder import QueryEncoder

        self.paths, self.max_length = Paths(home), max_length
        self.index, self.manifest = load_index(self.paths.index)
        corpus_version = read_manifest(self.paths.corpus)["dataset_version"]
        if self.manifest["dataset_version"] != corpus_version:
            raise IndexError_(
                f"the index was built for dataset {self.manifest['dataset_version']} but the corpus is now {corpus_version}; "
                "materialize the 'embedding_index' asset (influcoder materialize --select embedding_index)"
            )
        if not self.paths.index_encoder.exists():
            raise IndexError_(f"{self.paths.index_encoder} missing; materialize the 'embedding_index' asset")
        self.encoder = QueryEncoder(self.paths.index_encoder)
        corpus = read_corpus(self.paths.corpus, columns=["sample_id", "text", "source", "row"])
        self._row = {int(s): i for i, s in enumerate(corpus.column("sample_id").to_numpy())}
        self._cols = {c: corpus.column(c).to_pylist() for c in ("text", "source", "row")}
        self._teacher: _Teacher | None = None

    def _hit(self, rank: int, sid: int, score: float, **extra: Any) -> dict[str, Any]:
        i = self._row[sid]
        return {"rank": rank, "sample_id": sid, "score": score, "source": self._cols["source"][i], "row": self._cols["row"][i],
                "text": self._cols["text"][i], **extra}

    def query(self, texts: list[str], k: int = 10, rerank: int = 0, prompts: list[str | None] | None = None) -> list[list[dict[str, Any]]]:
        """Top-k samples per text; with ``rerank`` > k, recalled from the index and ordered by the teacher."""
        from .index import search

        emb = self.encoder.encode(texts)
        scores, ids = search(self.index, emb, max(k, rerank))
        if not rerank:
            return [[self._hit(r, int(sid), float(s)) for r, (s, sid) in enumerate(zip(srow, irow, strict=True), start=1) if sid >= 0]
                    for srow, irow in zip(scores, ids, strict=True)]
        if self._teacher is None:
            self._teacher = _Teacher(self.paths, self.max_length)
        teacher = self._teacher.scores(texts, prompts, [row[row >= 0] for row in ids])
        out = []
        for srow, irow, trow in zip(scores, ids, teacher, strict=True):
            valid = irow >= 0
            enc_score = dict(zip(irow[valid].tolist(), srow[valid].tolist(), strict=True))
            order = np.argsort(-trow, kind="stable")[:k]
            cands = irow[valid]
            out.append([self._hit(r, int(cands[j]), float(trow[j]), encoder_score=float(enc_score[int(cands[j])]))
                        for r, j in enumerate(order, start=1)])
        return out


class _Teacher:
    """The exact gradient score of a query against chosen store rows (loaded on first rerank)."""

    def __init__(self, paths: Paths, max_length: int) -> None:
        from .atomic import read_json
        from .decoder import load_decoder
        from .gradients import GradientExtractor
        from .projection import ProjectionSpec
        from .store import GradientStore

        if not paths.gradients_pointer.exists() or not paths.base_model_pointer.exists():
            raise IndexError_("--rerank needs the gradient store and the base model; materialize 'projected_gradients'")
        self.store = GradientStore.open(Path(read_json(paths.gradients_pointer)["root"]))
        base = read_json(paths.base_model_pointer)
        if base["model_hash"] != self.store.manifest["base_model_hash"]:
            raise IndexError_("the gradient store was built on another base model; materialize 'projected_gradients'")
        model, self.tokenizer = load_decoder(base["path"], base.get("adapter"))
        self.max_length = max_length
        self.extractor = GradientExtractor(model, ProjectionSpec.from_json(self.store.manifest["projection"]), self.tokenizer.pad_token_id)

    def scores(self, texts: list[str], prompts: list[str | None] | None, candidates: list[np.ndarray]) -> list[np.ndarray]:
        from .decoder import tokenize_for_loss
        from .gradients import compute_gradients
        from .scoring import full_scores

        enc = tokenize_for_loss(self.tokenizer, texts, self.max_length, prompts)
        grads = compute_gradients(self.extractor, enc, batch_size=16).numpy()
        return [full_scores(g[None], self.store.lookup(c))[0] if len(c) else np.zeros(0) for g, c in zip(grads, candidates, strict=True)]
