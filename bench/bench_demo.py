"""Per-stage times of the demo restore: median of N full runs, read back from the catalog.

    .venv/bin/python bench/bench_demo.py [--runs 3] [--out bench/results/demo.json]

Each run restores the sample collection into a fresh DEST with a fresh SQLite catalog (so nothing
is skipped), through the real Prefect flow on the ephemeral API. Stage durations are the
`duration_s` the tasks recorded; wall time includes Prefect's orchestration.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from common import write_results

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/demo.json"))
    args = parser.parse_args()

    from daguerre.catalog import Catalog
    from daguerre.flows.restore import restore_collection
    from daguerre.imaging.samples import make_sample_collection

    work = Path(tempfile.mkdtemp(prefix="daguerre-bench-"))
    source = work / "originals"
    make_sample_collection(source, seed=0)
    masters = sorted(p for p in source.rglob("*") if p.is_file())

    # The defaults, and the all-classical baseline, interleaved run by run.
    configs = {"default": {}, "classical": {"denoise": "classical", "upscale": "classical"}}
    per_stage: dict[str, dict[str, list[float]]] = {c: defaultdict(list) for c in configs}
    walls: dict[str, list[float]] = {c: [] for c in configs}
    operators: dict[str, dict[str, str]] = {}
    for index in range(args.runs):
        for label, models in configs.items():
            dest = work / f"restored-{label}-{index}"
            catalog_url = f"sqlite:///{work / f'catalog-{label}-{index}.sqlite'}"
            catalog = Catalog(catalog_url)
            catalog.upgrade()
            t0 = time.perf_counter()
            report = restore_collection(
                source=str(source), dest=str(dest), catalog_url=catalog_url, models=models
            )
            walls[label].append(time.perf_counter() - t0)
            assert not report.failed, report.failed
            totals: dict[str, float] = defaultdict(float)
            for master in masters:
                for step in catalog.history(str(master))[0].restorations[-1].steps:
                    if step.status.value == "applied" and step.duration_s is not None:
                        totals[step.stage] += step.duration_s
                        operators.setdefault(label, {})[step.stage] = step.operator or ""
            for stage, seconds in totals.items():
                per_stage[label][stage].append(seconds)

    result = {
        "runs": args.runs,
        "images": len(masters),
        "operators": operators,
        "wall_s_median": {c: statistics.median(v) for c, v in walls.items()},
        "stage_total_s_median": {
            c: {s: statistics.median(v) for s, v in stages.items()}
            for c, stages in per_stage.items()
        },
    }
    write_results(args.out, result)
    print(f"Totals over {len(masters)} images, median of {args.runs} runs (s)")
    print("| stage | " + " | ".join(configs) + " |")
    print("|---|" + "---|" * len(configs))
    for stage in ("detect", "denoise", "inpaint", "tone", "upscale", "colorize", "store"):
        cells = []
        for c in configs:
            seconds = result["stage_total_s_median"][c].get(stage)
            op = operators.get(c, {}).get(stage, "")
            cells.append(f"{seconds:.3f} ({op})" if seconds is not None else "-")
        print(f"| {stage} | " + " | ".join(cells) + " |")
    walls_row = " | ".join(f"{result['wall_s_median'][c]:.2f}" for c in configs)
    print(f"| whole run (wall, incl. Prefect) | {walls_row} |")


if __name__ == "__main__":
    main()
