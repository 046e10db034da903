import pytest

from influcoder_dagster.core.config import load_config
from influcoder_dagster.core.errors import ConfigError


def test_defaults_need_no_file(monkeypatch):
    monkeypatch.delenv("INFLUCODER_CONFIG", raising=False)
    monkeypatch.delenv("INFLUCODER_HOME", raising=False)
    cfg = load_config()
    assert cfg.model.base_model == "tiny" and cfg.projection.kind == "countsketch" and cfg.projection.target == "head" and cfg.k == 10
    assert cfg.projection.whitens_head and not cfg.projection.adam_precondition


def test_the_logit_fisher_applies_to_the_head_target_only(tmp_path):
    (tmp_path / "lora.toml").write_text('[projection]\ntarget = "lora"\nadam_precondition = true\n')
    assert not load_config(tmp_path / "lora.toml").projection.whitens_head  # the default is ignored elsewhere
    (tmp_path / "asked.toml").write_text('[projection]\ntarget = "weights"\nlogit_fisher = true\n')
    cfg = load_config(tmp_path / "asked.toml")
    assert not cfg.projection.whitens_head
    assert type(cfg).model_validate_json(cfg.model_dump_json()) == cfg  # as a worker process receives it


def test_head_factors_need_the_head_target_and_do_not_key_the_store(tmp_path):
    from influcoder_dagster.teacher.store import requested_projection

    (tmp_path / "lora.toml").write_text('[projection]\ntarget = "lora"\nhead_factors = "on"\n')
    with pytest.raises(ConfigError, match="head_factors.*target = 'head'"):
        load_config(tmp_path / "lora.toml")
    (tmp_path / "on.toml").write_text('[projection]\nhead_factors = "on"\nhead_factors_rank = 16\n')
    assert requested_projection(load_config(tmp_path / "on.toml")) == requested_projection(load_config())  # same store rows


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


@pytest.mark.parametrize("text, says", [
    ("[projection]\ndim = 0\n", "projection.dim: Input should be greater than or equal to 1 (got 0)"),
    ("[rankings]\ntop_k = -3\n", "rankings.top_k"),
    ("k = 0\n", "k: Input should be greater than or equal to 1"),
    ("[model]\nmax_length = 0\n", "model.max_length"),
    ("[dataset]\nmax_chars = -1\n", "dataset.max_chars"),
    ("[encoder]\nsketch_dim = 0\n", "encoder.sketch_dim"),
    ("[encoder]\nlayers = 0\n", "encoder.layers = 0 keeps no layer"),
    ('dataset = "x"\n', "'dataset' must be a table"),
    ("home = 5\n", "home must be a string path, not int"),
    ("[dataset]\npath = 5\n", "dataset.path must be a string path"),
])
def test_a_bad_setting_is_refused_naming_the_file_and_the_field(tmp_path, text, says):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ") and says in str(caught.value)


def test_a_config_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes("home = 'caf\xe9'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8 text"):
        load_config(path)
