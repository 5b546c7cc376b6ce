"""Prefect tasks that write provenance to the catalog. One transaction per call."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from daguerre.catalog import Catalog
from daguerre.records import AssetFacts, DerivativeFacts, RestorationStatus, StepFacts
from daguerre.tasks.io import dest_storage


@functools.lru_cache(maxsize=8)
def catalog_for(url: str) -> Catalog:
    """One engine per catalog URL per worker process."""
    return Catalog(url)


class RunHandle(BaseModel):
    run_id: int
    collection_id: int


class Admission(BaseModel):
    asset_id: int
    done: list[DerivativeFacts]  # non-empty: already restored with this configuration


@task(name="open-run", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def open_run(
    catalog_url: str,
    collection: str,
    source: str,
    flow_run_id: str | None,
    code_version: str,
    config: dict[str, Any],
    config_hash: str,
) -> RunHandle:
    catalog = catalog_for(catalog_url)
    collection_id = catalog.ensure_collection(collection, source)
    run_id = catalog.start_run(collection_id, flow_run_id, code_version, config, config_hash)
    return RunHandle(run_id=run_id, collection_id=collection_id)


@task(
    name="admit-asset",
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
    task_run_name="admit {facts.relative_path}",
)
def admit_asset(
    catalog_url: str, collection_id: int, facts: AssetFacts, config_hash: str, dest: str
) -> Admission:
    """Register the master (one page of it, for a multi-page file); report derivatives
    already made for that page with this configuration.

    A master counts as done only if every recorded derivative is still in DEST: a deleted
    output is made again rather than silently missing.
    """
    catalog = catalog_for(catalog_url)
    asset_id = catalog.register_asset(collection_id, facts)
    done = (
        catalog.find_completed(facts.sha256, config_hash, page=facts.page)
        if facts.error is None
        else []
    )
    if done:
        storage = dest_storage(dest)
        for derivative in done:
            key = storage.key_for(derivative.uri)
            if key is None or not storage.exists(key):
                done = []
                break
    return Admission(asset_id=asset_id, done=done)


@task(
    name="record",
    retries=3,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
    task_run_name="record {asset_id}",
)
def record_restoration(
    catalog_url: str,
    run_id: int,
    asset_id: int,
    config_hash: str,
    status: RestorationStatus,
    plan: dict[str, Any] | None,
    steps: list[StepFacts],
    derivatives: list[DerivativeFacts],
    error: str | None,
    started_at: datetime | None,
    finished_at: datetime | None,
) -> int:
    return catalog_for(catalog_url).record_restoration(
        run_id,
        asset_id,
        config_hash,
        status,
        plan,
        steps,
        derivatives,
        error=error,
        started_at=started_at,
        finished_at=finished_at,
    )


@task(name="close-run", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def close_run(catalog_url: str, run_id: int, status: str, summary: dict[str, Any]) -> None:
    catalog_for(catalog_url).finish_run(run_id, status, summary)
