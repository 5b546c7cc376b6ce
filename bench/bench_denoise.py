"""Gaussian denoising benchmark: our learned denoiser vs OpenCV non-local means vs BM3D.

    .venv/bin/python bench/bench_denoise.py \
        --weights models/weights/daguerre-denoise-s.safetensors \
        [--sets BSD68,Set12,CBSD68] [--sigmas 15,25,50] [--bm3d-images 5] [--threads 2]

Protocol (../shared/datasets/README.md): clean uint8 image scaled to [0, 1]; per image, seed 0,
then add N(0, (sigma/255)^2) noise; the noisy input is not clipped; PSNR of the uint8 result, no
border cut; colour results are RGB PSNR. Every method sees the same noisy images in the same run.
Our model gets the true sigma (non-blind, as FFDNet is reported) and, separately, the sigma that
detection estimates (blind, as the pipeline runs it). BM3D is slow (about 12 s per image here),
so it runs on the first N images of each set; the other methods are also reported on that subset.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "test"
SETS = {"BSD68": ("BSD68", False), "Set12": ("Set12", False), "CBSD68": ("CBSD68", True)}


def load_set(name: str) -> list[tuple[str, np.ndarray]]:
    folder, colour = SETS[name]
    paths = sorted(
        p
        for p in (DATASETS / folder).rglob("*")
        if p.suffix.lower() in {".png", ".jpg", ".bmp", ".tif"}
    )
    images = []
    for path in paths:
        flag = cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE
        img = cv2.imread(str(path), flag)
        if img is None:
            continue
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if colour else img[..., None]
        images.append((path.name, img))
    return images


def psnr_uint8(clean: np.ndarray, restored: np.ndarray) -> float:
    out = np.clip(np.round(restored * 255.0), 0, 255)
    mse = np.mean((clean.astype(np.float64) - out) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def noisy_version(clean: np.ndarray, sigma: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = clean.astype(np.float32) / 255.0
    return (x + rng.normal(0.0, sigma / 255.0, x.shape)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--sets", default="BSD68,Set12,CBSD68")
    parser.add_argument("--sigmas", default="15,25,50")
    parser.add_argument("--bm3d-images", type=int, default=5)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images per set")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/denoise.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    from daguerre.imaging.classical import nlm_denoise
    from daguerre.imaging.detect import estimate_noise_sigma
    from daguerre.models.loading import load_user_model

    model = load_user_model("denoise", str(args.weights), device="cpu")
    try:
        import bm3d
    except ImportError:  # the `bench` extra
        bm3d = None

    results: dict = {"weights_sha256": model.weights_sha256, "model_id": model.model_id, "sets": {}}
    speed: dict[str, list[float]] = {"model": [], "nlm": [], "bm3d": []}
    for set_name in args.sets.split(","):
        images = load_set(set_name)
        if args.limit:
            images = images[: args.limit]
        for sigma in (float(s) for s in args.sigmas.split(",")):
            rows: dict[str, list[float]] = {
                k: []
                for k in (
                    "noisy",
                    "model",
                    "model_blind",
                    "nlm",
                    "nlm_sub",
                    "model_sub",
                    "bm3d_sub",
                )
            }
            for index, (_name, clean) in enumerate(images):
                noisy = noisy_version(clean, sigma)
                mp = clean.shape[0] * clean.shape[1] / 1e6
                rows["noisy"].append(psnr_uint8(clean, np.clip(noisy, 0, 1)))
                t0 = time.perf_counter()
                out = model.run(noisy, noise_sigma=sigma)
                speed["model"].append(mp / (time.perf_counter() - t0))
                rows["model"].append(psnr_uint8(clean, out))
                estimated = estimate_noise_sigma(np.clip(noisy, 0, 1))
                rows["model_blind"].append(
                    psnr_uint8(clean, model.run(noisy, noise_sigma=estimated))
                )
                t0 = time.perf_counter()
                nlm = nlm_denoise(np.clip(noisy, 0, 1), sigma, bit_depth=8)
                speed["nlm"].append(mp / (time.perf_counter() - t0))
                rows["nlm"].append(psnr_uint8(clean, nlm))
                if bm3d is not None and index < args.bm3d_images:
                    t0 = time.perf_counter()
                    if clean.shape[2] == 3:
                        b = bm3d.bm3d_rgb(noisy, sigma / 255.0)
                    else:
                        b = bm3d.bm3d(noisy[..., 0], sigma / 255.0)[..., None]
                    speed["bm3d"].append(mp / (time.perf_counter() - t0))
                    rows["bm3d_sub"].append(psnr_uint8(clean, b))
                    rows["model_sub"].append(rows["model"][-1])
                    rows["nlm_sub"].append(rows["nlm"][-1])
            summary = {k: round(float(np.mean(v)), 2) for k, v in rows.items() if v}
            summary["images"] = len(images)
            results["sets"].setdefault(set_name, {})[str(int(sigma))] = summary
            print(set_name, int(sigma), summary, flush=True)
    results["mp_per_s_median"] = {k: round(statistics.median(v), 3) for k, v in speed.items() if v}
    results["threads"] = args.threads
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results["mp_per_s_median"]))


if __name__ == "__main__":
    main()
