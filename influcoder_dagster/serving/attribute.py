"""The query path: encode the query, search the FAISS index, join the samples' text and provenance.

With ``rerank=N`` the index only recalls N candidates; the query's projected gradient on the base
model then scores exactly those N against the gradient store (the teacher's cosine), and the
top-k come back in the teacher's order: teacher precision for the price of one backward pass
and N dot products, instead of a scan of the whole store.

Which vector recalls the candidates depends on what the index holds. A gradient-sketch index
holds each sample's gradient row in the sketch basis, so the re-rank searches it with the query's
own gradient, sketched: that gradient is computed for the exact scores anyway, and it recalls
the teacher's top-10 far better than the encoder's prediction of it (demo, 10k samples, depth 100:
1.00 against 0.29). A text-embedding index (the ``rankings`` objective) is searched with the
encoder's embedding.

With ``score="exact"`` (a teacher of the output head only) the N candidates are scored by their
exact head-gradient cosine with the query instead of the store's sketch of it
(:mod:`influcoder_dagster.teacher.head_exact`): a forward pass per candidate, read from the
tokenized corpus. On a large vocabulary the sketch keeps a small share of the exact top-10
(SmolLM2 at 2,048: 0.28), so this is the answer to trust where the cost is affordable. With
``score="factors"`` the candidates' gradients come from the head factors the store keeps beside
its rows (``projection.head_factors``; :mod:`influcoder_dagster.teacher.head_factor_store`), the
query's stay exact: no forward pass per candidate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from influcoder_dagster.core.config import IndexConfig
from influcoder_dagster.core.errors import ConfigError, MissingUpstreamError
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.data.tokenized import read_corpus
from influcoder_dagster.data.tokens import Encoded, tokenize_for_loss
from influcoder_dagster.serving.index import encoder_folder, load_index, load_samples, search
from influcoder_dagster.serving.query_encoder import QueryEncoder
from influcoder_dagster.student.sketch import BASIS_FILE, Sketch
from influcoder_dagster.teacher.base_model import base_model_record
from influcoder_dagster.teacher.gradients import trackable_modules
from influcoder_dagster.teacher.head_exact import ExactHeadScorer, exact_head_scorer
from influcoder_dagster.teacher.head_factor_store import HeadFactorFiles, StoredFactorScorer
from influcoder_dagster.teacher.preconditioner import read_preconditioner
from influcoder_dagster.teacher.projection import ProjectionSpec
from influcoder_dagster.teacher.query_gradients import QueryGradients
from influcoder_dagster.teacher.scoring import apply_preconditioner, unit_rows
from influcoder_dagster.teacher.store import open_store

Score = Literal["sketch", "factors", "exact"]  # how a re-rank scores its candidates


class Attributor:
    """Loads one published index version (index, encoder, samples) once; answers many queries."""

    def __init__(self, home: Path, max_length: int = 128) -> None:
        self.paths, self.max_length = Paths(home), max_length
        self.index, self.manifest = load_index(self.paths.index)
        self.encoder_folder = encoder_folder(self.paths.index, self.manifest)
        self.encoder = QueryEncoder(self.encoder_folder)
        self.sketch = self._sketch()
        samples = load_samples(self.paths.index, self.manifest)  # the index's own: a refresh under way does not show
        self._row = {int(s): i for i, s in enumerate(samples.column("sample_id").to_numpy())}
        self._cols = {c: samples.column(c).to_pylist() for c in ("text", "source", "row")}
        self._teacher: _Teacher | None = None

    def _sketch(self) -> Sketch | None:
        """The index's sketch basis, when its documents are gradient sketches."""
        if self.manifest.get("documents") != "gradient_sketch":
            return None
        path = self.encoder_folder / BASIS_FILE
        if not path.exists():
            raise MissingUpstreamError(f"{path} is missing (the index holds gradient sketches)", "embedding_index")
        return Sketch.load(path)

    def _hit(self, rank: int, sid: int, score: float, **extra: Any) -> dict[str, Any]:
        i = self._row[sid]
        return {"rank": rank, "sample_id": sid, "score": score, "source": self._cols["source"][i], "row": self._cols["row"][i],
                "text": self._cols["text"][i], **extra}

    def query(self, texts: list[str], k: int = 10, rerank: int = 0, prompts: list[str | None] | None = None,
              score: Score = "sketch") -> list[list[dict[str, Any]]]:
        """Top-k samples per text; with ``rerank`` > k, recalled from the index and ordered by the teacher:
        by the store's sketch of its gradient cosine, or (a head teacher) by the exact output-head
        gradient cosine, or by the store's head factors' approximation of it."""
        if score != "sketch" and not rerank:
            raise ConfigError(f"{score} scoring re-ranks recalled candidates: give a re-rank depth (--rerank N) with it")
        if not rerank:
            scores, ids = search(self.index, self.encoder.encode(texts), k)
            return [[self._hit(r, int(sid), float(s)) for r, (s, sid) in enumerate(zip(srow, irow, strict=True), start=1) if sid >= 0]
                    for srow, irow in zip(scores, ids, strict=True)]
        grads = self._loaded_teacher().query_side(texts, prompts)
        if self.sketch is not None:
            nprobe = self.manifest.get("rerank_nprobe", IndexConfig().rerank_nprobe)  # indexes from before the setting
            scores, ids = search(self.index, self.sketch.targets(grads), max(k, rerank), nprobe)
        else:
            scores, ids = search(self.index, self.encoder.encode(texts), max(k, rerank))
        valid = ids >= 0
        candidates = [irow[v] for irow, v in zip(ids, valid, strict=True)]
        teacher = self._loaded_teacher()
        teacher_rows = teacher.scores(grads, candidates) if score == "sketch" else teacher.head_scores(texts, prompts, candidates, score)
        out = []
        for srow, irow, v, teacher_scores in zip(scores, ids, valid, teacher_rows, strict=True):
            cands, recalled = irow[v], srow[v]
            order = np.argsort(-teacher_scores, kind="stable")[:k]
            out.append([self._hit(r, int(cands[j]), float(teacher_scores[j]), index_score=float(recalled[j]))
                        for r, j in enumerate(order, start=1)])
        return out

    def sketches_a_large_head(self) -> bool:
        """Whether the store hashes a pretrained vocabulary's head (above 4 M coordinates), whose
        sketch keeps a small share of the exact ranking (SmolLM2: 0.28 of the top-10, docs/results.md)."""
        return any(m.factored for m in self._loaded_teacher().gradients.spec.modules)

    def keeps_head_factors(self) -> bool:
        """Whether every published shard of the store has its head factors (``score="factors"``)."""
        return HeadFactorFiles.complete(self._loaded_teacher().store)

    def _loaded_teacher(self) -> _Teacher:
        if self._teacher is None:
            self._teacher = _Teacher(self.paths, self.max_length, self.sketch)
        return self._teacher


