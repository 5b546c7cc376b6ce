"""Tiling overhead: each classical operator on a 4000 x 3000 image, tiled vs whole.

    .venv/bin/python bench/bench_tiling.py [--runs 3] [--width 4000] [--height 3000] [--stages ...]
    .venv/bin/python bench/bench_tiling.py --runs 5 --stages upscale    # Lanczos only

"whole" calls the pure function on the in-memory image; "tiled" runs the same operator through
`daguerre.operators.run_operator` (the path every pipeline stage takes) with its default tiles,
from an in-memory source into an in-memory sink, so the difference is the tiling itself: reads
with context, blending, and for auto-tone the streamed histogram. Single-threaded (OpenCV and
libvips 1 thread). Median of N runs; megapixels per second of input. Also the process CPU
time (user + system) of each: on a machine busy with other work the wall time swings with the
scheduler, the CPU time much less, so the CPU overhead is the steadier reading there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("VIPS_CONCURRENCY", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _image(width: int, height: int):
    import cv2
    import numpy as np
    from skimage import data

    photo = cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(0)
    img = photo.astype(np.float32) / 255 * 0.7 + 0.1  # faded, so auto-tone has work
    img += rng.normal(0, 8 / 255, img.shape).astype(np.float32)
    mask = np.zeros((height, width), bool)
    for k in range(12):  # thin scratches across the frame
        y = int(rng.integers(0, height - 3))
        mask[y : y + 2, int(rng.integers(0, width // 2)) : int(rng.integers(width // 2, width))] = (
            True
        )
        x = int(rng.integers(0, width - 3))
        mask[
            int(rng.integers(0, height // 2)) : int(rng.integers(height // 2, height)), x : x + 2
        ] = k % 2 == 0
    img[mask] = 0.05
    return np.clip(img, 0, 1).astype(np.float32), mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--stages", default="denoise,inpaint,tone,upscale")
    args = parser.parse_args()

    import cv2

    cv2.setNumThreads(1)
    from daguerre.imaging import classical
    from daguerre.imaging.tiling import ArraySink, ArraySource
    from daguerre.operators import (
        AutoTone,
        LanczosUpscale,
        NlmDenoise,
        StageContext,
        TeleaInpaint,
        run_operator,
    )

    img, mask = _image(args.width, args.height)
    mp = args.width * args.height / 1e6
    cases = [
        ("denoise (NLM, sigma 8)", NlmDenoise(), {"sigma": 8.0}, StageContext(bit_depth=8),
         lambda: classical.nlm_denoise(img, 8.0, bit_depth=8)),
        ("inpaint (Telea, r 3)", TeleaInpaint(), {"radius": 3}, StageContext(damage_mask=mask),
         lambda: classical.telea_inpaint(img, mask, radius=3)),
        ("tone (auto levels)", AutoTone(), {}, StageContext(),
         lambda: classical.auto_tone(img)),
        ("upscale (Lanczos x2)", LanczosUpscale(), {"scale": 2}, StageContext(),
         lambda: classical.lanczos_upscale(img, 2)),
    ]  # fmt: skip
    rows = []
    wanted = set(args.stages.split(","))
    for name, op, params, ctx, whole_fn in cases:
        if op.stage not in wanted:
            continue
        scale = int(params.get("scale", 1))

        def tiled(op=op, params=params, ctx=ctx, scale=scale):
            sink = ArraySink(args.width * scale, args.height * scale)
            run = run_operator(op, ArraySource(img), sink, params, ctx)
            return sink.result(), run.stats.tiles

        whole_times, tiled_times, whole_cpu, tiled_cpu, tiles, worst = [], [], [], [], 0, 0.0
        for _ in range(args.runs):
            c0, t0 = time.process_time(), time.perf_counter()
            expected = whole_fn()
            whole_times.append(time.perf_counter() - t0)
            whole_cpu.append(time.process_time() - c0)
            c0, t0 = time.process_time(), time.perf_counter()
            got, tiles = tiled()
            tiled_times.append(time.perf_counter() - t0)
            tiled_cpu.append(time.process_time() - c0)
            worst = max(worst, float(abs(got - expected).max()))
            del expected, got
        whole, tile_t = statistics.median(whole_times), statistics.median(tiled_times)
        whole_c, tile_c = statistics.median(whole_cpu), statistics.median(tiled_cpu)
        row = {
            "stage": name,
            "whole_s": round(whole, 3),
            "tiled_s": round(tile_t, 3),
            "overhead_pct": round(100 * (tile_t / whole - 1), 1),
            "whole_cpu_s": round(whole_c, 3),
            "tiled_cpu_s": round(tile_c, 3),
            "cpu_overhead_pct": round(100 * (tile_c / whole_c - 1), 1),
            "tiles": tiles,
            "whole_mp_per_s": round(mp / whole, 2),
            "tiled_mp_per_s": round(mp / tile_t, 2),
            "max_abs_diff": worst,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"{args.width}x{args.height}, median of {args.runs}, 1 thread")
    print(
        f"{'stage':24} {'whole s':>8} {'tiled s':>8} {'overhead':>9} {'tiles':>5} {'MP/s':>6}"
        f" {'cpu overhead':>12}"
    )
    for r in rows:
        print(
            f"{r['stage']:24} {r['whole_s']:8.2f} {r['tiled_s']:8.2f} "
            f"{r['overhead_pct']:+8.1f}% {r['tiles']:5d} {r['tiled_mp_per_s']:6.2f}"
            f" {r['cpu_overhead_pct']:+11.1f}%"
        )


if __name__ == "__main__":
    main()
