"""Inpainting benchmark: learned inpainters vs OpenCV Telea and Navier-Stokes, masked PSNR.

    .venv/bin/python bench/bench_inpaint.py \
        --model unet=models/weights/daguerre-inpaint-s.safetensors \
        [--sets CBSD68,BSD68] [--threads 2] [--limit N]

Damage is drawn by `daguerre.imaging.degrade` over the test images (aged by the old-photo
chain's tone and optics steps first) with a fixed seed per image, in two kinds:
- "thin": scratches (1-4 px) and dust (0.5-4 px) only;
- "blotches": stains (10-60 px, soft edges, uneven interiors) only.
Every method gets the damaged image and the true mask, and is scored by PSNR over the masked
pixels against the image before the damage (the set's squared errors pooled, then PSNR).
Speed: megapixels of image per second (median per image).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import (
    Speeds,
    add_model_option,
    add_run_options,
    bench_parser,
    finish,
    load_models,
    load_test_set,
    megapixels,
    model_record,
    psnr_from_mse,
    quantise,
    set_threads,
    unit,
)

from daguerre.imaging import degrade as dg
from daguerre.imaging.classical import telea_inpaint

Inpainter = Callable[[np.ndarray, np.ndarray], np.ndarray]


def damage_kinds() -> dict[str, dg.DegradationConfig]:
    base = replace(dg.inpainting_training_config(), p_stains=0.0, p_tears_folds=0.0)
    return {
        "thin": replace(base, p_scratches=1.0, p_dust=1.0),
        "blotches": replace(base, p_scratches=0.0, p_dust=0.0, p_stains=1.0),
    }


def main() -> None:
    parser = bench_parser(__doc__)
    add_model_option(parser)
    parser.add_argument("--sets", default="CBSD68,BSD68")
    add_run_options(parser, Path("bench/results/inpaint.json"))
    args = parser.parse_args()

    set_threads(args.threads)
    methods: dict[str, Inpainter] = {
        "telea": lambda img, m: telea_inpaint(img, m, 3, "telea"),
        "navier-stokes": lambda img, m: telea_inpaint(img, m, 3, "ns"),
    }
    results: dict = {"models": {}, "sets": {}}
    for label, (model, path) in load_models("inpaint", args.model).items():
        results["models"][label] = model_record(model, path)
        methods[label] = lambda img, m, model=model: model.run(img, mask=m)

    speeds = Speeds(methods)
    for set_name in args.sets.split(","):
        images = [unit(img) for img in load_test_set(set_name, args.limit)]
        summary: dict = {"images": len(images)}
        for k_index, (kind, cfg) in enumerate(damage_kinds().items()):
            sq = dict.fromkeys(methods, 0.0)
            count = 0
            for index, clean in enumerate(images):
                out = dg.degrade(clean, np.random.default_rng([index, k_index, 11]), cfg)
                assert out.before_damage is not None
                damaged, mask = quantise(out.image), out.damage_mask
                target = quantise(out.before_damage)
                if not mask.any():
                    continue
                count += int(mask.sum()) * clean.shape[2]
                for label, fill in methods.items():
                    with speeds.timing(label, megapixels(clean)):
                        filled = quantise(fill(damaged, mask))
                    if not np.array_equal(filled[~mask], damaged[~mask]):
                        raise AssertionError(f"{label} changed pixels outside the mask")
                    sq[label] += float(((filled - target)[mask] ** 2).sum())
            summary[kind] = {
                label: round(psnr_from_mse(max(total / max(count, 1), 1e-12)), 2)
                for label, total in sq.items()
            }
            summary[kind]["masked_pct"] = round(
                100 * count / clean.shape[2] / sum(i.shape[0] * i.shape[1] for i in images), 2
            )
        results["sets"][set_name] = summary
        print(set_name, json.dumps(summary), flush=True)
    finish(results, speeds, args.threads, args.out)


if __name__ == "__main__":
    main()
