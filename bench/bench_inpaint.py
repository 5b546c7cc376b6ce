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

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from daguerre.imaging import degrade as dg
from daguerre.imaging.classical import telea_inpaint

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "test"
SETS = {"CBSD68": True, "BSD68": False}

Inpainter = Callable[[np.ndarray, np.ndarray], np.ndarray]


def load_set(name: str, limit: int) -> list[np.ndarray]:
    colour = SETS[name]
    paths = sorted(p for p in (DATASETS / name).rglob("*") if p.suffix.lower() == ".png")
    out = []
    for path in paths[: limit or None]:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if colour else img[..., None]
        out.append(img.astype(np.float32) / 255.0)
    return out


def damage_kinds() -> dict[str, dg.DegradationConfig]:
    base = replace(dg.inpainting_training_config(), p_stains=0.0, p_tears_folds=0.0)
    return {
        "thin": replace(base, p_scratches=1.0, p_dust=1.0),
        "blotches": replace(base, p_scratches=0.0, p_dust=0.0, p_stains=1.0),
    }


def _quantise(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0, 1) * 255) / np.float32(255)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", default=[], metavar="LABEL=WEIGHTS")
    parser.add_argument("--sets", default="CBSD68,BSD68")
    parser.add_argument("--limit", type=int, default=0, help="only the first N images per set")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/inpaint.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    from daguerre.models.loading import load_user_model

    methods: dict[str, Inpainter] = {
        "telea": lambda img, m: telea_inpaint(img, m, 3, "telea"),
        "navier-stokes": lambda img, m: telea_inpaint(img, m, 3, "ns"),
    }
    results: dict = {"models": {}, "sets": {}}
    for item in args.model:
        label, _, path = item.partition("=")
        model = load_user_model("inpaint", path, device="cpu")
        results["models"][label] = {
            "weights_sha256": model.weights_sha256,
            "parameters": sum(p.numel() for p in model.module.parameters()),
            "file_bytes": Path(path).stat().st_size,
        }
        methods[label] = lambda img, m, model=model: model.run(img, mask=m)

    speed: dict[str, list[float]] = {k: [] for k in methods}
    for set_name in args.sets.split(","):
        images = load_set(set_name, args.limit)
        summary: dict = {"images": len(images)}
        for k_index, (kind, cfg) in enumerate(damage_kinds().items()):
            sq = dict.fromkeys(methods, 0.0)
            count = 0
            for index, clean in enumerate(images):
                out = dg.degrade(clean, np.random.default_rng([index, k_index, 11]), cfg)
                assert out.before_damage is not None
                damaged, mask = _quantise(out.image), out.damage_mask
                target = _quantise(out.before_damage)
                if not mask.any():
                    continue
                count += int(mask.sum()) * clean.shape[2]
                for label, fill in methods.items():
                    t0 = time.perf_counter()
                    filled = np.round(np.clip(fill(damaged, mask), 0, 1) * 255) / 255.0
                    seconds = time.perf_counter() - t0
                    speed[label].append(clean.shape[0] * clean.shape[1] / 1e6 / seconds)
                    if not np.array_equal(filled[~mask], damaged[~mask]):
                        raise AssertionError(f"{label} changed pixels outside the mask")
                    sq[label] += float(((filled - target)[mask] ** 2).sum())
            summary[kind] = {
                label: round(10 * math.log10(1.0 / max(total / max(count, 1), 1e-12)), 2)
                for label, total in sq.items()
            }
            summary[kind]["masked_pct"] = round(
                100 * count / clean.shape[2] / sum(i.shape[0] * i.shape[1] for i in images), 2
            )
        results["sets"][set_name] = summary
        print(set_name, json.dumps(summary), flush=True)
    results["mp_per_s_median"] = {k: round(statistics.median(v), 3) for k, v in speed.items() if v}
    results["threads"] = args.threads
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results["mp_per_s_median"]))


if __name__ == "__main__":
    main()
