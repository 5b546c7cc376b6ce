"""Per-stage times of the demo restore: median of N full runs, read back from the catalog.

    .venv/bin/python bench/bench_demo.py [--runs 3] [--out bench/results/demo.json]

Each run restores the sample collection into a fresh DEST with a fresh SQLite catalog (so nothing
is skipped), through the real Prefect flow on the ephemeral API. Stage durations are the
`duration_s` the tasks recorded; wall time includes Prefect's orchestration.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

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

    per_stage: dict[str, list[float]] = defaultdict(list)
    per_image_stage: dict[tuple[str, str], list[float]] = defaultdict(list)
    walls: list[float] = []
    for index in range(args.runs):
        dest = work / f"restored-{index}"
        catalog_url = f"sqlite:///{work / f'catalog-{index}.sqlite'}"
        catalog = Catalog(catalog_url)
        catalog.upgrade()
        t0 = time.perf_counter()
        report = restore_collection(source=str(source), dest=str(dest), catalog_url=catalog_url)
        walls.append(time.perf_counter() - t0)
        assert not report.failed, report.failed
        totals: dict[str, float] = defaultdict(float)
        for master in masters:
            history = catalog.history(str(master))[0]
            for step in history.restorations[-1].steps:
                if step.status.value == "applied" and step.duration_s is not None:
                    totals[step.stage] += step.duration_s
                    key = (str(master.relative_to(source)), step.stage)
                    per_image_stage[key].append(step.duration_s)
        for stage, seconds in totals.items():
            per_stage[stage].append(seconds)

    result = {
        "runs": args.runs,
        "images": len(masters),
        "wall_s_median": statistics.median(walls),
        "wall_s": walls,
        "stage_total_s_median": {s: statistics.median(v) for s, v in per_stage.items()},
        "image_stage_s_median": {
            f"{image}:{stage}": statistics.median(v)
            for (image, stage), v in per_image_stage.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"| stage | total over {len(masters)} images, median of {args.runs} runs (s) |")
    print("|---|---|")
    for stage in ("detect", "denoise", "inpaint", "tone", "upscale", "colorize", "store"):
        if stage in result["stage_total_s_median"]:
            print(f"| {stage} | {result['stage_total_s_median'][stage]:.3f} |")
    print(f"| whole run (wall, incl. Prefect) | {result['wall_s_median']:.2f} |")


if __name__ == "__main__":
    main()