class _Teacher:
    """The exact gradient score of a query against chosen store rows (loaded on first rerank)."""

    def __init__(self, paths: Paths, max_length: int, sketch: Sketch | None = None) -> None:
        if not paths.gradients_pointer.exists() or not paths.base_model_pointer.exists():
            raise MissingUpstreamError("--rerank needs the gradient store and the base model", "projected_gradients")
        self.store = open_store(paths)
        base = base_model_record(paths)
        if base["model_hash"] != self.store.manifest["base_model_hash"]:
            raise MissingUpstreamError("the gradient store was built on another base model", "projected_gradients")
        if sketch is not None and sketch.provenance.get("store_key") != self.store.root.name:
            raise MissingUpstreamError(f"the index's gradient sketch was fitted on store {sketch.provenance.get('store_key')}, but the "
                                       f"store is now {self.store.root.name}", "influence_rankings", "influcoder_encoder", "embedding_index")
        self.inverse = read_preconditioner(self.store)
        self.gradients = QueryGradients(base, ProjectionSpec.from_json(self.store.manifest["projection"]), max_length)
        self.paths, self.max_length = paths, max_length
        self._exact: ExactHeadScorer | None = None
        self._tokens: _CorpusTokens | None = None
        self._factors: StoredFactorScorer | None = None

    def query_side(self, texts: list[str], prompts: list[str | None] | None) -> np.ndarray:
        """The queries' plain projected gradients, times ``(F + lambda I)^-1`` when the rankings are
        preconditioned: the query side the rankings and the sketch student's targets have."""
        grads = self.gradients.of_texts(texts, prompts)
        return grads if self.inverse is None else apply_preconditioner(grads, self.inverse)

    def scores(self, gradients: np.ndarray, candidates: list[np.ndarray]) -> list[np.ndarray]:
        """The teacher's cosine of each query gradient with each of its candidates' store rows; the
        rows of all queries' candidates are read in one lookup (an audit's queries share many)."""
        wanted = np.unique(np.concatenate(candidates)) if candidates else np.zeros(0, dtype=np.int64)
        if not len(wanted):
            return [np.zeros(0, dtype=np.float32) for _ in candidates]
        rows = unit_rows(self.store.lookup(wanted))
        queries = unit_rows(gradients)
        return [(rows[np.searchsorted(wanted, c)] @ q).numpy() for q, c in zip(queries, candidates, strict=True)]

    def head_scores(self, texts: list[str], prompts: list[str | None] | None, candidates: list[np.ndarray],
                    score: Score) -> list[np.ndarray]:
        """Each query's exact head-gradient cosine with each of its candidates (``exact``: from their
        corpus token ids, a candidate several queries share run through the decoder once; ``factors``:
        from the store's head factors)."""
        wanted = np.unique(np.concatenate(candidates)) if candidates else np.zeros(0, dtype=np.int64)
        if not len(wanted):
            return [np.zeros(0, dtype=np.float32) for _ in candidates]
        queries = tokenize_for_loss(self.gradients.tokenizer(), texts, self.max_length, prompts)
        if score == "exact":
            scores = self._head_scorer().cosines(queries, self._corpus_tokens().of(wanted))
        else:
            scores = self._factor_scorer().cosines(queries, wanted)
        return [scores[i, np.searchsorted(wanted, c)].astype(np.float32) for i, c in enumerate(candidates)]

    def _factor_scorer(self) -> StoredFactorScorer:
        if self._factors is None:
            self._factors = StoredFactorScorer(self._head_scorer().heads, HeadFactorFiles(self.store))
        return self._factors

    def _head_scorer(self) -> ExactHeadScorer:
        """The decoders' exact head scorer, loaded on first use; refused unless the store holds the
        output head's gradient alone, unpreconditioned (what the exact cosine computes)."""
        if self._exact is None:
            decoders = self.gradients.decoders()
            head = [name for name, _, _ in trackable_modules(decoders[-1][0], "head")]
            if [m.name for m in self.gradients.spec.modules] != head or self.inverse is not None:
                raise ConfigError("exact scoring computes the output head's gradient cosine; this store holds "
                                  f"{[m.name for m in self.gradients.spec.modules][:3]}"
                                  + (" preconditioned" if self.inverse is not None else "")
                                  + ": re-rank without it, or build the store with projection.target = 'head'")
            self._exact = exact_head_scorer(decoders)
        return self._exact

    def _corpus_tokens(self) -> _CorpusTokens:
        if self._tokens is None:
            self._tokens = _CorpusTokens(self.paths.corpus)
        return self._tokens


class _CorpusTokens:
    """The tokenized corpus's token ids by sample id (the column stays in Arrow; a row is read when asked)."""

    def __init__(self, root: Path) -> None:
        corpus = read_corpus(root, columns=["sample_id", "input_ids"])
        ids = corpus.column("sample_id").to_numpy()
        self.order = np.argsort(ids, kind="stable")
        self.sorted_ids, self.input_ids = ids[self.order], corpus.column("input_ids").combine_chunks()

    def of(self, sample_ids: np.ndarray) -> list[Encoded]:
        rows = self.order[np.searchsorted(self.sorted_ids, sample_ids)]
        return [Encoded(self.input_ids[int(r)].as_py()) for r in rows]
