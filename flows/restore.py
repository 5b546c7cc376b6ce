"""The restore flow: wires the tasks, nothing else.

SOURCE (folder or s3:// prefix) -> inspect + hash every master that changed since it was last
inspected -> skip what this configuration already restored -> detect -> denoise -> inpaint ->
tone -> upscale -> colorize -> store -> record, each a Prefect task. A master whose listing
shows the size and version token (local: inode, mtime and ctime; S3: ETag and LastModified)
it had when it was inspected is not read again: its facts come from the catalog. `rehash`
inspects every master anyway (a fixity check: content that changed under an unchanged
fingerprint is reported). An image is an asset: a single-page file, or one page of a
multi-page TIFF (each page is restored, recorded and skipped on rerun on its own, and counts
as one image in the run summary). Images are processed in batches so a huge collection never
has more than a bounded number of task runs in flight.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, runtime
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from daguerre.config import RestoreConfig
from daguerre.operators import identity, resolve_operators
from daguerre.policy import AUTO, find_policy, merged_options
from daguerre.records import (
    PIXEL_STAGES,
    AssetFacts,
    DerivativeFacts,
    RestorationStatus,
    StepFacts,
    StepStatus,
)
from daguerre.tasks.catalog import (
    Admission,
    admit_asset,
    close_run,
    open_run,
    record_restoration,
)
from daguerre.tasks.stages import (
    InspectedMaster,
    ListedMaster,
    clean_work_area,
    detect_stage,
    inspect_master,
    list_masters,
    pixel_stage,
    recall_masters,
    remember_masters,
    store_stage,
)
from daguerre.version import code_version

BATCH_SIZE = 32


class ImageReport(BaseModel):
    path: str
    status: RestorationStatus
    applied: list[str]
    seconds: float
    error: str | None = None


class RunReport(BaseModel):
    run_id: int
    flow_run_id: str | None
    dest: str
    catalog_url: str
    config_hash: str
    images: list[ImageReport]
    masters: int = 0  # files listed under SOURCE
    masters_reused: int = 0  # not read: their fingerprint showed them unchanged
    masters_inspected: int = 0  # read and hashed
    # Keys whose content changed while their size and version token did not.
    fixity_mismatches: list[str] = []

    @property
    def failed(self) -> list[ImageReport]:
        return [i for i in self.images if i.status == RestorationStatus.FAILED]


def _failure_reason(future: PrefectFuture) -> str:
    state = future.state
    exc = future.result(raise_on_failure=False)
    if isinstance(exc, BaseException):
        return (
            f"{type(exc).__name__}: {exc}"
            if not str(exc).startswith(type(exc).__name__)
            else str(exc)
        )
    return state.message or state.name or "failed"


@flow(
    name="restore-collection",
    task_runner=ThreadPoolTaskRunner(max_workers=4),
    log_prints=True,
)
def restore_collection(
    source: str,
    dest: str,
    catalog_url: str | None = None,
    collection: str | None = None,
    steps: list[str] | None = None,
    scale: int | None = None,
    device: str = "auto",
    models: dict[str, str] | None = None,
    access_format: str | None = None,
    access_long_edge: int | None = None,
    pyramid: bool | None = None,
    upscale_below_long_edge: int | None = None,
    ensemble: int | None = None,
    policy: str | None = AUTO,
    rehash: bool = False,
) -> RunReport:
    """Restore every image under SOURCE into DEST and record what was done in the catalog.

    Settings left at None come from the collection's policy (`policy`: AUTO finds
    `daguerre.toml` at SOURCE's root, a path or s3:// URI names one, NONE applies none), else
    from RestoreConfig's defaults; `models` add to (and override per task) the policy's.
    Masters unchanged since they were inspected (same fingerprint) are not read; `rehash`
    reads and hashes every master (recorded in the run's configuration, not in its hash: it
    does not change what is written).
    """
    logger = get_run_logger()
    given = {
        "collection": collection,
        "steps": steps,
        "scale": scale,
        "access_format": access_format,
        "access_long_edge": access_long_edge,
        "pyramid": pyramid,
        "upscale_below_long_edge": upscale_below_long_edge,
        "ensemble": ensemble,
    }
    cfg = _config(source, dest, catalog_url, device, models or {}, given, policy)
    if cfg.policy is not None:
        logger.info("policy %s (sha256 %s)", cfg.policy["uri"], cfg.policy["sha256"][:12])

    operators = resolve_operators(cfg.steps, cfg.models, cfg.device, cfg.ensemble)
    identities = {stage: identity(op) for stage, op in operators.items() if op is not None}
    config_hash = cfg.config_hash(identities)
    flow_run_id = str(runtime.flow_run.id) if runtime.flow_run.id else None
    run = open_run(
        cfg.catalog_url,
        cfg.collection_name,
        cfg.source,
        flow_run_id,
        code_version(),
        {**cfg.model_dump(mode="json"), "operators": identities, "rehash": rehash},
        config_hash,
    )
    logger.info("run %s, configuration %s", run.run_id, config_hash[:12])

    listed = list_masters(cfg.source)
    reports: list[ImageReport] = []
    reused = 0
    mismatches: list[str] = []
    for first in range(0, len(listed), BATCH_SIZE):
        batch = listed[first : first + BATCH_SIZE]
        known, found = _facts_of(cfg, batch, rehash)
        reused += len(known)
        by_key = known | found
        assets = [facts for m in batch for facts in by_key[m.key]]
        # A multi-page file fans out into its pages: batch those too, to stay bounded.
        for start in range(0, len(assets), BATCH_SIZE):
            jobs = [
                _start(cfg, run.run_id, run.collection_id, facts, config_hash)
                for facts in assets[start : start + BATCH_SIZE]
            ]
            reports.extend(_finish(cfg, run.run_id, job, config_hash) for job in jobs)
        # After admission registered their assets: a fingerprint is only useful with them.
        fresh = [InspectedMaster(listed=m, assets=found[m.key]) for m in batch if m.key in found]
        if any(item.listed.version is not None for item in fresh):
            mismatches += remember_masters(cfg.catalog_url, cfg.source, fresh)

    inspected = len(listed) - reused
    logger.info(
        "masters: %d listed, %d unchanged since inspected (fingerprint reused, not read), "
        "%d inspected%s",
        len(listed),
        reused,
        inspected,
        " (--rehash)" if rehash else "",
    )
    for key in mismatches:
        logger.warning("fixity: %s changed content while its size and version stayed the same", key)
    counts = {s.value: sum(r.status == s for r in reports) for s in RestorationStatus}
    status = "failed" if counts["failed"] else "succeeded"
    summary = {
        "images": len(reports),
        **counts,
        "masters": len(listed),
        "fingerprints_reused": reused,
        "masters_inspected": inspected,
        "fixity_mismatches": mismatches,
    }
    close_run(cfg.catalog_url, run.run_id, status, summary)
    logger.info("run %s %s: %s", run.run_id, status, counts)
    return RunReport(
        run_id=run.run_id,
        flow_run_id=flow_run_id,
        dest=cfg.dest,
        catalog_url=cfg.catalog_url,
        config_hash=config_hash,
        images=reports,
        masters=len(listed),
        masters_reused=reused,
        masters_inspected=inspected,
        fixity_mismatches=mismatches,
    )


def _config(
    source: str,
    dest: str,
    catalog_url: str | None,
    device: str,
    models: dict[str, str],
    given: dict[str, Any],
    policy: str | None,
) -> RestoreConfig:
    """The run's configuration: settings `given` (None = not given) over the collection
    policy's, over RestoreConfig's defaults."""
    collection_policy = find_policy(policy, source)
    fields: dict[str, Any] = {
        "source": source,
        "dest": dest,
        "device": device,
        "policy": collection_policy.reference() if collection_policy else None,
        **merged_options(collection_policy, given, models),
    }
    if catalog_url:
        fields["catalog_url"] = catalog_url
    if fields.get("steps") is not None:
        fields["steps"] = tuple(fields["steps"])
    return RestoreConfig(**fields)


def _facts_of(
    cfg: RestoreConfig, batch: list[ListedMaster], rehash: bool
) -> tuple[dict[str, list[AssetFacts]], dict[str, list[AssetFacts]]]:
    """(facts recalled by fingerprint, facts found by inspecting the rest), by key."""
    known: dict[str, list[AssetFacts]] = {}
    if not rehash and any(m.version is not None for m in batch):
        known = recall_masters(cfg.catalog_url, cfg.source, batch)
    futures = {m.key: inspect_master.submit(cfg.source, m.key) for m in batch if m.key not in known}
    return known, {key: future.result() for key, future in futures.items()}


class _Job:
    """One image in flight: its admission and the futures of its stage chain."""

    def __init__(self, facts: AssetFacts, admission: Admission, chain: list[tuple[str, Any]]):
        self.facts = facts
        self.admission = admission
        self.chain = chain
        self.started = datetime.now(UTC)


def _start(
    cfg: RestoreConfig, run_id: int, collection_id: int, facts: AssetFacts, config_hash: str
) -> _Job:
    admission = admit_asset(cfg.catalog_url, collection_id, facts, config_hash, cfg.dest)
    if facts.error is not None or admission.done:
        return _Job(facts, admission, [])
    # The chain runs as futures so Prefect overlaps the stages of different images.
    detected = detect_stage.submit(cfg, run_id, facts)
    chain: list[tuple[str, PrefectFuture]] = [("detect", detected)]
    previous: PrefectFuture = detected
    for order, stage in enumerate(PIXEL_STAGES, start=1):
        previous = pixel_stage.submit(cfg, run_id, stage, order, facts, detected, previous)
        chain.append((stage, previous))
    stored = store_stage.submit(cfg, run_id, len(PIXEL_STAGES) + 1, facts, detected, previous)
    chain.append(("store", stored))
    return _Job(facts, admission, chain)


def _finish(cfg: RestoreConfig, run_id: int, job: _Job, config_hash: str) -> ImageReport:
    facts = job.facts
    steps: list[StepFacts] = []
    derivatives: list[DerivativeFacts] = []
    plan: dict[str, Any] | None = None
    error: str | None = None
    if facts.error is not None:
        status = RestorationStatus.FAILED
        error = facts.error
        steps.append(
            StepFacts(
                stage="detect",
                order=0,
                status=StepStatus.FAILED,
                reason=facts.error,
                input_sha256=facts.sha256,
            )
        )
    elif job.admission.done:
        status = RestorationStatus.SKIPPED
        derivatives = job.admission.done
    else:
        wait([future for _, future in job.chain])
        status = RestorationStatus.SUCCEEDED
        for order, (stage, future) in enumerate(job.chain):
            if not future.state.is_completed():
                reason = _failure_reason(future)
                steps.append(
                    StepFacts(stage=stage, order=order, status=StepStatus.FAILED, reason=reason)
                )
                status, error = RestorationStatus.FAILED, f"{stage}: {reason}"
                break
            steps.append(future.result().step)
        detected = job.chain[0][1]
        if detected.state.is_completed():
            plan = detected.result().plan
        if status == RestorationStatus.SUCCEEDED:
            derivatives = job.chain[-1][1].result().derivatives
        clean_work_area(cfg.dest, run_id, facts)

    record_restoration(
        cfg.catalog_url,
        run_id,
        job.admission.asset_id,
        config_hash,
        status,
        plan,
        steps,
        derivatives,
        error,
        job.started,
        datetime.now(UTC),
    )
    return ImageReport(
        path=facts.relative_path,
        status=status,
        applied=[s.stage for s in steps if s.status == StepStatus.APPLIED],
        # Time spent in the image's own stages (what it costs), not time queued behind others.
        seconds=round(sum(s.duration_s or 0.0 for s in steps), 3),
        error=error,
    )
