"""Query latency and size: encoder + index, encoder + index + gradient re-rank, and the gradient-only path.

    influcoder demo                                   # once: the real encoder, decoder and corpus
    python benchmarks/query.py --home influcoder_home [--sizes 10000 100000] [--json PATH]

For each corpus size N, one run measures side by side, per query (p50/p95 over the queries):

* ``encoder``: embed the query with the index's encoder, search the FAISS index that
  ``index.kind = "auto"`` serves at that size (exact up to ``index.flat_max``, else ivf_sq8);
* ``rerank``: the same search for the top ``--rerank`` (100; several depths may be given, the
  first is the headline), then the query's projected gradient on the base model and exact
  cosines against those store rows;
* ``gradient``: the LESS-style path: the query's gradient, then a scan of the whole store.

The demo's real samples are padded to N with synthetic ones (clustered unit vectors for the
index, Gaussian rows for the gradient store) — fine for time and size, while the recovery
figures (share of the gradient path's top-10 that a method returns) come from the real queries.
``compressed_recall_at_10`` compares the ivf_sq8 index with the exact one on the same vectors.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    return len(set(a[:k].tolist()) & set(b[:k].tolist())) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="influcoder_home", help="a storage root where `influcoder demo` ran")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rerank", type=int, nargs="+", default=[100], help="candidates the index recalls for the re-rank")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from influcoder_dagster.atomic import read_json
    from influcoder_dagster.config import IndexConfig
    from influcoder_dagster.decoder import load_decoder, tokenize_for_loss
    from influcoder_dagster.distill import encode
    from influcoder_dagster.gradients import GradientExtractor
    from influcoder_dagster.index import build_index, save_index, search
    from influcoder_dagster.paths import Paths
    from influcoder_dagster.projection import ProjectionSpec
    from influcoder_dagster.scoring import full_scores, stream_topk
    from influcoder_dagster.store import GradientStore
    from influcoder_dagster.rankings_db import connect_readonly
    from influcoder_dagster.tokenized import read_corpus

    paths = Paths(Path(args.home).resolve())
    if not paths.index_encoder.exists():
        sys.exit(f"{paths.home}: no index; run `influcoder demo` (or materialize every asset) first")
    real_store = GradientStore.open(Path(read_json(paths.gradients_pointer)["root"]))
    encoder = SentenceTransformer(str(paths.index_encoder), device="cpu")
    base = read_json(paths.base_model_pointer)
    model, tokenizer = load_decoder(base["path"], base.get("adapter"))
    extractor = GradientExtractor(model, ProjectionSpec.from_json(real_store.manifest["projection"]), tokenizer.pad_token_id)
    corpus = read_corpus(paths.corpus, columns=["sample_id", "text"])
    real_ids, texts = corpus.column("sample_id").to_numpy(), corpus.column("text").to_pylist()
    real_emb = encode(encoder, texts, "document")
    real_rows = real_store.lookup(real_ids)
    con = connect_readonly(paths.home)
    probes = [t for (t,) in con.execute("SELECT text FROM queries WHERE kind = 'user' ORDER BY query_id").fetchall()]
    con.close()
    queries = (probes + texts[::max(1, len(texts) // 30)])[:30]
    rng = np.random.default_rng(0)
    results = []
    for n in args.sizes:
        extra = max(0, n - len(real_ids))
        centers = rng.standard_normal((256, real_emb.shape[1])).astype(np.float32)
        fake = centers[rng.integers(0, 256, extra)] + 0.8 * rng.standard_normal((extra, real_emb.shape[1])).astype(np.float32)
        emb = np.concatenate([real_emb, fake / np.linalg.norm(fake, axis=1, keepdims=True)])
        ids = np.concatenate([real_ids, np.arange(1, extra + 1, dtype=np.int64) * -1 + -(10**12)])
        with tempfile.TemporaryDirectory() as tmp:
            store = GradientStore.create(Path(tmp), {"synthetic": n, "dim": real_store.dim}, "bench")
            writer = store.writer("s", ids)
            for i in range(0, len(ids), 8192):
                rows = np.arange(i, min(i + 8192, len(ids)))
                real = rows[rows < len(real_ids)]
                block = rng.standard_normal((len(rows), store.dim), dtype=np.float32) * float(real_rows.std())
                block[: len(real)] = real_rows[real]
                writer.write(rows, block)
            writer.finish()
            store.publish({"s": ""}, {}, ["s"])
            exact = build_index(emb, ids, kind="flat")
            defaults = IndexConfig()
            compressed = build_index(emb, ids, kind="ivf_sq8", nprobe=defaults.nprobe)
            served = compressed if len(ids) > defaults.flat_max else exact
            sizes = {}
            for name, index in (("flat", exact), ("ivf_sq8", compressed)):
                path = save_index(index, Path(tmp) / name, {"encoder_version": "bench", "dataset_version": str(n)})
                sizes[name] = path.stat().st_size / len(ids)
            times: dict[str, list[float]] = {"encoder": [], "gradient": [], **{f"rerank{d}": [] for d in args.rerank}}
            rec: dict[str, list[float]] = {"compressed": [], "encoder": [], **{f"rerank{d}": [] for d in args.rerank}}
            # Each path runs over all the queries in turn (its steady state, as a server answering
            # only that kind of query would be), rather than interleaved with the others, whose
            # scans of the store would evict the encoder from the caches.
            enc_tops, qvecs = [], []
            for text in queries:
                t = time.perf_counter()
                q = encode(encoder, [text], "query")
                _, enc_top = search(served, q, 10)
                times["encoder"].append(time.perf_counter() - t)
                enc_tops.append(enc_top[0])
                qvecs.append(q)
            rerank_tops: dict[int, list[np.ndarray]] = {d: [] for d in args.rerank}
            for depth in args.rerank:
                for text in queries:
                    t = time.perf_counter()
                    q = encode(encoder, [text], "query")
                    _, cand = search(served, q, depth)
                    g = extractor.batch(tokenize_for_loss(tokenizer, [text], 128)).numpy()
                    s = full_scores(g, store.lookup(cand[0]))[0]
                    rerank_tops[depth].append(cand[0][np.argsort(-s)])
                    times[f"rerank{depth}"].append(time.perf_counter() - t)
            for i, text in enumerate(queries):
                t = time.perf_counter()
                g = extractor.batch(tokenize_for_loss(tokenizer, [text], 128)).numpy()
                top, _ = stream_topk(g, store.iter_blocks(4096), 10)
                times["gradient"].append(time.perf_counter() - t)
                q = qvecs[i]
                rec["compressed"].append(overlap(search(exact, q, 10)[1][0], search(compressed, q, 10)[1][0]))
                rec["encoder"].append(overlap(top.ids[0], enc_tops[i]))
                for depth in args.rerank:
                    rec[f"rerank{depth}"].append(overlap(top.ids[0], rerank_tops[depth][i]))
            head = args.rerank[0]
            results.append({
                "n": len(ids), "served_index": "ivf_sq8" if served is compressed else "flat", "rerank_depth": head,
                "encoder_ms_p50": pct(times["encoder"], 50), "encoder_ms_p95": pct(times["encoder"], 95),
                "rerank_ms_p50": pct(times[f"rerank{head}"], 50), "gradient_ms_p50": pct(times["gradient"], 50),
                "index_bytes_per_sample": sizes["ivf_sq8" if served is compressed else "flat"],
                "flat_index_bytes_per_sample": sizes["flat"], "compressed_index_bytes_per_sample": sizes["ivf_sq8"],
                "store_bytes_per_sample": store.nbytes() / len(ids),
                "compressed_recall_at_10": float(np.mean(rec["compressed"])),
                "rerank_recovery_at_10": float(np.mean(rec[f"rerank{head}"])), "encoder_recovery_at_10": float(np.mean(rec["encoder"])),
                "rerank_by_depth": {str(d): {"ms_p50": pct(times[f"rerank{d}"], 50), "recovery_at_10": float(np.mean(rec[f"rerank{d}"]))}
                                    for d in args.rerank},
            })
    print(f"\n{len(queries)} queries; store dim {real_store.dim}; encoder {paths.index_encoder}; re-rank depth {args.rerank[0]}")
    print("| N | served index | encoder p50 / p95 ms | re-rank p50 ms | gradient p50 ms | gradient / encoder |"
          " index B/sample (flat / ivf_sq8) | store B/sample | store / served index | ivf_sq8 recall@10 |"
          " recovery@10: re-rank / encoder |")
    print("|---" * 11 + "|")
    for r in results:
        print(f"| {r['n']:,} | {r['served_index']} | {r['encoder_ms_p50']:.1f} / {r['encoder_ms_p95']:.1f} | {r['rerank_ms_p50']:.1f}"
              f" | {r['gradient_ms_p50']:.1f} | {r['gradient_ms_p50'] / r['encoder_ms_p50']:.1f}x"
              f" | {r['flat_index_bytes_per_sample']:.0f} / {r['compressed_index_bytes_per_sample']:.0f} | {r['store_bytes_per_sample']:.0f}"
              f" | {r['store_bytes_per_sample'] / r['index_bytes_per_sample']:.1f}x | {r['compressed_recall_at_10']:.3f}"
              f" | {r['rerank_recovery_at_10']:.3f} / {r['encoder_recovery_at_10']:.3f} |")
    if len(args.rerank) > 1:
        print("\nre-rank depth: p50 ms / recovery of the gradient path's top-10, per N")
        for r in results:
            print(f"  N = {r['n']:,}: " + ", ".join(f"{d}: {v['ms_p50']:.1f} ms / {v['recovery_at_10']:.3f}"
                                                 for d, v in r["rerank_by_depth"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
