"""The corpus shards: one dynamic partition per dataset file, keyed by its path and content hash."""

import dagster as dg

corpus_shards = dg.DynamicPartitionsDefinition(name="corpus_shards")
