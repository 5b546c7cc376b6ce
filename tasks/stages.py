"""Prefect tasks of the restore flow: thin wrappers doing I/O and provenance around pure code.

Each task takes and returns small records (references and hashes, never pixel arrays). The
computation lives in `daguerre.imaging` and `daguerre.operators`.
"""

from __future__ import annotations

import posixpath
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from daguerre import __version__
from daguerre.config import RestoreConfig
from daguerre.imaging import io as imgio
from daguerre.imaging.classical import resize_alpha
from daguerre.imaging.detect import detect
from daguerre.imaging.plan import PlanOptions, plan_restoration, plan_to_json
from daguerre.operators import StageContext, resolve_operators
from daguerre.records import AssetFacts, DerivativeFacts, ImageRef, StepFacts, StepStatus
from daguerre.tasks.io import (
    derivative_key,
    dest_storage,
    read_master,
    read_pixels,
    sha256_bytes,
    source_storage,
    work_prefix,
    write_pixels,
)

# File extensions that claim to be images: such a file that does not decode is a failure to
# report; any other file is an image only if its content says so.
IMAGE_EXTENSIONS = frozenset(
    [
        ".tif",
        ".tiff",
        ".jpg",
        ".jpeg",
        ".jpe",
        ".png",
        ".webp",
        ".gif",
        ".bmp",
        ".jp2",
        ".j2k",
        ".jpx",
        ".jxl",
        ".heic",
        ".dng",
    ]
)
DETECT_OPERATOR = "daguerre.detect"


class DetectOutcome(BaseModel):
    step: StepFacts
    plan: dict[str, Any]
    current: ImageRef
    mask: ImageRef | None = None
    bit_depth: int = 8
    noise_sigma: float | None = None


class StageOutcome(BaseModel):
    step: StepFacts
    current: ImageRef


class StoreOutcome(BaseModel):
    step: StepFacts
    derivatives: list[DerivativeFacts]


def _now() -> datetime:
    return datetime.now(UTC)


def _is_image_name(key: str) -> bool:
    return posixpath.splitext(key)[1].lower() in IMAGE_EXTENSIONS


