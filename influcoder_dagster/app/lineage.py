"""Dagster's own view of what is stale: the same data-version logic the UI shows as "unsynced"."""

from __future__ import annotations

import dagster as dg

from influcoder_dagster.definitions import defs


def stale_resolver(instance: dg.DagsterInstance) -> object:
    """A resolver whose ``get_status(key, partition)`` gives FRESH / STALE / MISSING for our assets.

    Dagster exposes this only through internal modules (the UI and ``stale_assets_only`` use it);
    it is wrapped here so one place follows Dagster's API if it moves.
    """
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._time import get_current_datetime

    graph = defs.resolve_asset_graph()
    view = AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
                          instance=instance, asset_graph=graph)
    return CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)
