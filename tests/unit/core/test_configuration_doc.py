"""docs/configuration.md is generated from the config model, and every option is described there."""

from pathlib import Path

import pytest

from influcoder_dagster.app import config_docs
from influcoder_dagster.core.config import Config

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def test_the_configuration_doc_is_up_to_date():
    current = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
    assert current == config_docs.render(), (
        f"{DOC} is out of date with influcoder_dagster/core/config.py; regenerate it with: {config_docs.COMMAND}")


@pytest.mark.parametrize("section", ["<top level>", *config_docs.sections()])
def test_every_option_has_a_description(section):
    fields = config_docs.top_level_fields() if section == "<top level>" else config_docs.sections()[section].model_fields
    missing = [name for name, field in fields.items() if not (field.description or "").strip()]
    assert not missing, f"[{section}] fields without a description in influcoder_dagster/core/config.py: {missing}"


def test_every_section_and_top_level_key_is_in_the_doc():
    doc = config_docs.render()
    names = set(config_docs.sections())
    assert names == {"dataset", "demo", "model", "projection", "rankings", "encoder", "index", "compute"}
    assert all(f"## `[{name}]`" in doc for name in names)
    assert set(config_docs.top_level_fields()) | names == set(Config.model_fields)
    assert "| `home` |" in doc and "| `k` |" in doc
    assert '"logra" \\| "countsketch"' in doc and "| `path` | str | unset |" in doc
