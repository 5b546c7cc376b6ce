"""The restore flow: wires the tasks, nothing else.

SOURCE (folder or s3:// prefix) -> inspect + hash every master -> skip what this configuration
already restored -> detect -> denoise -> inpaint -> tone -> upscale -> colorize -> store ->
record, each a Prefect task. An image is an asset: a single-page file, or one page of a
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
    clean_work_area,
    detect_stage,
    inspect_master,
    list_masters,
    pixel_stage,
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
    access_format: str = "jpeg",
    access_long_edge: int = 2048,
    pyramid: bool = False,
    upscale_below_long_edge: int = 512,
    policy: dict[str, str] | None = None,
) -> RunReport:
    """Restore every image under SOURCE into DEST and record what was done in the catalog."""
    fields: dict[str, Any] = {
        "source": source,
        "dest": dest,
        "collection": collection,
        "scale": scale,
        "device": device,
        "models": models or {},
        "access_format": access_format,
        "access_long_edge": access_long_edge,
        "pyramid": pyramid,
        "upscale_below_long_edge": upscale_below_long_edge,
        "policy": policy,
    }
    if catalog_url:
        fields["catalog_url"] = catalog_url
    if steps is not None:
        fields["steps"] = tuple(steps)
    cfg = RestoreConfig(**fields)
    logger = get_run_logger()

    operators = resolve_operators(cfg.steps, cfg.models, cfg.device)
    identities = {stage: identity(op) for stage, op in operators.items() if op is not None}
    config_hash = cfg.config_hash(identities)
    flow_run_id = str(runtime.flow_run.id) if runtime.flow_run.id else None
    run = open_run(
        cfg.catalog_url,
        cfg.collection_name,
        cfg.source,
        flow_run_id,
        code_version(),
        {**cfg.model_dump(mode="json"), "operators": identities},
        config_hash,
    )
    logger.info("run %s, configuration %s", run.run_id, config_hash[:12])

    keys = list_masters(cfg.source)
    reports: list[ImageReport] = []
    for first in range(0, len(keys), BATCH_SIZE):
        batch = keys[first : first + BATCH_SIZE]
        inspected = [inspect_master.submit(cfg.source, key) for key in batch]
        assets = [facts for future in inspected for facts in future.result()]
        # A multi-page file fans out into its pages: batch those too, to stay bounded.
        for start in range(0, len(assets), BATCH_SIZE):
            jobs = [
                _start(cfg, run.run_id, run.collection_id, facts, config_hash)
                for facts in assets[start : start + BATCH_SIZE]
            ]
            reports.extend(_finish(cfg, run.run_id, job, config_hash) for job in jobs)

    counts = {s.value: sum(r.status == s for r in reports) for s in RestorationStatus}
    status = "failed" if counts["failed"] else "succeeded"
    close_run(cfg.catalog_url, run.run_id, status, {"images": len(reports), **counts})
    logger.info("run %s %s: %s", run.run_id, status, counts)
    return RunReport(
        run_id=run.run_id,
        flow_run_id=flow_run_id,
        dest=cfg.dest,
        catalog_url=cfg.catalog_url,
        config_hash=config_hash,
        images=reports,
    )


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
