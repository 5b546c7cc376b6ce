"""Peak memory restoring huge 16-bit RGB scans: detect, denoise, inpaint, upscale x2 (+ store).

    .venv/bin/python bench/bench_huge.py --sizes 10000,14000 [--store] [--work DIR]
        [--operators classical|default]

For each size N the benchmark makes an N x N 16-bit RGB tiled TIFF (a smooth picture with
Gaussian noise and thin scratches, generated lazily by libvips, never committed), then runs the
restore flow's own task functions (`detect_stage.fn`, `pixel_stage.fn`, `store_stage.fn`: the
code path of the flow, without the Prefect server) in a child process measured by
`/usr/bin/time -v`, single-threaded (VIPS_CONCURRENCY=1, OMP/MKL/OpenBLAS 1 thread, OpenCV 1
thread; torch is not imported by classical operators). It prints the exact command, the peak
RSS (and the child's own peak after each stage) and each stage's time and input megapixels per
second. The plan is forced so every benchmarked stage runs. `--operators classical` (the
default, comparable across sessions) uses the classical damage detector, NLM, Telea and
Lanczos; `default` uses whatever `daguerre restore` would (the shipped learned models).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SINGLE_THREAD_ENV = {
    "VIPS_CONCURRENCY": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}
STAGES = ("denoise", "inpaint", "upscale")


def make_scan(path: Path, size: int) -> None:
    """An N x N 16-bit RGB tiled TIFF, streamed by libvips (never whole in memory)."""
    import pyvips

    xy = pyvips.Image.xyz(size, size)
    x, y = xy[0], xy[1]
    # A smooth picture: two slow waves and a diagonal ramp per channel, with noise.
    base = ((x / 180.0).sin() * (y / 240.0).cos() * 0.08) + (x + y) * (0.1 / (2 * size)) + 0.45
    bands = [base, base * 0.95 + 0.02, base * 0.9 + 0.04]
    picture = bands[0].bandjoin(bands[1:])
    picture += pyvips.Image.gaussnoise(size, size, sigma=8.0 / 255.0, mean=0.0)
    # Thin scratches: 2 px dark lines every 997 px across, bright ones every 1009 px down.
    picture = ((y % 997) < 2).ifthenelse(0.02, picture)
    picture = ((x % 1009) < 2).ifthenelse(0.98, picture)
    image = picture * 65535.0
    image = image.clamp(min=0.0, max=65535.0).cast("ushort").copy(interpretation="rgb16")
    image.tiffsave(
        str(path),
        tile=True,
        tile_width=256,
        tile_height=256,
        compression="deflate",
        predictor="horizontal",
        bigtiff=True,
    )


# Every stage's classical operator (inpaint's default became a learned model in session 3).
CLASSICAL_MODELS = {
    "damage": "classical",
    "denoise": "classical",
    "inpaint": "classical",
    "upscale": "classical",
}


def run_pipeline(master: Path, work: Path, store: bool, out: Path, operators: str) -> None:
    """The measured child: the flow's tasks on one master, stage by stage."""
    import cv2

    cv2.setNumThreads(1)
    # torch is imported only when a learned operator is resolved; OMP_NUM_THREADS=1 (set by
    # the parent) keeps it to one thread then.
    from daguerre.config import RestoreConfig
    from daguerre.records import PIXEL_STAGES
    from daguerre.tasks.stages import detect_stage, inspect_master, pixel_stage, store_stage

    dest = work / "restored"
    cfg = RestoreConfig(
        source=str(master.parent),
        dest=str(dest),
        catalog_url=f"sqlite:///{work / 'catalog.sqlite'}",
        steps=("denoise", "inpaint", "upscale"),
        scale=2,
        device="cpu",
        models=CLASSICAL_MODELS if operators == "classical" else {},
    )
    timings: dict[str, float] = {}
    peaks: dict[str, float] = {"imports": _own_peak_mib()}
    t0 = time.perf_counter()
    (asset,) = inspect_master.fn(cfg.source, master.name)
    timings["inspect"] = time.perf_counter() - t0
    assert asset is not None and asset.error is None, asset

    t0 = time.perf_counter()
    detected = detect_stage.fn(cfg, 1, asset)
    timings["detect"] = time.perf_counter() - t0
    peaks["detect"] = _own_peak_mib()
    # Force the plan: every benchmarked stage runs, whatever detection found.
    plan = detected.plan
    plan["denoise"] = {"run": True, "reason": "benchmark", "params": {"sigma": 8.0}}
    if detected.mask is not None:
        plan["inpaint"] = {"run": True, "reason": "benchmark", "params": {"radius": 3}}
    plan["tone"] = {"run": False, "reason": "benchmark", "params": {}}
    plan["upscale"] = {"run": True, "reason": "benchmark", "params": {"scale": 2}}
    plan["colorize"] = {"run": False, "reason": "benchmark", "params": {}}

    previous = detected
    metrics: dict[str, dict] = {"detect": detected.step.metrics}
    for order, stage in enumerate(PIXEL_STAGES, start=1):
        t0 = time.perf_counter()
        previous = pixel_stage.fn(cfg, 1, stage, order, asset, detected, previous)
        if previous.step.status == "applied":
            timings[stage] = time.perf_counter() - t0
            peaks[stage] = _own_peak_mib()
            metrics[stage] = previous.step.metrics
    if store:
        t0 = time.perf_counter()
        store_stage.fn(cfg, 1, len(PIXEL_STAGES) + 1, asset, detected, previous)
        timings["store"] = time.perf_counter() - t0
        peaks["store"] = _own_peak_mib()
    result = {
        "width": asset.width,
        "height": asset.height,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "coverage": detected.step.metrics.get("damage_coverage"),
        "peak_rss_after_mib": peaks,
        "metrics": metrics,
    }
    out.write_text(json.dumps(result, indent=2))


