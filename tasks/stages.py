"""Prefect tasks of the restore flow: thin wrappers doing I/O and provenance around pure code.

Each task takes and returns small records (references and hashes, never pixel arrays). The
computation lives in `daguerre.imaging` and `daguerre.operators`.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from daguerre import __version__
from daguerre.catalog import Fingerprint
from daguerre.config import RestoreConfig
from daguerre.imaging import io as imgio
from daguerre.imaging.detect import FACE_DETECTOR
from daguerre.imaging.large import (
    TiffSink,
    access_pixels,
    detect_source,
    preservation_image,
    probe_file,
    sniff_file,
    write_access,
    write_mask_png,
    write_preservation,
)
from daguerre.imaging.plan import PlanOptions, plan_restoration, plan_to_json
from daguerre.imaging.tiffexif import IMAGE_DESCRIPTION, SOFTWARE, exif_blob, exif_text
from daguerre.operators import (
    StageContext,
    damage_detector,
    operator_for,
    resolve_operators,
    run_operator,
    stage_available,
)
from daguerre.provenance_metadata import (
    build_xmp,
    image_description,
    jpeg_xmp,
    provenance_from,
    usable_description,
)
from daguerre.records import AssetFacts, DerivativeFacts, ImageRef, StepFacts, StepStatus
from daguerre.tasks.catalog import catalog_for
from daguerre.tasks.io import (
    SCRATCH_ENV,
    asset_work_prefix,
    derivative_key,
    dest_storage,
    inspected_file,
    open_mask,
    open_pixels,
    opened_master,
    page_path,
    put_work_file,
    scratch,
    sha256_bytes,
    sha256_file,
    source_storage,
    work_file,
)
from daguerre.version import code_version

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
# Who made a master's facts: fingerprints record it, and facts made by another inspector are
# not reused. Bump it whenever `inspect_master` would find other facts (pages kept, fields,
# values) for the same bytes, or reruns keep serving the old ones until `--rehash`.
INSPECTOR = "daguerre.inspect/1"


class DetectOutcome(BaseModel):
    step: StepFacts
    plan: dict[str, Any]
    current: ImageRef
    mask: ImageRef | None = None
    bit_depth: int = 8
    noise_sigma: float | None = None
    # Sample format of the intermediates: 16-bit integers, exact for 8- and 16-bit sources;
    # float masters (rare in archives) get a 16-bit derivative anyway.
    work_format: str = "ushort"


class StageOutcome(BaseModel):
    step: StepFacts
    current: ImageRef
    # Every step so far, detect first and this one last: store writes them into the
    # derivatives' own metadata. Small records, at most one per stage.
    steps: list[StepFacts] = Field(default_factory=list)


def _steps_so_far(previous: DetectOutcome | StageOutcome, step: StepFacts) -> list[StepFacts]:
    earlier = previous.steps if isinstance(previous, StageOutcome) else [previous.step]
    return [*earlier, step]


class StoreOutcome(BaseModel):
    step: StepFacts
    derivatives: list[DerivativeFacts]


def _now() -> datetime:
    return datetime.now(UTC)


def _is_image_name(key: str) -> bool:
    return posixpath.splitext(key)[1].lower() in IMAGE_EXTENSIONS


class ListedMaster(BaseModel):
    """A candidate master as the listing showed it: its key, size and version token (see
    `daguerre.storage.ObjectInfo`; None when the storage cannot vouch for one)."""

    key: str
    bytes: int
    version: str | None = None


class InspectedMaster(BaseModel):
    """A listed master and what `inspect_master` found in it."""

    listed: ListedMaster
    assets: list[AssetFacts]


@task(name="list-masters", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def list_masters(source: str) -> list[ListedMaster]:
    """Every candidate master under SOURCE (hidden folders excluded), sorted by key."""
    return [
        ListedMaster(key=obj.key, bytes=obj.size, version=obj.version)
        for obj in source_storage(source).list()
    ]


@task(name="recall-masters", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def recall_masters(
    catalog_url: str, source: str, listed: list[ListedMaster]
) -> dict[str, list[AssetFacts]]:
    """The facts of the listed masters whose fingerprint shows them unchanged since they were
    inspected, by key (see `Catalog.recall_masters`): these need not be read again. One
    catalog transaction for the whole batch; masters without a version token are never known.
    """
    storage = source_storage(source)
    uris = {m.key: storage.uri_for(m.key) for m in listed if m.version is not None}
    if not uris:
        return {}
    found = catalog_for(catalog_url).recall_masters(
        [(uris[m.key], m.bytes, m.version) for m in listed if m.key in uris], INSPECTOR
    )
    return {
        key: [
            # Registered under another collection's root, perhaps: this listing's key rules.
            facts.model_copy(update={"relative_path": page_path(key, facts.page)})
            for facts in found[uri]
        ]
        for key, uri in uris.items()
        if uri in found
    }


@task(name="remember-masters", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def remember_masters(catalog_url: str, source: str, inspected: list[InspectedMaster]) -> list[str]:
    """Record the fingerprints of freshly inspected masters (one catalog transaction).

    A master is fingerprinted with its listing's size and version only when inspection read
    that many bytes: otherwise it changed in between, and the version does not describe what
    was hashed. Masters without a version token are skipped. Returns the keys whose content
    changed while their size and version did not (see `Catalog.record_fingerprints`).
    """
    storage = source_storage(source)
    fingerprints: dict[str, str] = {}
    records = []
    for item in inspected:
        listed, assets = item.listed, item.assets
        if listed.version is None or any(a.bytes != listed.bytes for a in assets):
            continue
        uri = storage.uri_for(listed.key)
        fingerprints[uri] = listed.key
        records.append(
            Fingerprint(
                source_uri=uri,
                bytes=listed.bytes,
                version=listed.version,
                sha256=assets[0].sha256 if assets else None,
                pages=[a.page for a in assets],
                inspector=INSPECTOR,
            )
        )
    if not records:
        return []
    changed = catalog_for(catalog_url).record_fingerprints(records)
    return [fingerprints[uri] for uri in changed]


@contextlib.contextmanager
def _temporary_folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="inspect-", dir=os.environ.get(SCRATCH_ENV)) as d:
        yield Path(d)


# TIFF NewSubfileType bits of subfiles that are not scans of their own: a reduced-resolution
# version of another page (thumbnail, preview, pyramid level) and a transparency mask.
_SUBFILE_REDUCED = 0x1
_SUBFILE_MASK = 0x4
# The old SubfileType tag (255): 2 is a reduced-resolution image.
_OLD_SUBFILE_REDUCED = 2


def scan_pages(path: Path, pages: int) -> list[int]:
    """Indices (libvips page numbers) of the pages of a TIFF that are scans of their own.

    `pages` is the page count libvips reports (`ImageInfo.pages`, every IFD of the main
    chain). Subfiles flagged as reduced-resolution (NewSubfileType bit 0, or the old
    SubfileType 2: thumbnails, previews, pyramid levels) or as transparency masks (bit 2) are
    left out; pyramid levels stored as SubIFDs are not pages at all. Page 0 is kept when no
    page qualifies, so a file is never dropped. When tifffile cannot read the IFD chain (which
    libvips did read), every page counts.
    """
    import tifffile

    if pages <= 1:
        return [0]
    try:
        with tifffile.TiffFile(path) as tif:
            kept = []
            for index in range(min(pages, len(tif.pages))):
                page = tif.pages[index]
                tags = page.tags
                new_type = int(tags[254].value) if 254 in tags else 0
                old_type = int(tags[255].value) if 255 in tags else 0
                if new_type & (_SUBFILE_REDUCED | _SUBFILE_MASK):
                    continue
                if old_type == _OLD_SUBFILE_REDUCED:
                    continue
                kept.append(index)
    except Exception:  # tifffile is only asked for tags: fall back to libvips' count
        return list(range(pages))
    return kept or [0]


def _decoded_facts(facts: AssetFacts, info: imgio.ImageInfo) -> AssetFacts:
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


@task(
    name="inspect-master",
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
    task_run_name="inspect {key}",
)
def inspect_master(source: str, key: str) -> list[AssetFacts]:
    """Hash a master (streamed) and read its header: one AssetFacts per asset in the file.

    A single-page image gives one; a multi-page TIFF one per page that is a scan of its own
    (see `scan_pages`: thumbnails and other reduced-resolution subfiles are skipped), page N
    > 0 as `KEY#page=N` with `page=N`, all sharing the file's sha256 and size. Other
    multi-page formats (animated GIF/WebP, HEIF sequences) are one asset, their first page.
    Empty for a file that is not an image. A file named like an image that is not one, or
    whose first page does not decode, comes back as one record with `error` set, so it is
    recorded; a later page that does not decode is its own record with `error` set.
    """
    storage = source_storage(source)
    # An S3 download goes to the master cache's folder; kept there (below) once it is known to
    # be an image, so the later stages of this asset do not download it again.
    with _temporary_folder() as folder, inspected_file(storage, key, folder) as inspected:
        path = inspected.path
        size = path.stat().st_size
        facts = AssetFacts(
            source_uri=storage.uri_for(key),
            relative_path=key,
            sha256=sha256_file(path),
            bytes=size,
        )
        if not size:
            return [facts.model_copy(update={"error": "empty file (0 bytes)"})]
        fmt = sniff_file(path)
        if fmt is None:
            if not _is_image_name(key):
                return []  # a sidecar, a README...: not ours to judge
            return [facts.model_copy(update={"error": "not a recognised image format"})]
        try:
            info = probe_file(path)
        except imgio.ImageDecodeError as exc:
            return [facts.model_copy(update={"format": fmt, "error": str(exc)})]
        pages = scan_pages(path, info.pages) if info.format == "tiff" else [0]
        assets = []
        for page in pages:
            page_facts = facts.model_copy(
                update={"page": page, "relative_path": page_path(key, page)}
            )
            try:
                page_info = info if page == 0 else probe_file(path, page=page)
            except imgio.ImageDecodeError as exc:
                assets.append(page_facts.model_copy(update={"format": fmt, "error": str(exc)}))
                continue
            assets.append(_decoded_facts(page_facts, page_info))
        if any(asset.error is None for asset in assets):
            inspected.keep(facts.sha256)
    return assets


def plan_options(cfg: RestoreConfig) -> PlanOptions:
    """The plan's options: the configuration's, and which model-only stages have a model."""
    return PlanOptions(
        steps=frozenset(cfg.steps),
        scale=cfg.scale,
        upscale_below_long_edge=cfg.upscale_below_long_edge,
        colorizer_available=stage_available("colorize", cfg.models),
        face_model_available=stage_available("face", cfg.models),
    )


def _threshold_of(detector: object) -> dict[str, float]:
    """A learned detector's decision threshold and grow threshold, as step parameters (none
    for the classical)."""
    levels = {
        "damage_threshold": getattr(detector, "threshold", None),
        "damage_grow_threshold": getattr(detector, "grow_threshold", None),
    }
    return {key: round(float(value), 4) for key, value in levels.items() if value is not None}


@task(name="detect", cache_policy=NO_CACHE, task_run_name="detect {asset.relative_path}")
def detect_stage(cfg: RestoreConfig, run_id: int, asset: AssetFacts) -> DetectOutcome:
    """Open the master lazily, measure it, and decide which stages it needs (the plan).

    Statistics come from a downscaled view; the damage mask is computed tile by tile at full
    resolution and stored in the work area as a tiled 8-bit TIFF.
    """
    started, t0 = _now(), time.perf_counter()
    prefix = asset_work_prefix(run_id, asset)
    detector = damage_detector(cfg.models, cfg.device)
    with (
        scratch(cfg.dest) as folder,
        opened_master(cfg.source, asset, folder, cfg.max_pixels) as master,
    ):
        sink = TiffSink(folder / "mask-cells", "uchar")
        detection, stats = detect_source(
            master.source(), master.info, sink, mask_job=detector.mask_job()
        )
        mask_ref = None
        if detection.damage_coverage > 0:
            path = sink.finish(folder / "damage-mask.tif")
            key = f"{prefix}/damage-mask.tif"
            mask_ref = put_work_file(cfg.dest, key, path, detection.width, detection.height)
        else:
            sink.discard()
        info = master.info
    plan = plan_restoration(detection, plan_options(cfg))
    metrics = detection.to_metrics()
    metrics["mask_tiles"] = stats.tiles if stats else 0
    if info.pages > 1:
        # Pages as libvips counts them (thumbnail subfiles included); `page` is this asset's.
        metrics["pages"] = info.pages
        metrics["page"] = asset.page
    step = StepFacts(
        stage="detect",
        order=0,
        status=StepStatus.APPLIED,
        operator=DETECT_OPERATOR,
        operator_version=__version__,
        # The damage mask is the detector's: its weights are this step's (touched-by finds them).
        weights_sha256=detector.weights_sha256,
        parameters={
            "damage": f"{detector.id}@{detector.version}, tiled at full resolution",
            **_threshold_of(detector),
            "statistics": "downscaled view",
            "faces": FACE_DETECTOR,
        },
        device=detector.device,
        duration_s=round(time.perf_counter() - t0, 4),
        input_sha256=asset.sha256,
        output_sha256=mask_ref.sha256 if mask_ref else None,
        metrics=metrics,
        started_at=started,
    )
    master_ref = ImageRef(
        uri=asset.source_uri, sha256=asset.sha256, width=info.width, height=info.height
    )
    return DetectOutcome(
        step=step,
        plan=plan_to_json(plan),
        current=master_ref,
        mask=mask_ref,
        bit_depth=info.bit_depth,
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
    """Run one pixel stage (denoise, inpaint, face, tone, upscale, colorize) or record why not.

    The input is read lazily tile by tile; the output is streamed into a tiled TIFF in the
    work area. Memory is bounded by the tiles in flight, whatever the image size.
    """
    decision = detected.plan[stage]
    current = previous.current
    if not decision["run"]:
        step = StepFacts(
            stage=stage, order=order, status=StepStatus.SKIPPED, reason=decision["reason"]
        )
        return StageOutcome(step=step, current=current, steps=_steps_so_far(previous, step))
    operator = resolve_operators(cfg.steps, cfg.models, cfg.device, cfg.ensemble)[stage]
    if operator is not None:
        # An upscale operator may hold one model per factor: take the one this plan needs.
        operator = operator_for(operator, decision.get("params", {}))
    if operator is None:
        step = StepFacts(
            stage=stage,
            order=order,
            status=StepStatus.SKIPPED,
            reason=f"no {stage} operator installed",
        )
        return StageOutcome(step=step, current=current, steps=_steps_so_far(previous, step))

    started, t0 = _now(), time.perf_counter()
    with scratch(cfg.dest) as folder, contextlib.ExitStack() as stack:
        source = stack.enter_context(
            open_pixels(cfg.source, cfg.dest, current, asset, folder, cfg.max_pixels)
        )
        ctx = StageContext(bit_depth=detected.bit_depth, noise_sigma=detected.noise_sigma)
        if stage == "inpaint":
            if detected.mask is None:
                raise ValueError("the plan asks for inpainting but detection stored no mask")
            ctx.damage_mask = stack.enter_context(open_mask(cfg.dest, detected.mask, folder))
        sink = TiffSink(folder / "cells", detected.work_format)
        try:
            run = run_operator(operator, source, sink, decision.get("params", {}), ctx)
            path = sink.finish(folder / f"{order}-{stage}.tif")
        finally:
            sink.discard()
        key = f"{asset_work_prefix(run_id, asset)}/{order}-{stage}.tif"
        out_ref = put_work_file(cfg.dest, key, path, sink.width, sink.height)
    step = StepFacts(
        stage=stage,
        order=order,
        status=StepStatus.APPLIED,
        reason=decision["reason"],
        operator=operator.id,
        operator_version=operator.version,
        weights_sha256=operator.weights_sha256,
        parameters=run.parameters,
        device=operator.device,
        duration_s=round(time.perf_counter() - t0, 4),
        input_sha256=current.sha256,
        output_sha256=out_ref.sha256,
        metrics=run.metrics,
        started_at=started,
    )
    return StageOutcome(step=step, current=out_ref, steps=_steps_so_far(previous, step))


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
    """Write the derivatives next to (never over) the master's mirrored path, atomically.

    Preservation: tiled deflate TIFF at the source bit depth with the master's alpha
    (resampled), ICC profile, resolution (scaled by the upscale factor), EXIF, XMP and IPTC;
    optionally pyramidal. Access: JPEG or WebP, sRGB, long edge at most access_long_edge.

    Every derivative says what was done to it in its own metadata (provenance_metadata): an
    XMP packet merged into the master's (Daguerre steps, xmpMM:DerivedFrom and History), and
    for the TIFF and the JPEG/WebP an ImageDescription (the master's, else a summary; always
    the colour notice when colorized) and Software. The applied steps come from `final.steps`
    (detect and every pixel stage). Hashes are of the files as written, metadata included.
    """
    started, t0 = _now(), time.perf_counter()
    storage = dest_storage(cfg.dest)
    derivatives: list[DerivativeFacts] = []
    pyramid = cfg.pyramid
    provenance = provenance_from(
        asset,
        run_id,
        final.steps or [detected.step, final.step],
        when=started,
        code_version=code_version(),
    )

    def put_file(kind: str, suffix: str, fmt: str, path: Path, w: int, h: int) -> DerivativeFacts:
        facts = DerivativeFacts(
            uri=storage.write_file(derivative_key(asset.relative_path, suffix), path),
            kind=kind,
            sha256=sha256_file(path),
            format=fmt,
            bytes=path.stat().st_size,
            width=w,
            height=h,
        )
        derivatives.append(facts)
        return facts

    with (
        scratch(cfg.dest) as folder,
        opened_master(cfg.source, asset, folder, cfg.max_pixels) as master,
        contextlib.ExitStack() as stack,
    ):
        if final.current.uri == asset.source_uri:
            colour = master.colour
        else:
            colour = stack.enter_context(
                open_pixels(cfg.source, cfg.dest, final.current, asset, folder, cfg.max_pixels)
            ).image
        width, height = colour.width, colour.height
        scale = width / master.info.width
        ppi = master.info.ppi * scale if master.info.ppi else None
        bit_depth = 16 if master.info.bit_depth >= 16 else 8
        # A colorized grey master has no profile for its new colour pixels (sRGB assumed).
        icc = master.icc_profile if colour.bands == master.colour.bands else None
        master_exif = master.metadata.get("exif-data")
        master_xmp = master.metadata.get("xmp-data")
        description = image_description(
            provenance,
            usable_description(master.description, exif_text(master_exif, IMAGE_DESCRIPTION)),
        )
        xmp = build_xmp(
            provenance, master_xmp=master_xmp, width=width, height=height, mime="image/tiff"
        )
        image = preservation_image(
            colour,
            bit_depth=bit_depth,
            alpha=master.alpha,
            icc_profile=icc,
            ppi=ppi,
            metadata={**master.metadata, "xmp-data": xmp},
        )
        tiff = write_preservation(
            image,
            folder / "preservation.tif",
            pyramid=pyramid,
            exif=master_exif,
            description=description,
            software=provenance.software,
        )
        preservation = put_file("preservation", "restored.tif", "tiff", tiff, width, height)
        if cfg.access_format != "none":
            pixels, alpha = access_pixels(colour, master.alpha, cfg.access_long_edge)
            size = {"width": pixels.shape[1], "height": pixels.shape[0]}
            extended = None
            if cfg.access_format == "jpeg":
                xmp, extended = jpeg_xmp(provenance, master_xmp=master_xmp, **size)
            else:
                xmp = build_xmp(provenance, master_xmp=master_xmp, mime="image/webp", **size)
            ext = "jpg" if cfg.access_format == "jpeg" else "webp"
            access = write_access(
                pixels,
                folder / f"access.{ext}",
                alpha=alpha,
                fmt=cfg.access_format,
                icc_profile=icc,
                exif=exif_blob(
                    master_exif, {IMAGE_DESCRIPTION: description, SOFTWARE: provenance.software}
                ),
                xmp=xmp,
                extended_xmp=extended,
            )
            put_file(
                "access",
                f"access.{ext}",
                cfg.access_format,
                access,
                pixels.shape[1],
                pixels.shape[0],
            )
        if detected.mask is not None:
            mask_xmp = build_xmp(
                provenance.for_damage_mask(),
                width=master.info.width,
                height=master.info.height,
                mime="image/png",
            )
            with work_file(cfg.dest, detected.mask, folder) as mask_tiff:
                png = write_mask_png(mask_tiff, folder / "damage-mask.png", xmp=mask_xmp)
            put_file(
                "damage-mask",
                "damage-mask.png",
                "png",
                png,
                master.info.width,
                master.info.height,
            )

    step = StepFacts(
        stage="store",
        order=order,
        status=StepStatus.APPLIED,
        operator="daguerre.store",
        operator_version=__version__,
        parameters={
            "preservation": "tiff/deflate/tiled" + ("/pyramid" if pyramid else ""),
            "bit_depth": bit_depth,
            "icc_profile": bool(icc),
            "metadata": sorted(master.metadata),
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
def clean_work_area(dest: str, run_id: int, asset: AssetFacts) -> None:
    """Intermediates are hashed in the catalog; the pixels themselves need not be kept.

    Only this asset's work area goes: other pages of the same master, or an identical file at
    another path, may still be running.
    """
    dest_storage(dest).delete_prefix(asset_work_prefix(run_id, asset))
