"""A real corpus of 100,000+ short texts that any Debian machine builds offline, from text nobody on the team wrote.

    python benchmarks/real_corpus.py --out DIR [--n 100000] [--shard-rows 10000] [--seed 0]

Sources (each cut into passages of 80-600 characters):

* ``man``: the English manual pages (``/usr/share/man/man1`` .. ``man8``), their roff source reduced
  to prose, paragraphs merged into passages;
* ``pydoc``: the docstrings of every third-party Python package installed beside this interpreter
  (``site-packages``, parsed with :mod:`ast`, never imported), paragraphs merged into passages. The
  standard library is left out: the demo corpus is made of its docstrings.

Every text is kept once; templates (a 64-character opening shared by more than 5 passages, such as
the flags section every ``gcloud`` page repeats) are dropped, and no family of pages or packages
(``gcloud``, ``torch``, ...) gives more than 10 % of the corpus. The sources then share ``--n``
as evenly as their sizes allow, in a ``--seed`` order, written as JSONL shards of ``--shard-rows``
lines (``{"text", "source", "origin"}``: the page or package a passage came from),
``real-000.jsonl``, ... It prints the count per source, the files and a SHA-256 of the
whole corpus's text, so two machines can tell whether they built the same corpus (they do when the
apt lists and installed packages are the same). Nothing is synthetic; nothing is padded.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import random
import re
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from influcoder_dagster.data.demo import merge_paragraphs  # noqa: E402

MIN_CHARS, MAX_CHARS = 80, 600


MAN_ROOT = Path("/usr/share/man")
_ROFF_ESCAPES = re.compile(r"\\(f[BIRPC0-9]|f\(..|f\[[^]]*\]|\(..|\*\(..|\*\[[^]]*\]|\*.|s[+-]?\d|[&|^%:])")
_BREAKS = {"SH", "SS", "PP", "P", "LP", "TP", "IP", "HP", "sp", "br", "RS", "RE", "nf", "fi", "EX", "EE", "TH"}


def _roff_text(source: str) -> list[str]:
    """The paragraphs of a man page's roff source: macros dropped (their words kept for font macros),
    escapes removed, definitions (``.de`` ... ``..``) and conditionals skipped. Not a roff renderer,
    which would cost ~50 ms a page through groff: enough to recover the prose."""
    paragraphs, current, in_definition = [], [], False
    for line in source.splitlines():
        if in_definition:
            in_definition = line.strip() != ".."
            continue
        if line.startswith((".\\\"", "'\\\"", '.\\"')):
            continue
        if line.startswith((".", "'")):
            macro, _, rest = line[1:].strip().partition(" ")
            if macro in ("de", "de1", "am"):
                in_definition = True
            elif macro in _BREAKS:
                paragraphs.append(" ".join(current))
                current = [rest.replace('"', "")] if macro in ("SH", "SS") and rest else []
            elif macro in ("B", "I", "BR", "IR", "RB", "RI", "BI", "IB", "SM", "SB"):
                current.append(rest.replace('"', ""))
            continue
        current.append(line)
    paragraphs.append(" ".join(current))
    return [" ".join(_ROFF_ESCAPES.sub("", p).replace("\\-", "-").replace("\\e", "\\").replace("\\ ", " ").split())
            for p in paragraphs]


def man_pages(root: Path = MAN_ROOT) -> Iterator[tuple[str, str]]:
    """(page, passage) for every English man page (``man1`` .. ``man8``), symlinked duplicates read once."""
    seen: set[Path] = set()
    for path in sorted(root.glob("man[1-8]/*")):
        real = path.resolve()
        if real in seen or not real.is_file():
            continue
        seen.add(real)
        try:
            raw = gzip.decompress(real.read_bytes()) if real.suffix == ".gz" else real.read_bytes()
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        text = raw.decode("utf-8", "replace")
        if text.startswith(".so "):  # an alias page: the page it names is read on its own
            continue
        page = path.name.removesuffix(".gz")
        for passage in merge_paragraphs("\n\n".join(_roff_text(text)), MAX_CHARS):
            yield page, passage


def site_packages() -> list[Path]:
    return sorted({Path(p) for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]) if Path(p).is_dir()})


def python_docstrings(roots: list[Path]) -> Iterator[tuple[str, str]]:
    """(top-level package, passage) for the docstrings of modules, classes and functions under ``roots``."""
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            try:
                tree = ast.parse(path.read_bytes())
            except (SyntaxError, ValueError, RecursionError, OSError):  # a file this Python cannot parse is left out
                continue
            package = path.relative_to(root).parts[0].removesuffix(".py")
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    doc = ast.get_docstring(node)
                    for passage in merge_paragraphs(doc or "", MAX_CHARS):
                        yield package, passage


BOILERPLATE_REPEATS = 5  # a passage whose first 64 characters open more passages than this is a template
FAMILY_SHARE = 0.1  # no package or command family gives more than this share of the corpus


def family(origin: str) -> str:
    """``gcloud_alpha_..._update.1`` -> ``gcloud``; ``torch`` -> ``torch``: what one tool or project wrote."""
    return re.split(r"[_.:-]", origin, maxsplit=1)[0].lower()


def collect(sources: dict[str, Iterator[tuple[str, str]]]) -> list[dict[str, str]]:
    """Every passage of MIN_CHARS..MAX_CHARS characters, once, without templates (see BOILERPLATE_REPEATS)."""
    seen: set[str] = set()
    rows = []
    for source, items in sources.items():
        for origin, text in items:
            text = text[:MAX_CHARS]
            if len(text) >= MIN_CHARS and text not in seen and not re.fullmatch(r"[\W\d_]+", text):
                seen.add(text)
                rows.append({"text": text, "source": source, "origin": origin})
    openings = Counter(r["text"][:64] for r in rows)
    return [r for r in rows if openings[r["text"][:64]] <= BOILERPLATE_REPEATS]


def balanced(rows: list[dict[str, str]], n: int, seed: int) -> list[dict[str, str]]:
    """``n`` rows in a seeded order: at most FAMILY_SHARE of ``n`` from one family, then as even a share
    of each source as their sizes allow."""
    rng, cap = random.Random(seed), int(FAMILY_SHARE * n)
    rows = list(rows)
    rng.shuffle(rows)
    per_family: Counter[str] = Counter()
    by_source: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        per_family[family(r["origin"])] += 1
        if per_family[family(r["origin"])] <= cap:
            by_source.setdefault(r["source"], []).append(r)
    if sum(map(len, by_source.values())) < n:
        sys.exit(f"only {sum(map(len, by_source.values()))} passages on this machine, fewer than --n {n}")
    chosen, left = [], n
    for i, (_, items) in enumerate(sorted(by_source.items(), key=lambda kv: len(kv[1]))):  # smallest first
        take = min(len(items), left // (len(by_source) - i))
        chosen += items[:take]
        left -= take
    rng.shuffle(chosen)
    return chosen


def write_corpus(rows: list[dict[str, str]], out: Path, shard_rows: int) -> tuple[list[Path], str]:
    out.mkdir(parents=True, exist_ok=True)
    digest, files = hashlib.sha256(), []
    for i in range(0, len(rows), shard_rows):
        path = out / f"real-{i // shard_rows:03d}.jsonl"
        chunk = rows[i : i + shard_rows]
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chunk), encoding="utf-8")
        for r in chunk:
            digest.update(r["text"].encode() + b"\0")
        files.append(path)
    return files, digest.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--shard-rows", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = balanced(collect({"man": man_pages(), "pydoc": python_docstrings(site_packages())}), args.n, args.seed)
    files, digest = write_corpus(rows, args.out, args.shard_rows)
    counts = Counter(r["source"] for r in rows)
    families = Counter(f"{r['source']}:{family(r['origin'])}" for r in rows).most_common(10)
    print(json.dumps({"n": len(rows), "per_source": dict(sorted(counts.items())), "largest_families": dict(families),
                      "files": len(files),
                      "text_sha256": digest, "out": str(args.out)}, indent=1))


if __name__ == "__main__":
    main()
