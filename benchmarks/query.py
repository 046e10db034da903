"""Query latency and size: encoder + index, index + gradient re-rank, and the gradient-only path.

    influcoder demo                                   # once: the real encoder, decoder and corpus
    python benchmarks/query.py --home influcoder_home [--sizes 10000 100000] [--json PATH]

For each corpus size N, one run measures side by side, per query (p50/p95 over the queries):

* ``encoder``: embed the query with the index's encoder as the CLI does (ONNX Runtime when the
  index has ``query.onnx``; the same encoder through eager torch is timed beside it), search the
  FAISS index that ``index.kind = "auto"`` serves at that size (exact up to ``index.flat_max``,
  else ivf_sq8);
* ``rerank``: the query's projected gradient on the base model, a search for the top ``--rerank``
  (100; several depths may be given, the first is the headline), then exact cosines against those
  store rows. As the CLI does, a gradient-sketch index is searched with the query's gradient in
  the sketch basis (``index.rerank_nprobe`` lists); the encoder's candidates are measured beside
  it (``rerank_by_candidates``). A text-embedding index is searched with the encoder's embedding;
* ``gradient``: the LESS-style path: the query's gradient, then a scan of the whole store.

The home's real samples are padded to N with synthetic ones (Gaussian rows for the gradient
store; for the index, those rows' sketches under a gradient-sketch encoder, else clustered unit
vectors) — fine for time and size. Recovery (the share of the
gradient path's top-10 that a method returns, for real queries) only means something when the
rerank depth is small beside the real corpus, so ``--real R`` first grows the real part to R
samples with more docstrings, parsed (not imported) from this environment's Python files: their
store rows come from the home's base model through the store's own extractor (checked against the
stored rows of the corpus), their index vectors from the index's encoder (or, for a gradient-sketch
encoder, their rows in its sketch basis, as the index stage does). The real queries are the home's
planted probes and held-out samples of the rankings database, which no encoder trained on; those
samples are taken out of the benchmark corpus, as a user's text is not in the training data.
``compressed_recall_at_10`` compares the ivf_sq8 index with the exact one on the same vectors.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.planted import provenance  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    return len(set(a[:k].tolist()) & set(b[:k].tolist())) / k


def more_docstrings(n: int, exclude: set[str], seed: int = 0, min_chars: int = 80, max_chars: int = 500) -> list[str]:
    """Up to ``n`` docstring paragraphs not in ``exclude``, from this environment's .py files in a seeded order."""
    from influcoder_dagster.data.demo import merge_paragraphs

    files = sorted({f for key in ("stdlib", "purelib") for f in Path(sysconfig.get_paths()[key]).rglob("*.py")})
    random.Random(seed).shuffle(files)
    out: list[str] = []
    seen = set(exclude)
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                for passage in merge_paragraphs(ast.get_docstring(node) or "", max_chars):
                    if len(passage) >= min_chars and passage not in seen:
                        seen.add(passage)
                        out.append(passage)
        if len(out) >= n:
            break
    return out[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="influcoder_home", help="a storage root where `influcoder demo` ran")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rerank", type=int, nargs="+", default=[100], help="candidates the index recalls for the re-rank")
    parser.add_argument("--real", type=int, default=0, help="grow the real corpus to this many samples (see above)")
    parser.add_argument("--max-length", type=int, help="decoder tokens per text (default: the tokenized corpus's)")
    parser.add_argument("--json", help="write the figures here, with the commit and command")
    args = parser.parse_args()
    measured = provenance("benchmarks/query.py")

    from influcoder_dagster.core.config import IndexConfig
    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.data.tokenized import read_corpus, read_manifest
    from influcoder_dagster.data.tokens import tokenize_for_loss
    from influcoder_dagster.serving.index import build_index, current_encoder_folder, save_index, search
    from influcoder_dagster.serving.query_encoder import QueryEncoder
    from influcoder_dagster.student.encoder import encode, load_saved_student
    from influcoder_dagster.student.sketch import BASIS_FILE, Sketch
    from influcoder_dagster.teacher.base_model import base_model_record
    from influcoder_dagster.teacher.checkpoints import checkpoint_extractor, load_checkpoint_decoders
    from influcoder_dagster.teacher.gradients import compute_gradients
    from influcoder_dagster.teacher.projection import ProjectionSpec
    from influcoder_dagster.teacher.rankings_db import connect_readonly
    from influcoder_dagster.teacher.scoring import full_scores, stream_topk
    from influcoder_dagster.teacher.store import GradientStore, open_store

    paths = Paths(Path(args.home).resolve())
    if not paths.index_manifest.exists():
        sys.exit(f"{paths.home}: no index; run `influcoder demo` (or materialize every asset) first")
    index_encoder = current_encoder_folder(paths.index)
    real_store = open_store(paths)
    encoder = load_saved_student(index_encoder)
    served_encoder = QueryEncoder(index_encoder)
    base = base_model_record(paths)
    decoders = load_checkpoint_decoders(base)  # every training state the teacher scores, with its adapters
    tokenizer = decoders[-1][1]
    spec = ProjectionSpec.from_json(real_store.manifest["projection"])
    extractor = checkpoint_extractor(decoders, spec)  # a query's plain gradient
    requested = real_store.manifest.get("requested", {})  # stores from before the Adam flags have none
    pool = checkpoint_extractor(decoders, spec, adam=bool(requested.get("adam_precondition")),
                                adam_momentum=requested.get("adam_momentum", True))  # a pool row, as the store has it
    max_length = args.max_length or max(shard["max_length"] for shard in read_manifest(paths.corpus)["shards"].values())
    corpus = read_corpus(paths.corpus, columns=["sample_id", "text", "n_tokens"])
    real_ids, texts = corpus.column("sample_id").to_numpy(), corpus.column("text").to_pylist()
    real_rows = real_store.lookup(real_ids).astype(np.float32)
    con = connect_readonly(paths.home)
    heldout = [t for (t,) in con.execute("SELECT text FROM samples WHERE split = 'heldout' ORDER BY sample_id").fetchall()]
    queries = ([t for (t,) in con.execute("SELECT text FROM queries WHERE kind = 'user' ORDER BY query_id").fetchall()]
               + heldout[::max(1, len(heldout) // 30)])[:30]  # corpus samples no encoder trained on
    con.close()
    if args.real > len(texts):
        check = [i for i, n in enumerate(corpus.column("n_tokens").to_pylist()) if n >= 2][:32]
        again = compute_gradients(pool, tokenize_for_loss(tokenizer, [texts[i] for i in check], max_length), 16).numpy()
        agree = float(np.min(full_scores(again, real_rows[check]).diagonal()))
        if agree < 0.99:
            sys.exit(f"recomputed store rows disagree with the stored ones (cosine {agree:.3f}); is the home's base model current?")
        extra = more_docstrings(args.real - len(texts), set(texts))
        enc = tokenize_for_loss(tokenizer, extra, max_length)
        keep = [i for i, e in enumerate(enc) if len(e.input_ids) >= 2]
        extra, enc = [extra[i] for i in keep], [enc[i] for i in keep]
        print(f"real corpus: {len(texts)} samples + {len(extra)} docstrings (stored rows reproduced, min cosine {agree:.4f})")
        real_rows = np.concatenate([real_rows, compute_gradients(pool, enc, 16, progress=True).numpy()])
        real_ids = np.concatenate([real_ids, real_ids.max() + 1 + np.arange(len(extra))])
        texts = texts + extra
    basis = index_encoder / BASIS_FILE  # a gradient-sketch encoder: documents are their sketched rows
    sketch = Sketch.load(basis) if basis.exists() else None
    real_emb = sketch.documents(real_rows) if sketch is not None else encode(encoder, texts, "document")
    # The held-out queries leave the benchmark corpus, as a user's text is not in the training data:
    # otherwise each query's own sample tops the gradient path's list and any text encoder finds it.
    asked = set(queries)
    query_row = {t: real_rows[i] for i, t in enumerate(texts) if t in asked}
    stay = np.array([t not in asked for t in texts])
    real_ids, real_rows, real_emb = real_ids[stay], real_rows[stay], real_emb[stay]
    rng = np.random.default_rng(0)
    results = []
    for n in args.sizes:
        extra = max(0, n - len(real_ids))
        ids = np.concatenate([real_ids, np.arange(1, extra + 1, dtype=np.int64) * -1 + -(10**12)])
        with tempfile.TemporaryDirectory() as tmp:
            store = GradientStore.create(Path(tmp), {"synthetic": n, "dim": real_store.dim}, "bench")
            writer = store.writer("s", ids)
            sketched = []  # a gradient-sketch index's padding: the padding rows' own sketches, as the index stage makes them
            for i in range(0, len(ids), 8192):
                rows = np.arange(i, min(i + 8192, len(ids)))
                real = rows[rows < len(real_ids)]
                block = rng.standard_normal((len(rows), store.dim), dtype=np.float32) * float(real_rows.std())
                block[: len(real)] = real_rows[real]
                writer.write(rows, block)
                if sketch is not None:
                    sketched.append(sketch.documents(block[len(real):]))
            writer.finish()
            store.publish({"s": ""}, {}, ["s"])
            if sketch is not None:
                fake = np.concatenate(sketched)
            else:  # text embeddings' padding: clustered unit vectors
                centers = rng.standard_normal((256, real_emb.shape[1])).astype(np.float32)
                fake = centers[rng.integers(0, 256, extra)] + 0.8 * rng.standard_normal((extra, real_emb.shape[1])).astype(np.float32)
                fake /= np.linalg.norm(fake, axis=1, keepdims=True)
            emb = np.concatenate([real_emb, fake])
            exact = build_index(emb, ids, IndexConfig(kind="flat"))
            defaults = IndexConfig()
            compressed = build_index(emb, ids, IndexConfig(kind="ivf_sq8", nprobe=defaults.nprobe))
            served = compressed if len(ids) > defaults.flat_max else exact
            sizes = {}
            for name, index in (("flat", exact), ("ivf_sq8", compressed)):
                path = save_index(index, Path(tmp) / name, {"encoder_version": "bench", "dataset_version": str(n)},
                                  pa.table({"sample_id": pa.array(ids, pa.int64()), "text": [""] * len(ids), "source": [""] * len(ids),
                                            "row": pa.array([0] * len(ids), pa.int32())}))  # the index's own size only
                sizes[name] = path.stat().st_size / len(ids)
            times: dict[str, list[float]] = {"encoder": [], "encoder_torch": [], "gradient": []}
            rec: dict[str, list[float]] = {"compressed": [], "encoder": [], **{f"stored{d}": [] for d in args.rerank}}
            # Each path runs over all the queries in turn (its steady state, as a server answering
            # only that kind of query would be), rather than interleaved with the others, whose
            # scans of the store would evict the encoder from the caches.
            enc_tops, qvecs = [], []
            for text in queries:
                t = time.perf_counter()
                q = served_encoder.encode([text])
                _, enc_top = search(served, q, 10)
                times["encoder"].append(time.perf_counter() - t)
                enc_tops.append(enc_top[0])
                qvecs.append(q)
            for text in queries:
                t = time.perf_counter()
                search(served, encode(encoder, [text], "query"), 10)
                times["encoder_torch"].append(time.perf_counter() - t)
            # A gradient-sketch index's re-rank recalls with the query's sketched gradient (as the CLI
            # does); the encoder's candidates are measured beside it.
            sources = ["encoder", "sketch"] if sketch is not None else ["encoder"]
            rerank_tops: dict[str, list[np.ndarray]] = {}
            for source in sources:
                for depth in args.rerank:
                    key = f"{source}{depth}"
                    times[key], rerank_tops[key] = [], []
                    for text in queries:
                        t = time.perf_counter()
                        g = extractor.batch(tokenize_for_loss(tokenizer, [text], max_length)).numpy()
                        if source == "sketch":
                            cand = search(served, sketch.targets(g), depth, defaults.rerank_nprobe)[1][0]
                        else:
                            cand = search(served, served_encoder.encode([text]), depth)[1][0]
                        cand = cand[cand != -1]
                        s = full_scores(g, store.lookup(cand))[0]
                        rerank_tops[key].append(cand[np.argsort(-s)])
                        times[key].append(time.perf_counter() - t)
            for i, text in enumerate(queries):
                t = time.perf_counter()
                g = extractor.batch(tokenize_for_loss(tokenizer, [text], max_length)).numpy()
                top, _ = stream_topk(g, store.iter_blocks(4096), 10)
                times["gradient"].append(time.perf_counter() - t)
                if text in query_row:  # a held-out sample: its stored row's ranking, the kind the encoder learns
                    stored, _ = stream_topk(query_row[text][None], store.iter_blocks(4096), max(args.rerank))
                    for depth in args.rerank:
                        rec[f"stored{depth}"].append(len(set(top.ids[0][:10].tolist()) & set(stored.ids[0][:depth].tolist())) / 10)
                q = qvecs[i]
                rec["compressed"].append(overlap(search(exact, q, 10)[1][0], search(compressed, q, 10)[1][0]))
                rec["encoder"].append(overlap(top.ids[0], enc_tops[i]))
                for key, tops in rerank_tops.items():
                    rec.setdefault(key, []).append(overlap(top.ids[0], tops[i]))
            served_source = sources[-1]  # what the CLI's re-rank recalls with: the sketch when there is one
            head = f"{served_source}{args.rerank[0]}"
            results.append({
                "n": len(ids), "real_samples": len(real_ids), "served_index": "ivf_sq8" if served is compressed else "flat",
                "rerank_depth": args.rerank[0], "rerank_candidates": served_source,
                "encoder_backend": served_encoder.backend,
                "encoder_ms_p50": pct(times["encoder"], 50), "encoder_ms_p95": pct(times["encoder"], 95),
                "encoder_torch_ms_p50": pct(times["encoder_torch"], 50),
                "rerank_ms_p50": pct(times[head], 50), "gradient_ms_p50": pct(times["gradient"], 50),
                "index_bytes_per_sample": sizes["ivf_sq8" if served is compressed else "flat"],
                "flat_index_bytes_per_sample": sizes["flat"], "compressed_index_bytes_per_sample": sizes["ivf_sq8"],
                "store_bytes_per_sample": store.nbytes() / len(ids),
                "compressed_recall_at_10": float(np.mean(rec["compressed"])),
                "rerank_recovery_at_10": float(np.mean(rec[head])), "encoder_recovery_at_10": float(np.mean(rec["encoder"])),
                "rerank_by_candidates": {source: {str(d): {"ms_p50": pct(times[f"{source}{d}"], 50),
                                                           "recovery_at_10": float(np.mean(rec[f"{source}{d}"]))} for d in args.rerank}
                                         for source in sources},
                "stored_row_recovery_at_10": {str(d): float(np.mean(rec[f"stored{d}"])) for d in args.rerank},
                "stored_row_queries": len(rec[f"stored{args.rerank[0]}"]),
            })
    print(f"\n{len(queries)} queries; {len(real_ids):,} real samples; store dim {real_store.dim}; encoder {index_encoder} ({served_encoder.backend});"
          f" re-rank depth {args.rerank[0]}")
    print("| N | served index | encoder p50 / p95 ms | encoder via torch p50 ms | re-rank p50 ms | gradient p50 ms | gradient / encoder |"
          " index B/sample (flat / ivf_sq8) | store B/sample | store / served index | ivf_sq8 recall@10 |"
          " recovery@10: re-rank / encoder |")
    print("|---" * 12 + "|")
    for r in results:
        print(f"| {r['n']:,} | {r['served_index']} | {r['encoder_ms_p50']:.1f} / {r['encoder_ms_p95']:.1f} | {r['encoder_torch_ms_p50']:.1f}"
              f" | {r['rerank_ms_p50']:.1f}"
              f" | {r['gradient_ms_p50']:.1f} | {r['gradient_ms_p50'] / r['encoder_ms_p50']:.1f}x"
              f" | {r['flat_index_bytes_per_sample']:.0f} / {r['compressed_index_bytes_per_sample']:.0f} | {r['store_bytes_per_sample']:.0f}"
              f" | {r['store_bytes_per_sample'] / r['index_bytes_per_sample']:.1f}x | {r['compressed_recall_at_10']:.3f}"
              f" | {r['rerank_recovery_at_10']:.3f} / {r['encoder_recovery_at_10']:.3f} |")
    print("\nre-rank: p50 ms / recovery of the gradient path's top-10, per N, candidates and depth")
    for r in results:
        for source, by_depth in r["rerank_by_candidates"].items():
            print(f"  N = {r['n']:,}, {source} candidates: " + ", ".join(f"{d}: {v['ms_p50']:.1f} ms / {v['recovery_at_10']:.3f}"
                                                                        for d, v in by_depth.items()))
    print("\nthe same depths taken from a corpus query's stored-row ranking (the rankings the encoder learns;"
          " a perfect student's recovery), per N")
    for r in results:
        print(f"  N = {r['n']:,} ({r['stored_row_queries']} corpus queries): "
              + ", ".join(f"{d}: {v:.3f}" for d, v in r["stored_row_recovery_at_10"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps({**measured, "home": str(args.home), "sizes": results}, indent=2))


if __name__ == "__main__":
    main()
