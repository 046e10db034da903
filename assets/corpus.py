"""The tokenized corpus: validated, quarantined, content-hashed samples in Parquet shards."""

import dagster as dg

from influcoder_dagster import teacher_stages
from influcoder_dagster.resources import InflucoderConfig

from ._wrap import run_stage


@dg.asset(group_name="teacher", deps=["base_model"], kinds={"parquet"}, code_version="1",
          description="corpus/<shard>.parquet: sample id, text, token ids, source and row; bad rows in quarantine.parquet.")
def tokenized_corpus(influcoder: InflucoderConfig) -> dg.MaterializeResult:
    return run_stage(lambda: teacher_stages.run_tokenized_corpus(influcoder.load()))[1]
