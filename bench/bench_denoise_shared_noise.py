"""Colour denoisers on noise shared by the channels (luminance grain) and on independent noise.

    .venv/bin/python bench/bench_denoise_shared_noise.py \\
        models/weights/daguerre-denoise-s.safetensors [OTHER.safetensors ...] [--images 16]

Real scans carry mostly luminance grain: the same noise on R, G and B. The standard protocol
(independent noise per channel) does not show how a colour model handles it. Images: the first
N of ../shared/datasets/train/T91, which our denoisers never trained on (not a test set); seed =
image index; the true sigma is given; RGB PSNR of the 8-bit result. Every model sees the same
noisy images.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from common import DATASETS, psnr_from_mse, set_threads, unit

from daguerre.models.loading import load_user_model
from daguerre.models.training import read_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    models = {path: load_user_model("denoise", path, device="cpu") for path in args.weights}
    files = sorted((DATASETS / "train" / "T91").iterdir())[: args.images]
    results: dict = {}
    for shared in (False, True):
        for sigma in (15, 25, 50):
            scores: dict[str, list[float]] = {path: [] for path in models}
            for index, path in enumerate(files):
                clean = unit(read_image(path))
                rng = np.random.default_rng(index)
                shape = clean.shape[:2] + ((1,) if shared else (clean.shape[2],))
                noisy = (clean + rng.normal(0.0, sigma / 255.0, shape)).astype(np.float32)
                for label, model in models.items():
                    out = np.clip(np.round(model.run(noisy, noise_sigma=sigma) * 255), 0, 255)
                    mse = float(np.mean((clean.astype(np.float64) * 255 - out) ** 2))
                    scores[label].append(psnr_from_mse(mse, 255.0))
            key = f"{'shared' if shared else 'independent'} {sigma}"
            results[key] = {k: round(float(np.mean(v)), 3) for k, v in scores.items()}
            print(key, json.dumps(results[key]), flush=True)


if __name__ == "__main__":
    main()
