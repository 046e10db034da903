"""How much of the exact influence does the store keep? Sketched against exact head-gradient cosines.

    python benchmarks/projection_exact.py --home WORK/home --corpus DATA --name NAME [--n 300]
        [--dims 2048 8192 32768] [--json benchmarks/results/projection_exact.json]

The default teacher scores cosines of the whitened output head's per-sample gradients
(``sum_t S^-1/2 (p_t - y_t) h_t^T``, ``projection.target = "head"``), CountSketched to
``projection.dim`` per checkpoint. On the first ``--n`` texts of ``--corpus`` (the JSONL shards of
``real_corpus.py`` or ``fidelity.py``'s data folder), with the final decoder and logit Fisher of a
built home (its ``base_model`` stage), this compares the sketched cosines with the exact ones,
computed without forming any gradient: ``<G_a, G_b> = sum_{t in a, s in b} (delta_t . delta_s)(h_t . h_s)``.
For each width and both hashes (``full``: every coordinate its own bucket, the store's hash up to
4M coordinates; ``factored``: the TensorSketch the store uses above it), over two projection seeds:

* ``spearman_vs_exact`` / ``top10_vs_exact``: per anchor (every sample against the n - 1 others),
  the sketched cosines' Spearman with the exact ones and the share of the exact top-10 they return;
* ``spearman_seed_vs_seed`` / ``top10_seed_vs_seed``: the same between two seeds (what
  ``fidelity.py`` calls the teacher's noise ceiling);
* ``ms_per_sample``: extraction through the pipeline's own ``GradientExtractor`` (forward pass
  included), batches of the configured size.

It also measures a representation the store does not use yet, a per-token factor store: each loss
token's ``--factor-k`` largest whitened logit-gradient entries (ids and values) and its hidden state
in a rank-``--factor-rank`` basis (the top singular directions of the *next* ``--n`` texts' hidden
states, so no measured sample fits it), with the same agreement figures against the exact cosines
and its bytes per sample (4-byte ids, 2-byte values).

One corpus's row replaces the JSON's row of the same ``--name``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.planted import provenance  # noqa: E402

K = 10


def head_factors(model: Any, pad_token_id: int, samples: list[Any], scale: Any, batch_size: int = 16) -> Any:
    """Every loss token's whitened logit gradient and head input, and its sample's index (batches concatenated)."""
    import torch

    from influcoder_dagster.teacher.head_exact import HeadFactors, TokenFactors

    head, parts = HeadFactors(model, pad_token_id, scale), []
    for i in range(0, len(samples), batch_size):
        parts.append(head.of(samples[i : i + batch_size]))
    owner = torch.cat([p.owner + i * batch_size for i, p in enumerate(parts)])
    return TokenFactors(torch.cat([p.deltas for p in parts]), torch.cat([p.hidden for p in parts]), owner, len(samples))


def exact_cosines(factors: Any) -> np.ndarray:
    """Samples' exact gradient cosines from their tokens' factors (a Gram matrix, never a gradient)."""
    from influcoder_dagster.teacher.head_exact import inner_products

    return cosines(inner_products(factors, factors))


def factor_cosines(factors: Any, k: int, basis: Any) -> np.ndarray:
    """Cosines from each token's ``k`` largest logit-gradient entries and its hidden state in ``basis``
    (both sides compressed, as the store keeps a sample: ``teacher/head_factors.py``)."""
    import torch

    from influcoder_dagster.teacher.head_exact import TokenFactors
    from influcoder_dagster.teacher.head_factors import compress

    c = compress(factors, basis, k)
    sparse = torch.zeros_like(factors.deltas).scatter_(1, c.ids, c.values)
    return exact_cosines(TokenFactors(sparse, c.coords, c.owner, c.n))


def cosines(gram: Any) -> np.ndarray:
    gram = np.asarray(gram, dtype=np.float64)
    norm = np.sqrt(np.clip(np.diag(gram), 1e-30, None))
    return gram / norm[:, None] / norm[None, :]


def agreement(scores: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Mean per-anchor Spearman and top-10 overlap, every sample an anchor, itself left out."""
    from influcoder_dagster.student.metrics import per_query_spearman

    n = len(scores)
    others = ~np.eye(n, dtype=bool)
    s, r = scores[others].reshape(n, n - 1), reference[others].reshape(n, n - 1)
    tops = [len(set(np.argsort(-a)[:K]) & set(np.argsort(-b)[:K])) / K for a, b in zip(s, r, strict=True)]
    return float(per_query_spearman(r, s).mean()), float(np.mean(tops))


