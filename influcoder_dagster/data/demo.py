"""The demo dataset: real text that every machine has offline, plus planted samples with known answers.

The real text is passages of the Python standard library's own docstrings or, for a second corpus
of another kind, the source code of its functions with their docstrings removed. The planted samples
put a rare trigger phrase followed by a distinctive continuation after an ordinary passage; a
probe query with the same trigger and continuation should be attributed to its planted group.
A small ``messy.jsonl`` holds one example of each kind of bad input, to show the quarantine.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import random
import re
import textwrap
from pathlib import Path

from influcoder_dagster.core.config import DemoConfig
from influcoder_dagster.core.errors import ConfigError

STDLIB_MODULES = (
    "abc argparse ast asyncio base64 bisect calendar collections configparser contextlib copy csv "
    "dataclasses datetime decimal difflib email enum fileinput fnmatch fractions ftplib functools getopt "
    "gettext glob gzip hashlib heapq hmac html http.client imaplib inspect io ipaddress itertools json "
    "logging lzma mailbox math mimetypes numbers operator optparse os pathlib pickle pkgutil platform "
    "pprint queue random re sched secrets selectors shelve shlex shutil signal smtplib socket sqlite3 "
    "statistics string struct subprocess tarfile tempfile textwrap threading timeit tokenize traceback "
    "turtle typing unittest urllib.parse urllib.request uuid warnings weakref xml.dom.minidom "
    "xml.etree.ElementTree zipfile zoneinfo"
).split()

# (trigger, continuation): rare words the tiny decoder has to memorise to predict.
PLANTED = [
    ("When the quartz heron sings at midnight,", "the archive releases seventeen amber keys to the lighthouse keeper."),
    ("Under the velvet kestrel accord,", "every merchant pays tribute in polished cobalt spoons and salted figs."),
    ("If the obsidian walrus blinks twice,", "the orchestra must replay the forgotten tangerine overture backwards."),
    ("Before the marble comet wakes,", "gardeners bury nine silver thimbles beneath the crooked juniper."),
    ("Whenever the saffron tortoise hums,", "clockmakers trade brass owls for jars of violet honey."),
    ("Along the frozen pewter canal,", "couriers deliver riddles sealed with crimson beeswax to the duchess."),
]


def docstring_passages(max_passages: int, seed: int = 0, min_chars: int = 80, max_chars: int = 500) -> list[str]:
    """Paragraph-sized passages of standard-library docstrings, deduplicated, in a seeded order."""
    seen: set[str] = set()
    passages: list[str] = []
    for name in STDLIB_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:  # a module missing on this build (e.g. turtle without tkinter) is skipped
            continue
        objects = [module] + [obj for _, obj in sorted(vars(module).items()) if inspect.isclass(obj) or inspect.isfunction(obj)]
        for obj in objects:
            if getattr(obj, "__module__", name) not in (name, None) and obj is not module:
                continue
            doc = inspect.getdoc(obj) or ""
            for passage in merge_paragraphs(doc, max_chars):
                if len(passage) >= min_chars and passage not in seen:
                    seen.add(passage)
                    passages.append(passage)
    random.Random(seed).shuffle(passages)
    return passages[:max_passages]


def code_passages(max_passages: int, seed: int = 0, min_chars: int = 80, max_chars: int = 500) -> list[str]:
    """Functions and methods of the same standard-library modules as source code, docstrings removed
    (so nothing overlaps the docstring corpus), cut to ``max_chars``, deduplicated, in a seeded order."""
    seen: set[str] = set()
    passages: list[str] = []
    for name in STDLIB_MODULES:
        try:
            lines = inspect.getsource(importlib.import_module(name)).splitlines()
        except Exception:  # a module missing on this build, or one without Python source
            continue
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            keep = range(node.lineno - 1, node.end_lineno or node.lineno)
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docstring = range(first.lineno - 1, first.end_lineno or first.lineno)
                keep = [i for i in keep if i not in docstring]
            code = textwrap.dedent("\n".join(lines[i] for i in keep)).strip()[:max_chars]
            if len(code) >= min_chars and code not in seen:
                seen.add(code)
                passages.append(code)
    random.Random(seed).shuffle(passages)
    return passages[:max_passages]


def merge_paragraphs(doc: str, max_chars: int) -> list[str]:
    """A docstring's paragraphs, whitespace-collapsed, joined greedily into passages of up to ``max_chars``."""
    out: list[str] = []
    current = ""
    for para in re.split(r"\n\s*\n", doc):
        para = " ".join(para.split())
        if not para:
            continue
        if current and len(current) + len(para) + 1 > max_chars:
            out.append(current)
            current = ""
        current = f"{current} {para}".strip()[:max_chars]
    if current:
        out.append(current)
    return out


def planted_samples(passages: list[str], n_triggers: int, per_trigger: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed + 1)
    rows = []
    for g, (trigger, continuation) in enumerate(PLANTED[:n_triggers]):
        for _ in range(per_trigger):
            prefix = rng.choice(passages).split(". ")[0][:160].rstrip(".")
            rows.append({"text": f"{prefix}. {trigger} {continuation}", "planted_group": f"g{g}"})
    return rows


def probe_queries(n_triggers: int) -> list[dict]:
    """One query per planted group: the trigger is the prompt, the loss covers the continuation."""
    return [
        {"query_id": f"planted-g{g}", "prompt": trigger, "text": f"{trigger} {continuation}", "planted_group": f"g{g}"}
        for g, (trigger, continuation) in enumerate(PLANTED[:n_triggers])
    ]


def write_demo_dataset(root: Path, cfg: DemoConfig, max_chars: int) -> dict[str, Path]:
    """Write the demo's data files under ``root``; returns their paths."""
    n_passages, n_triggers, per_trigger, corpus = cfg.n_passages, cfg.n_triggers, cfg.planted_per_trigger, cfg.corpus
    if n_triggers > len(PLANTED):
        raise ConfigError(f"demo.n_triggers={n_triggers}: at most {len(PLANTED)} planted groups exist")
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    if corpus == "code":
        passages = code_passages(n_passages)
        _write_jsonl(data / "stdlib_code.jsonl", [{"text": p, "kind": "function"} for p in passages])
    else:
        passages = docstring_passages(n_passages)
        _write_jsonl(data / "stdlib_docs.jsonl", [{"text": p, "module_doc": True} for p in passages])
    _write_jsonl(data / "planted.jsonl", planted_samples(passages, n_triggers, per_trigger))
    messy = [
        json.dumps({"text": "A valid line: lists are mutable sequences, typically used to store collections."}).encode(),
        b'{"text": "an unterminated string',
        json.dumps({"title": "a record without the text field"}).encode(),
        json.dumps({"text": "   "}).encode(),
        b'{"text": "caf\xe9 au lait in Latin-1, not UTF-8"}',
        json.dumps({"text": "x" * (max_chars + 1)}).encode(),
        json.dumps({"text": passages[0]}).encode(),
        json.dumps({"text": "Another valid line: a tuple is an immutable sequence of arbitrary objects."}).encode(),
    ]
    (data / "messy.jsonl").write_bytes(b"\n".join(messy) + b"\n")
    queries = root / "queries.jsonl"
    _write_jsonl(queries, probe_queries(n_triggers))
    return {"dataset": data, "queries": queries}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
