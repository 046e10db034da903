"""The Dagster side that is not an asset: the config resource, partitions, jobs, schedules, the sensor, the Pipes worker."""
