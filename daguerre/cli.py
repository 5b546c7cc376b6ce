"""The `daguerre` command line: restore, audit, catalog upgrade, samples, train.

Exit status: 0 success, 1 when any image failed (or a run could not finish), 2 usage errors.
Usage errors print one line, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

# Prefect must not phone home (no network here) and its ephemeral API is our default.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

app = typer.Typer(
    help="Restore digitized photo archives and audit every edit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
catalog_app = typer.Typer(help="Manage the catalog database.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")

# Wide enough for paths and hashes when the output is a file or a pipe (rich assumes 80 then).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

CatalogOption = Annotated[
    str | None,
    typer.Option(
        "--catalog",
        help="SQLAlchemy URL of the catalog (default: $DAGUERRE_CATALOG_URL, else a SQLite file).",
    ),
]


def usage_error(message: str) -> NoReturn:
    err_console.print(f"daguerre: error: {message}", highlight=False, markup=False)
    raise typer.Exit(2)


def _catalog_url(option: str | None) -> str:
    from daguerre.config import default_catalog_url

    return option or default_catalog_url()


def _open_catalog(url: str, upgrade: bool):
    from daguerre.catalog import Catalog

    try:
        catalog = Catalog(url)
        if upgrade:
            catalog.upgrade()
        return catalog
    except Exception as exc:  # any driver/URL error is a usage problem: one line, exit 2
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        usage_error(f"cannot open catalog {_redact(url)}: {first_line}")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _parse_models(specs: list[str]) -> dict[str, str]:
    from daguerre.policy import MODEL_TASKS as tasks

    models: dict[str, str] = {}
    for spec in specs:
        task, sep, source = spec.partition("=")
        if not sep or not source:
            usage_error(f"--model expects TASK=PATH_OR_S3_URI[#sha256=HEX], got {spec!r}")
        if task not in tasks:
            usage_error(f"--model: unknown task {task!r}; choose from {', '.join(tasks)}")
        models[task] = source
    return models


@app.command()
def restore(
    source: Annotated[str, typer.Argument(help="Folder or s3://bucket/prefix of masters.")],
    dest: Annotated[str, typer.Argument(help="Folder or s3://bucket/prefix for derivatives.")],
    catalog: CatalogOption = None,
    collection: Annotated[
        str | None, typer.Option(help="Collection name (default: SOURCE's last path segment).")
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated stages: denoise,inpaint,face,tone,upscale,colorize; or all "
            "(default: all but colorize; face runs only with --model face=WEIGHTS)."
        ),
    ] = None,
    scale: Annotated[
        int | None, typer.Option(help="Upscale factor 1, 2 or 4 (default: automatic).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="Bring-your-own weights TASK=PATH_OR_S3_URI (pinned: add #sha256=HEX), or "
            "TASK=classical to use the classical algorithm. Repeatable."
        ),
    ] = None,
    access_format: Annotated[
        str | None, typer.Option(help="jpeg, webp or none (default: jpeg).")
    ] = None,
    access_long_edge: Annotated[
        int | None, typer.Option(help="Long edge of access copies (default: 2048).")
    ] = None,
    pyramid: Annotated[
        bool | None,
        typer.Option(
            "--pyramid/--no-pyramid",
            help="Pyramidal preservation TIFF (for IIIF image servers; default: no).",
        ),
    ] = None,
    ensemble: Annotated[
        int | None,
        typer.Option(
            help="Run learned denoise, upscale and inpaint models over 1, 2, 4 or 8 flipped/"
            "turned copies and average them: that many times slower, slightly better "
            "(default: 1)."
        ),
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(
            help="The collection's policy file (path or s3:// URI; default: daguerre.toml at "
            "SOURCE's root, if any), or 'none' to ignore it. Options given here override it."
        ),
    ] = None,
    rehash: Annotated[
        bool,
        typer.Option(
            "--rehash",
            help="Read and hash every master again, even those whose size and version (local: "
            "inode, mtime, ctime; S3: ETag, LastModified) show them unchanged since they were "
            "inspected: a fixity check.",
        ),
    ] = False,
) -> None:
    """Restore every image under SOURCE into DEST and record each edit in the catalog."""
    from daguerre.config import parse_steps
    from daguerre.policy import AUTO, PolicyError, find_policy
    from daguerre.storage import StorageError, is_inside, open_storage

    try:
        step_list = None if steps is None else list(parse_steps(steps))
    except ValueError as exc:
        usage_error(str(exc))
    if scale is not None and scale not in (1, 2, 4):
        usage_error("--scale must be 1, 2 or 4")
    if device not in ("auto", "cpu", "cuda"):
        usage_error("--device must be auto, cpu or cuda")
    if ensemble not in (None, 1, 2, 4, 8):
        usage_error("--ensemble must be 1, 2, 4 or 8")
    if access_format not in (None, "jpeg", "webp", "none"):
        usage_error("--access-format must be jpeg, webp or none")
    models = _parse_models(model or [])
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            usage_error("--device cuda: no CUDA device is available here")

    try:
        source_storage = open_storage(source, read_only=True)
        dest_storage = open_storage(dest)
        if is_inside(dest_storage.uri, source_storage.uri):
            usage_error(f"DEST {dest_storage.uri} is inside SOURCE {source_storage.uri}")
        if is_inside(source_storage.uri, dest_storage.uri):
            usage_error(f"SOURCE {source_storage.uri} is inside DEST {dest_storage.uri}")
        source_storage.check()
        dest_storage.ensure_exists()
    except StorageError as exc:
        usage_error(str(exc))
    try:  # checked here too, so that a bad policy is a usage error, not a failed run
        collection_policy = find_policy(policy or AUTO, source_storage.uri)
    except PolicyError as exc:
        usage_error(f"invalid policy {exc}")
    if collection_policy is not None:
        console.print(f"Policy: {collection_policy.uri}", highlight=False)

    catalog_url = _catalog_url(catalog)
    _open_catalog(catalog_url, upgrade=True)

    from daguerre.flows.restore import restore_collection

    try:
        report = restore_collection(
            source=source_storage.uri,
            dest=dest_storage.uri,
            catalog_url=catalog_url,
            collection=collection,
            steps=step_list,
            scale=scale,
            device=device,
            models=models,
            access_format=access_format,
            access_long_edge=access_long_edge,
            pyramid=pyramid,
            ensemble=ensemble,
            policy=collection_policy.uri if collection_policy else "none",
            rehash=rehash,
        )
    except Exception as exc:
        err_console.print(f"daguerre: the run failed: {type(exc).__name__}: {exc}", markup=False)
        raise typer.Exit(1) from None
    _print_report(report)
    raise typer.Exit(1 if report.failed else 0)


def _print_report(report: Any) -> None:
    table = Table(title=f"Run {report.run_id}: {len(report.images)} image(s)")
    table.add_column("image")
    table.add_column("status")
    table.add_column("steps applied")
    table.add_column("stage time (s)", justify="right")
    for image in report.images:
        colour = {"succeeded": "green", "skipped": "cyan", "failed": "red"}[image.status.value]
        steps = ", ".join(image.applied) if image.status.value != "skipped" else "already done"
        table.add_row(
            image.path, f"[{colour}]{image.status.value}[/]", steps, f"{image.seconds:.2f}"
        )
    console.print(table)
    for image in report.failed:
        console.print(f"[red]FAILED[/] {image.path}: {image.error}", highlight=False)
    console.print(f"Derivatives: {report.dest}")
    console.print(f"Catalog: {_redact(report.catalog_url)}  (daguerre audit ITEM)")


@app.command()
def audit(
    item: Annotated[
        str, typer.Argument(help="A master's path/URI, a derivative's path/URI, or a sha256.")
    ],
    catalog: CatalogOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the history of an image: every run and step, with operators and hashes."""
    cat = _open_catalog(_catalog_url(catalog), upgrade=False)
    candidates = [item]
    if "://" not in item and len(item) != 64:
        candidates.append(str(Path(item).resolve()))
    histories = []
    for candidate in candidates:
        histories = cat.history(candidate)
        if histories:
            break
    if not histories:
        err_console.print(f"daguerre: nothing in the catalog matches {item}", markup=False)
        raise typer.Exit(1)
    if as_json:
        payload = [h.model_dump(mode="json") for h in histories]
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    from daguerre.audit_view import render_history

    for history in histories:
        render_history(console, history)


