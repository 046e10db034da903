"""A killed ``influcoder materialize`` leaves its Dagster runs STARTED, its DuckDB writer slot claimed and its
MLflow run RUNNING; the next materialize on the root (which holds the writer lock) cleans all three up."""

import uuid

import dagster as dg

from influcoder_dagster.app.runner import release_dead_runs, writer_tags
from influcoder_dagster.student import tracking

POOL = "duckdb_writer"


def started_run(instance, home):
    run = dg.DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED, tags=writer_tags(home))
    instance.add_run(run)
    return run.run_id


def test_the_next_materialize_fails_a_killed_runs_leftovers_and_frees_its_writer_slot(tmp_path):
    import mlflow

    home, other_home = tmp_path / "home", tmp_path / "other"
    with dg.instance_for_test() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(POOL, 1)
        dead = started_run(instance, home)
        alive_elsewhere = started_run(instance, other_home)  # another root's writer may well be running
        assert storage.claim_concurrency_slot(POOL, dead, "influence_rankings").is_claimed
        assert not storage.claim_concurrency_slot(POOL, "next-run", "influence_rankings").is_claimed  # blocked behind the dead run
        tracking.setup(home)
        orphan = mlflow.start_run(run_name="killed-encoder").info.run_id  # never ended, as after a SIGKILL
        mlflow.end_run()  # detach this process from it ...
        mlflow.MlflowClient().update_run(orphan, status="RUNNING")  # ... leaving it RUNNING as the killed one did

        assert release_dead_runs(instance, home) == [dead]
        assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(alive_elsewhere).status == dg.DagsterRunStatus.STARTED
        storage.free_concurrency_slots_for_run("next-run")  # its pending claim from above
        assert storage.claim_concurrency_slot(POOL, "next-run", "influence_rankings").is_claimed
        assert mlflow.MlflowClient().get_run(orphan).info.status == "KILLED"
        assert release_dead_runs(instance, home) == []  # nothing left to clean
