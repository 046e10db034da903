"""One module per asset. A stage reads its upstream files, runs the engine, writes its own files atomically
and returns a :class:`~influcoder_dagster.stages.result.StageResult` (metadata and a data version). Stages
know nothing of Dagster, so each runs and tests on its own; they hand data to each other only through
files under the storage root."""