@task(name="list-masters", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def list_masters(source: str) -> list[str]:
    """Keys of every candidate master under SOURCE (hidden folders excluded), sorted."""
    return [obj.key for obj in source_storage(source).list()]


@task(
    name="inspect-master",
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
    task_run_name="inspect {key}",
)
def inspect_master(source: str, key: str) -> AssetFacts | None:
    """Hash a master and read its header. None for a file that is not an image at all.

    A file named like an image that is not one comes back with `error` set, so it is recorded.
    """
    storage = source_storage(source)
    data = storage.read_bytes(key)
    facts = AssetFacts(
        source_uri=storage.uri_for(key),
        relative_path=key,
        sha256=sha256_bytes(data),
        bytes=len(data),
    )
    if not data:
        return facts.model_copy(update={"error": "empty file (0 bytes)"})
    fmt = imgio.sniff_format(data)
    if fmt is None:
        if not _is_image_name(key):
            return None  # a sidecar, a README...: not ours to judge
        return facts.model_copy(update={"error": "not a recognised image format"})
    try:
        info = imgio.probe(data)
    except imgio.ImageDecodeError as exc:
        return facts.model_copy(update={"format": fmt, "error": str(exc)})
    return facts.model_copy(
        update={
            "format": info.format,
            "width": info.width,
            "height": info.height,
            "bands": info.bands,
            "bit_depth": info.bit_depth,
            "colour_space": info.colour_space,
            "has_alpha": info.has_alpha,
            "icc_profile_sha256": sha256_bytes(info.icc_profile) if info.icc_profile else None,
            "ppi": info.ppi,
        }
    )


def plan_options(cfg: RestoreConfig, colorizer_available: bool) -> PlanOptions:
    return PlanOptions(
        steps=frozenset(cfg.steps),
        scale=cfg.scale,
        upscale_below_long_edge=cfg.upscale_below_long_edge,
        colorizer_available=colorizer_available,
    )


@task(name="detect", cache_policy=NO_CACHE, task_run_name="detect {asset.relative_path}")
def detect_stage(cfg: RestoreConfig, run_id: int, asset: AssetFacts) -> DetectOutcome:
    """Decode the master, measure it, and decide which stages it needs (the plan)."""
    started, t0 = _now(), time.perf_counter()
    decoded = imgio.decode(read_master(cfg.source, asset), max_pixels=cfg.max_pixels)
    detection = detect(decoded.pixels, decoded.info)
    operators = resolve_operators(cfg.steps, cfg.models, cfg.device)
    plan = plan_restoration(detection, plan_options(cfg, operators.get("colorize") is not None))
    mask_ref = None
    if detection.damage_coverage > 0:
        png = imgio.encode_mask_png(detection.damage_mask)
        key = f"{work_prefix(run_id, asset.sha256)}/damage-mask.png"
        storage = dest_storage(cfg.dest)
        storage.write_bytes(key, png)
        mask_ref = ImageRef(
            uri=storage.uri_for(key),
            sha256=sha256_bytes(png),
            width=detection.width,
            height=detection.height,
        )
    step = StepFacts(
        stage="detect",
        order=0,
        status=StepStatus.APPLIED,
        operator=DETECT_OPERATOR,
        operator_version=__version__,
        parameters={"damage": "classical top-hat/black-hat", "faces": "opencv haar frontalface"},
        device="cpu",
        duration_s=round(time.perf_counter() - t0, 4),
        input_sha256=asset.sha256,
        output_sha256=mask_ref.sha256 if mask_ref else None,
        metrics=detection.to_metrics(),
        started_at=started,
    )
    master_ref = ImageRef(
        uri=asset.source_uri,
        sha256=asset.sha256,
        width=decoded.info.width,
        height=decoded.info.height,
    )
    return DetectOutcome(
        step=step,
        plan=plan_to_json(plan),
        current=master_ref,
        mask=mask_ref,
        bit_depth=decoded.info.bit_depth,
        noise_sigma=detection.noise_sigma,
    )


@task(name="pixel-stage", cache_policy=NO_CACHE, task_run_name="{stage} {asset.relative_path}")
def pixel_stage(
    cfg: RestoreConfig,
    run_id: int,
    stage: str,
    order: int,
    asset: AssetFacts,
    detected: DetectOutcome,
    previous: DetectOutcome | StageOutcome,
) -> StageOutcome:
    """Run one pixel stage (denoise, inpaint, tone, upscale, colorize) or record why not."""
    decision = detected.plan[stage]
    current = previous.current
    if not decision["run"]:
        step = StepFacts(
            stage=stage, order=order, status=StepStatus.SKIPPED, reason=decision["reason"]
        )
        return StageOutcome(step=step, current=current)
    operator = resolve_operators(cfg.steps, cfg.models, cfg.device)[stage]
    if operator is None:
        step = StepFacts(
            stage=stage,
            order=order,
            status=StepStatus.SKIPPED,
            reason=f"no {stage} operator installed",
        )
        return StageOutcome(step=step, current=current)

    started, t0 = _now(), time.perf_counter()
    pixels = read_pixels(cfg.source, cfg.dest, current, asset, cfg.max_pixels)
    ctx = StageContext(bit_depth=detected.bit_depth, noise_sigma=detected.noise_sigma)
    if stage == "inpaint":
        ctx.damage_mask = _read_mask(cfg.dest, detected.mask)
    result = operator.apply(pixels, decision.get("params", {}), ctx)
    key = f"{work_prefix(run_id, asset.sha256)}/{order}-{stage}.npy"
    out_ref = write_pixels(cfg.dest, key, result.pixels)
    step = StepFacts(
        stage=stage,
        order=order,
        status=StepStatus.APPLIED,
        reason=decision["reason"],
        operator=operator.id,
        operator_version=operator.version,
        weights_sha256=operator.weights_sha256,
        parameters=result.parameters,
        device=operator.device,
        duration_s=round(time.perf_counter() - t0, 4),
        input_sha256=current.sha256,
        output_sha256=out_ref.sha256,
        metrics=result.metrics,
        started_at=started,
    )
    return StageOutcome(step=step, current=out_ref)


def _read_mask(dest: str, ref: ImageRef | None) -> np.ndarray:
    if ref is None:
        raise ValueError("the plan asks for inpainting but detection stored no damage mask")
    storage = dest_storage(dest)
    key = storage.key_for(ref.uri)
    assert key is not None
    decoded = imgio.decode(storage.read_bytes(key))
    return decoded.pixels[..., 0] > 0.5


@task(
    name="store",
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
    task_run_name="store {asset.relative_path}",
)
def store_stage(
    cfg: RestoreConfig,
    run_id: int,
    order: int,
    asset: AssetFacts,
    detected: DetectOutcome,
    final: StageOutcome,
) -> StoreOutcome:
    """Write the derivatives next to (never over) the master's mirrored path, atomically."""
    started, t0 = _now(), time.perf_counter()
    master = imgio.decode(read_master(cfg.source, asset), max_pixels=cfg.max_pixels)
    pixels = read_pixels(cfg.source, cfg.dest, final.current, asset, cfg.max_pixels)
    height, width = pixels.shape[:2]
    alpha = master.alpha
    if alpha is not None and alpha.shape != (height, width):
        alpha = resize_alpha(alpha, (height, width))
    scale = width / master.info.width
    ppi = master.info.ppi * scale if master.info.ppi else None
    bit_depth = 16 if master.info.bit_depth >= 16 else 8

    storage = dest_storage(cfg.dest)
    derivatives: list[DerivativeFacts] = []

    def put(kind: str, suffix: str, fmt: str, data: bytes, w: int, h: int) -> DerivativeFacts:
        key = derivative_key(asset.relative_path, suffix)
        uri = storage.write_bytes(key, data)
        facts = DerivativeFacts(
            uri=uri,
            kind=kind,
            sha256=sha256_bytes(data),
            format=fmt,
            bytes=len(data),
            width=w,
            height=h,
        )
        derivatives.append(facts)
        return facts

    tiff = imgio.encode_tiff(
        pixels,
        bit_depth=bit_depth,
        alpha=alpha,
        icc_profile=master.icc_profile,
        ppi=ppi,
    )
    preservation = put("preservation", "restored.tif", "tiff", tiff, width, height)
    if cfg.access_format != "none":
        access = imgio.encode_access(
            pixels,
            alpha=alpha,
            long_edge=cfg.access_long_edge,
            fmt=cfg.access_format,
            icc_profile=master.icc_profile,
        )
        ext = "jpg" if cfg.access_format == "jpeg" else "webp"
        long_edge = max(width, height)
        shrink = min(1.0, cfg.access_long_edge / long_edge)
        put(
            "access",
            f"access.{ext}",
            cfg.access_format,
            access,
            round(width * shrink),
            round(height * shrink),
        )
    if detected.mask is not None:
        mask_png = dest_storage(cfg.dest).read_bytes(storage.key_for(detected.mask.uri) or "")
        put(
            "damage-mask", "damage-mask.png", "png", mask_png, master.info.width, master.info.height
        )

    step = StepFacts(
        stage="store",
        order=order,
        status=StepStatus.APPLIED,
        operator="daguerre.store",
        operator_version=__version__,
        parameters={
            "preservation": "tiff/deflate/tiled",
            "bit_depth": bit_depth,
            "icc_profile": bool(master.icc_profile),
            "access_format": cfg.access_format,
            "access_long_edge": cfg.access_long_edge,
        },
        device="cpu",
        duration_s=round(time.perf_counter() - t0, 4),
        input_sha256=final.current.sha256,
        output_sha256=preservation.sha256,
        metrics={"derivatives": len(derivatives)},
        started_at=started,
    )
    return StoreOutcome(step=step, derivatives=derivatives)


@task(name="clean-work-area", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def clean_work_area(dest: str, run_id: int, asset_sha256: str) -> None:
    """Intermediates are hashed in the catalog; the pixels themselves need not be kept."""
    dest_storage(dest).delete_prefix(work_prefix(run_id, asset_sha256))
