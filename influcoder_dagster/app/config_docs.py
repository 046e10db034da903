"""The configuration reference, rendered as Markdown from the config model itself.

Types, defaults and descriptions come from the pydantic fields in
:mod:`influcoder_dagster.core.config`, so the reference cannot drift from the code. Regenerate it with::

    python -m influcoder_dagster.app.config_docs > docs/configuration.md

Only the config module is imported (no torch, no Dagster): this runs in a fraction of a second.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from influcoder_dagster.core.config import Config

COMMAND = "python -m influcoder_dagster.app.config_docs > docs/configuration.md"

INTRO = (
    "Influcoder reads one TOML file: the path given with `--config PATH`, else the one in the "
    "`INFLUCODER_CONFIG` environment variable; with neither, every option takes its default. Every key is "
    "optional, and an unknown key or section is an error that names it. Relative `home`, `dataset.path`, "
    "`dataset.queries_path` and `model.base_model` paths are resolved against the config file's folder. "
    "`INFLUCODER_HOME`, when set, overrides `home` (the storage root, `./influcoder_home` by default). "
    "`influcoder.example.toml` at the repository root lists every key with its default."
)

SECTION_INTROS = {
    "dataset": "The corpus to attribute to, and the user queries.",
    "demo": "The built-in demo corpus, used when `dataset.path` is unset.",
    "model": "The decoder whose gradients define influence: a local model, or a tiny one trained on the corpus.",
    "projection": "Per-sample gradients and their random projection into the gradient store.",
    "rankings": "The teacher: influence rankings scored against the projected gradient store.",
    "encoder": "The student: a text encoder trained to reproduce the teacher's rankings.",
    "index": "The vector index that serves encoder queries.",
    "compute": "Where per-shard work runs: this process, or Ray tasks on a cluster (the `ray` extra).",
}


def _type_name(annotation: Any) -> str:
    """A field's type as a user writes it in TOML; ``None`` (unset) is left out, as TOML cannot say it."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(json.dumps(v) for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " | ".join(names)
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> str:
    marks = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    found = [f"{mark} {getattr(m, attr)}" for m in field.metadata for attr, mark in marks.items()
             if getattr(m, attr, None) is not None]
    return f" ({', '.join(found)})" if found else ""


def _default(value: Any) -> str:
    """The default in TOML syntax; ``None`` is ``unset``."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{json.dumps(value)}`"
    return f"`{value!r}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(fields: dict[str, FieldInfo]) -> list[str]:
    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in fields.items():
        kind = _cell(_type_name(field.annotation) + _bounds(field))
        lines.append(f"| `{name}` | {kind} | {_cell(_default(field.default))} | {_cell(field.description or '')} |")
    return lines


def is_section(field: FieldInfo) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)


def sections() -> dict[str, type[BaseModel]]:
    """The config's sections (``[dataset]``, ...), in the model's order."""
    return {name: f.annotation for name, f in Config.model_fields.items() if is_section(f)}


def top_level_fields() -> dict[str, FieldInfo]:
    return {name: f for name, f in Config.model_fields.items() if not is_section(f)}


def render() -> str:
    """The whole reference, as Markdown."""
    out = [f"<!-- Generated from influcoder_dagster/core/config.py; do not edit. Regenerate with: {COMMAND} -->", "",
           "# Configuration", "", INTRO, "", "## Top-level keys", "",
           "Keys before the first `[section]` of the file.", "", *_table(top_level_fields())]
    for name, model in sections().items():
        out += ["", f"## `[{name}]`", ""]
        if name in SECTION_INTROS:
            out += [SECTION_INTROS[name], ""]
        out += _table(model.model_fields)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
