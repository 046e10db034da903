"""What people run: the ``influcoder`` CLI, the demo, in-process materialization and Dagster's view of what is stale."""
