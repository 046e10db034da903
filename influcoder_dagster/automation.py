"""Jobs and schedules: the full pipeline, and the nightly reindex."""

import dagster as dg

full_pipeline = dg.define_asset_job("full_pipeline", selection=dg.AssetSelection.all(), description="Every asset, in lineage order.")
reindex = dg.define_asset_job("reindex", selection=dg.AssetSelection.assets("embedding_index"),
                              description="Re-embed the corpus with the champion encoder and rebuild the index.")
nightly_reindex = dg.ScheduleDefinition(job=reindex, cron_schedule="0 2 * * *", name="nightly_reindex",
                                        default_status=dg.DefaultScheduleStatus.STOPPED)
