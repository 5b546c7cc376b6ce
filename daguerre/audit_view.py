"""Human-readable rendering of an asset's history for `daguerre audit`."""

from __future__ import annotations

import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from daguerre.catalog import AssetHistory


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "-"


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _compact(values: dict) -> str:
    """`k=v, ...` with short floats: the table stays readable; --json has everything."""
    return ", ".join(f"{k}={_value(v)}" for k, v in sorted(values.items())) if values else "-"


def _page_count(history: AssetHistory) -> int | None:
    """Pages of the master's file as its latest detect step counted them (multi-page only)."""
    for restoration in reversed(history.restorations):
        for step in restoration.steps:
            if step.stage == "detect" and "pages" in step.metrics:
                return int(step.metrics["pages"])
    return None


def render_history(console: Console, history: AssetHistory) -> None:
    """One asset: a file, or one page of a multi-page file (`daguerre audit` of such a file
    renders every page's history in turn)."""
    facts = history.facts
    pages = _page_count(history)
    page = ""
    if facts.page or pages:
        # Page numbers are the file's page indices, as in `#page=N` and derivative names.
        page = f" page {facts.page}" + (f" ({pages} pages in the file)" if pages else "")
    console.rule(f"[bold]{escape(facts.source_uri)}{page}")
    size = f"{facts.width}x{facts.height}" if facts.width else "undecoded"
    console.print(
        f"collection {history.collection} | sha256 {facts.sha256} | {facts.bytes} bytes | "
        f"{facts.format or '?'} {size} {facts.bit_depth or '?'}-bit {facts.colour_space or ''}",
        highlight=False,
    )
    if facts.error:
        console.print(f"[red]master error:[/] {facts.error}", highlight=False)
    for restoration in history.restorations:
        run = restoration.run
        console.print(
            f"\n[bold]run {run.run_id}[/] (flow run {run.flow_run_id or '-'}, code "
            f"{run.code_version}, config {_short(restoration.config_hash)}) "
            f"{restoration.started_at:%Y-%m-%d %H:%M:%S} UTC: [bold]{restoration.status.value}[/]"
            + (f" - {restoration.error}" if restoration.error else ""),
            highlight=False,
        )
        if restoration.steps:
            table = Table(show_lines=False)
            for column in (
                "#",
                "stage",
                "status",
                "operator",
                "weights",
                "parameters",
                "device",
                "s",
                "input",
                "output",
                "metrics / reason",
            ):
                table.add_column(column, overflow="fold")
            for step in restoration.steps:
                operator = f"{step.operator}@{step.operator_version}" if step.operator else "-"
                detail = step.reason if step.status.value != "applied" else _compact(step.metrics)
                table.add_row(
                    str(step.order),
                    step.stage,
                    step.status.value,
                    operator,
                    _short(step.weights_sha256),
                    _compact(step.parameters),
                    step.device or "-",
                    f"{step.duration_s:.3f}" if step.duration_s is not None else "-",
                    _short(step.input_sha256),
                    _short(step.output_sha256),
                    detail or "-",
                )
            console.print(table)
        for derivative in restoration.derivatives:
            console.print(
                f"  {derivative.kind}: {derivative.uri} (sha256 {_short(derivative.sha256)})",
                highlight=False,
            )