@app.command("touched-by")
def touched_by(
    operator: Annotated[str, typer.Argument(help="An operator/model id or a weights sha256.")],
    catalog: CatalogOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List every image an operator or a weights file touched (to recall a faulty model)."""
    from daguerre.records import page_path

    cat = _open_catalog(_catalog_url(catalog), upgrade=False)
    rows = cat.touched_by(operator)
    if as_json:
        sys.stdout.write(json.dumps([r.model_dump(mode="json") for r in rows], indent=2) + "\n")
        return
    table = Table(title=f"Images touched by {operator}: {len(rows)}")
    for column in ("source", "sha256", "run", "stage", "operator"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            page_path(row.source_uri, row.page),
            row.asset_sha256[:12],
            str(row.run.run_id),
            row.step.stage,
            f"{row.step.operator}@{row.step.operator_version}",
        )
    console.print(table)


@catalog_app.command("upgrade")
def catalog_upgrade(catalog: CatalogOption = None) -> None:
    """Apply the catalog's database migrations (Alembic) up to the latest."""
    url = _catalog_url(catalog)
    _open_catalog(url, upgrade=True)
    console.print(f"catalog {_redact(url)} is up to date")


@app.command()
def samples(
    dest: Annotated[Path, typer.Argument(help="Folder to write the sample collection into.")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write a small collection of synthetic 'old photos' (for the demo and for trying things)."""
    from daguerre.imaging.samples import make_sample_collection

    paths = make_sample_collection(dest, seed=seed)
    console.print(f"wrote {len(paths)} sample images under {dest}")


@app.command()
def train(
    task: Annotated[str, typer.Argument(help="denoise, upscale, damage, inpaint or colorize.")],
    data: Annotated[
        list[Path], typer.Option("--data", help="Folder of clean training images. Repeatable.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Weights file to write (.safetensors).")],
    minutes: Annotated[float, typer.Option(help="Wall-clock budget, in total across resumes.")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint if any.")] = True,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    init: Annotated[
        Path | None,
        typer.Option(help="Warm-start a new run from these weights (matching tensors)."),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--set", help="Recipe option KEY=VALUE (e.g. scale=4). Repeatable."),
    ] = None,
    calibrate: Annotated[
        list[Path] | None,
        typer.Option(
            "--calibrate",
            help="damage: folder of undamaged photos never trained on, pooled with the "
            "validation photos to calibrate the decision threshold. Repeatable.",
        ),
    ] = None,
) -> None:
    """Train one of our models on clean images degraded on the fly; writes weights + model card.

    Checkpoints every few minutes beside OUT and resumes from them. Folders under the shared
    test datasets are refused: never train on a test set.
    """
    from daguerre.models.training import parse_recipe_options
    from daguerre.models.training import train as run_training

    try:
        recipe = parse_recipe_options(option or [])
    except ValueError as exc:
        usage_error(str(exc))
    try:
        result = run_training(
            task,
            data,
            out,
            minutes,
            device=device,
            resume=resume,
            seed=seed,
            progress=progress,
            init_from=init,
            calibration_dirs=calibrate or (),
            **recipe,
        )
    except ValueError as exc:
        usage_error(str(exc))
    console.print(
        f"wrote {result.weights} ({result.steps} steps, {result.minutes:.1f} min, "
        f"validation {result.metric} {result.val_score})"
    )


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
