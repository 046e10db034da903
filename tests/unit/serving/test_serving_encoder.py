"""The serving encoder's version names one trained model, so its cached files never serve another."""

from influcoder_dagster.core.config import Config
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.serving.embeddings import ServingEncoder, folder


def test_a_version_number_reused_by_a_new_tracking_database_names_another_folder(tmp_path):
    cfg = Config.model_validate({"home": str(tmp_path)})
    before, after = ServingEncoder(cfg, "1", "0123456789abcdef"), ServingEncoder(cfg, "1", "fedcba9876543210")
    assert before.version == "v1-01234567" and after.version == "v1-fedcba98"
    assert folder(Paths(tmp_path), before.version) != folder(Paths(tmp_path), after.version)
    assert ServingEncoder(cfg, None).version.startswith("base:")
