"""The out-of-process side of ``projected_gradients``: ``python -m influcoder_dagster.orchestration.pipes_worker``.

Launched by a Dagster Pipes client; imports only ``dagster_pipes`` (no Dagster), so it runs in
any image that has the engine, e.g. a Kubernetes pod or a Ray worker.
"""

from dagster_pipes import open_dagster_pipes

from influcoder_dagster.core.config import load_config
from influcoder_dagster.stages.gradients import run_shard_gradients


def main() -> None:
    with open_dagster_pipes() as pipes:
        cfg = load_config(pipes.get_extra("config_path"))
        pipes.log.info(f"extracting gradients of shard {pipes.partition_key} in a subprocess")
        result = run_shard_gradients(cfg, pipes.partition_key, progress=False)
        metadata = {k: v for k, v in result.metadata.items() if v is not None}
        pipes.report_asset_materialization(metadata=metadata, data_version=result.data_version)


if __name__ == "__main__":
    main()
