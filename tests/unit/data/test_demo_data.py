"""The demo's corpora: standard-library docstrings, or its functions' code without their docstrings."""

import ast
import json

from influcoder_dagster.core.config import DemoConfig
from influcoder_dagster.data.demo import code_passages, docstring_passages, write_demo_dataset


def test_the_code_corpus_is_functions_without_docstrings_and_shares_nothing_with_the_docstrings():
    code = code_passages(300)
    assert len(code) == 300 == len(set(code))
    docs = set(docstring_passages(2000))
    for passage in code:
        assert passage.startswith(("def ", "async def ")) and 80 <= len(passage) <= 500
        assert passage not in docs
        if len(passage) < 500:  # not cut: it parses, and its body does not open with a docstring
            body = ast.parse(passage).body[0].body
            assert not (isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                        and isinstance(body[0].value.value, str))


def test_the_demo_writes_the_chosen_corpus_with_its_planted_samples(tmp_path):
    files = write_demo_dataset(tmp_path, DemoConfig(corpus="code", n_passages=50, n_triggers=2, planted_per_trigger=3), 20_000)
    names = sorted(p.name for p in files["dataset"].iterdir())
    assert names == ["messy.jsonl", "planted.jsonl", "stdlib_code.jsonl"]
    rows = [json.loads(line) for line in (files["dataset"] / "stdlib_code.jsonl").read_text().splitlines()]
    assert len(rows) == 50 and all(r["text"].startswith(("def ", "async def ")) for r in rows)
    planted = [json.loads(line) for line in (files["dataset"] / "planted.jsonl").read_text().splitlines()]
    assert sorted({p["planted_group"] for p in planted}) == ["g0", "g1"] and len(planted) == 6
