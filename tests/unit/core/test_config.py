import pytest

from influcoder_dagster.core.config import load_config
from influcoder_dagster.core.errors import ConfigError


def test_defaults_need_no_file(monkeypatch):
    monkeypatch.delenv("INFLUCODER_CONFIG", raising=False)
    monkeypatch.delenv("INFLUCODER_HOME", raising=False)
    cfg = load_config()
    assert cfg.model.base_model == "tiny" and cfg.projection.kind == "countsketch" and cfg.projection.target == "lora" and cfg.k == 10


def test_file_values_relative_paths_and_env_override(tmp_path, monkeypatch):
    (tmp_path / "c.toml").write_text('home = "store"\nk = 5\n[dataset]\npath = "data"\n[projection]\ndim = 512\n')
    monkeypatch.delenv("INFLUCODER_HOME", raising=False)
    cfg = load_config(tmp_path / "c.toml")
    assert cfg.k == 5 and cfg.projection.dim == 512
    assert cfg.dataset.path == str(tmp_path / "data") and cfg.home_path == tmp_path / "store"
    monkeypatch.setenv("INFLUCODER_HOME", str(tmp_path / "elsewhere"))
    assert load_config(tmp_path / "c.toml").home_path == tmp_path / "elsewhere"


def test_bad_files_say_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[projection]\ndimm = 3\n")
    with pytest.raises(ConfigError, match="dimm"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "worse.toml").write_text("[projection\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(tmp_path / "worse.toml")


def test_the_example_config_documents_exactly_the_defaults(monkeypatch):
    from pathlib import Path

    from influcoder_dagster.core.config import Config

    monkeypatch.delenv("INFLUCODER_HOME", raising=False)
    example = load_config(Path(__file__).resolve().parents[3] / "influcoder.example.toml").model_dump()
    defaults = Config().model_dump()
    example.pop("home"), defaults.pop("home")
    assert example == defaults