def _own_peak_mib() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _peak_rss_mib(time_output: str) -> float:
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_output)
    if match is None:
        raise RuntimeError(f"no peak RSS in /usr/bin/time output:\n{time_output}")
    return int(match.group(1)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,14000")
    parser.add_argument("--store", action="store_true", help="also write the derivatives")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (big!)")
    parser.add_argument("--operators", choices=("classical", "default"), default="classical")
    parser.add_argument(
        "--child", nargs=3, metavar=("MASTER", "WORK", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()

    if args.child:
        master, work, out = (Path(p) for p in args.child)
        run_pipeline(master, work, args.store, out, args.operators)
        return

    env = {**os.environ, **SINGLE_THREAD_ENV}
    os.environ.update(SINGLE_THREAD_ENV)
    root = Path(tempfile.mkdtemp(prefix="daguerre-huge-", dir=args.work))
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        case = root / f"n{size}"
        (case / "masters").mkdir(parents=True)
        master = case / "masters" / f"scan-{size}.tif"
        t0 = time.perf_counter()
        make_scan(master, size)
        made = time.perf_counter() - t0
        out = case / "result.json"
        command = [
            "/usr/bin/time",
            "-v",
            sys.executable,
            str(Path(__file__).resolve()),
            *(["--store"] if args.store else []),
            "--operators",
            args.operators,
            "--child",
            str(master),
            str(case),
            str(out),
        ]
        print(
            f"$ {' '.join(f'{k}={v}' for k, v in SINGLE_THREAD_ENV.items())} {shlex.join(command)}",
            flush=True,
        )
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout, done.stderr, file=sys.stderr)
            raise SystemExit(f"{size}: the pipeline failed")
        result = json.loads(out.read_text())
        result["peak_rss_mib"] = round(_peak_rss_mib(done.stderr), 1)
        result["generate_s"] = round(made, 1)
        result["master_bytes"] = master.stat().st_size
        mp = size * size / 1e6
        result["mp_per_s"] = {
            stage: round(mp / s, 3) for stage, s in result["seconds"].items() if s > 0
        }
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "metrics"}, indent=2), flush=True)
        subprocess.run(["rm", "-rf", str(case)], check=False)
    if len(results) > 1:
        small, large = results[0]["peak_rss_mib"], results[-1]["peak_rss_mib"]
        print(f"peak RSS {small:.0f} MiB -> {large:.0f} MiB: {100 * (large / small - 1):+.1f}%")


if __name__ == "__main__":
    main()