def sketched(model: Any, tokenizer: Any, samples: list[Any], scale: Any, dim: int, seed: int, factored: bool,
             batch_size: int) -> tuple[np.ndarray, float]:
    """(sketched cosines, ms per sample) through the pipeline's extractor."""
    from influcoder_dagster.teacher.gradients import GradientExtractor, compute_gradients, trackable_modules
    from influcoder_dagster.teacher.projection import plan_projection

    spec = plan_projection("countsketch", dim, seed, trackable_modules(model, "head"), factored_above=0 if factored else 1 << 62)
    extractor = GradientExtractor(model, spec, tokenizer.pad_token_id, output_scale={spec.modules[0].name: scale})
    start = time.perf_counter()
    rows = compute_gradients(extractor, samples, batch_size).double().numpy()
    return cosines(rows @ rows.T), 1000 * (time.perf_counter() - start) / len(samples)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from influcoder_dagster.core.paths import Paths
    from influcoder_dagster.data.tokens import tokenize_for_loss
    from influcoder_dagster.teacher.base_model import base_model_record
    from influcoder_dagster.teacher.checkpoints import checkpoints_of
    from influcoder_dagster.teacher.decoder import load_decoder
    from influcoder_dagster.teacher.head_factors import fit_basis
    from influcoder_dagster.teacher.logit_fisher import read_row_scale

    final = checkpoints_of(base_model_record(Paths(args.home)))[-1]  # the base_model stage's final state
    model, tokenizer = load_decoder(final.path)
    scale = torch.from_numpy(read_row_scale(final.logit_fisher))
    texts = [json.loads(line)["text"] for f in sorted(args.corpus.glob("*.jsonl")) for line in f.open()][: 2 * args.n]
    encoded = [s for s in tokenize_for_loss(tokenizer, texts, args.max_length) if len(s.input_ids) >= 2]
    samples, fit_samples = encoded[: args.n], encoded[args.n :]
    n, head = len(samples), model.get_output_embeddings()
    start = time.perf_counter()
    factors = head_factors(model, tokenizer.pad_token_id, samples, scale)
    exact = exact_cosines(factors)
    row: dict[str, Any] = {**provenance("benchmarks/projection_exact.py"), "n_samples": n,
                           "head_coordinates": head.in_features * head.out_features, "exact_s": round(time.perf_counter() - start, 1),
                           "widths": {}, "factors": {}}
    for rank in args.factor_rank:
        basis = fit_basis(head_factors(model, tokenizer.pad_token_id, fit_samples, scale).hidden, rank)
        for k in args.factor_k:
            rho, top = agreement(factor_cosines(factors, k, basis), exact)
            bytes_per_sample = len(factors.owner) / n * (6 * k + 2 * rank)
            row["factors"][f"top{k}_rank{rank}"] = {"spearman_vs_exact": rho, "top10_vs_exact": top, "bytes_per_sample": round(bytes_per_sample)}
            print(f"factors top-{k} rank {rank}: {row['factors'][f'top{k}_rank{rank}']}", flush=True)
    for dim in args.dims:
        for hashing in ("full", "factored"):
            (a, ms), (b, _) = (sketched(model, tokenizer, samples, scale, dim, seed, hashing == "factored", args.batch_size) for seed in (0, 1))
            (rho_a, top_a), (rho_b, top_b), (rho_ab, top_ab) = agreement(a, exact), agreement(b, exact), agreement(b, a)
            row["widths"].setdefault(str(dim), {})[hashing] = {
                "spearman_vs_exact": (rho_a + rho_b) / 2, "top10_vs_exact": (top_a + top_b) / 2,
                "spearman_seed_vs_seed": rho_ab, "top10_seed_vs_seed": top_ab, "ms_per_sample": round(ms, 2)}
            print(f"{dim:>6} {hashing:>8}: {row['widths'][str(dim)][hashing]}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a built home (its base_model stage)")
    parser.add_argument("--corpus", type=Path, required=True, help="a folder of JSONL shards")
    parser.add_argument("--name", required=True)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--dims", type=int, nargs="+", default=[2048, 8192, 32768])
    parser.add_argument("--factor-k", type=int, nargs="+", default=[8, 32], help="logit-gradient entries kept per token")
    parser.add_argument("--factor-rank", type=int, nargs="+", default=[32], help="rank of the hidden-state basis")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/projection_exact.json"))
    args = parser.parse_args()
    row = {"name": args.name, **measure(args)}
    old = json.loads(args.json.read_text()) if args.json.exists() else {"corpora": []}
    old["corpora"] = [r for r in old["corpora"] if r["name"] != args.name] + [row]
    args.json.write_text(json.dumps(old, indent=1) + "\n")


if __name__ == "__main__":
    main()
