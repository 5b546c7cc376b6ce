"""Bicubic super-resolution benchmark: our upscalers vs bicubic and Lanczos, Y-PSNR.

    .venv/bin/python bench/bench_upscale.py \
        --model x2=models/weights/daguerre-upscale-x2.safetensors \
        --model x4=models/weights/daguerre-upscale-x4.safetensors \
        [--model x2-real=...] [--sets Set5,Set14,BSD100] [--threads 2]

Protocol (../shared/datasets/README.md): crop HR to a multiple of the scale; LR by MATLAB-style
antialiased bicubic (PIL's BICUBIC, which matches MATLAB's imresize to 0.01 dB); PSNR on
Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 of the uint8 result, `scale` pixels cut at each
border. Single-channel images (Set14's bridge) are replicated to RGB. Every method sees the same
LR images in the same process; speed is megapixels of LR input per second (median per image).
`--protocol realistic` makes the LR instead with the realistic training degradation (random blur,
resize kernel, noise and JPEG; `daguerre.models.training.degrade_for_upscale`), seeded per image:
how the models fare on scan-like inputs (not comparable with published tables).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "test"


def hr_paths(set_name: str, scale: int) -> list[Path]:
    if set_name == "Set5":
        return sorted((DATASETS / "Set5" / "HR").glob("*.png"))
    if set_name == "Set14":
        return sorted((DATASETS / "Set14" / f"image_SRF_{scale}").glob("*_HR.png"))
    if set_name == "BSD100":
        return sorted((DATASETS / "BSD100" / "HR").glob("*.png"))
    raise ValueError(f"unknown set {set_name}")


def load_rgb(path: Path, scale: int) -> np.ndarray:
    img = np.asarray(Image.open(path).convert("RGB"))
    h, w = img.shape[0] // scale * scale, img.shape[1] // scale * scale
    return img[:h, :w]


def bicubic_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    h, w = hr.shape[:2]
    return np.asarray(Image.fromarray(hr).resize((w // scale, h // scale), Image.BICUBIC))


def y_psnr(hr: np.ndarray, out: np.ndarray, scale: int) -> float:
    def y(img: np.ndarray) -> np.ndarray:
        f = img.astype(np.float64)
        return 16.0 + (65.481 * f[..., 0] + 128.553 * f[..., 1] + 24.966 * f[..., 2]) / 255.0

    a, b = y(hr)[scale:-scale, scale:-scale], y(out)[scale:-scale, scale:-scale]
    mse = np.mean((a - b) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="LABEL=WEIGHTS",
        help="an upscaler's safetensors (its scale is read from the weights); repeatable",
    )
    parser.add_argument("--sets", default="Set5,Set14,BSD100")
    parser.add_argument("--scales", default="2,4")
    parser.add_argument("--limit", type=int, default=0, help="only the first N images per set")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--protocol", choices=("bicubic", "realistic"), default="bicubic")
    parser.add_argument("--out", type=Path, default=Path("bench/results/upscale.json"))
    args = parser.parse_args()

    import cv2
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    from daguerre.imaging.classical import lanczos_upscale
    from daguerre.models.loading import load_user_model
    from daguerre.models.training import degrade_for_upscale

    models = {}
    for item in args.model:
        label, _, path = item.partition("=")
        m = load_user_model("upscale", path, device="cpu")
        size = Path(path).stat().st_size
        models[label] = (m, size)

    results: dict = {
        "protocol": args.protocol,
        "models": {
            label: {
                "weights_sha256": m.weights_sha256,
                "scale": m.scale,
                "parameters": sum(p.numel() for p in m.module.parameters()),
                "file_bytes": size,
            }
            for label, (m, size) in models.items()
        },
        "sets": {},
    }
    speed: dict[str, list[float]] = {}
    for scale in (int(s) for s in args.scales.split(",")):
        for set_name in args.sets.split(","):
            paths = hr_paths(set_name, scale)
            if args.limit:
                paths = paths[: args.limit]
            rows: dict[str, list[float]] = {}
            for index, path in enumerate(paths):
                hr = load_rgb(path, scale)
                if args.protocol == "realistic":
                    rng = np.random.default_rng([index, scale, 3])
                    lr_f = degrade_for_upscale(hr.astype(np.float32) / 255.0, scale, rng)
                    lr = np.clip(np.round(lr_f * 255), 0, 255).astype(np.uint8)
                else:
                    lr = bicubic_lr(hr, scale)
                lr_f = lr.astype(np.float32) / 255.0
                mp = lr.shape[0] * lr.shape[1] / 1e6
                outs: dict[str, np.ndarray] = {}
                t0 = time.perf_counter()
                h, w = hr.shape[:2]
                outs["bicubic"] = np.asarray(Image.fromarray(lr).resize((w, h), Image.BICUBIC))
                speed.setdefault(f"bicubic x{scale}", []).append(mp / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                outs["lanczos"] = to_uint8(lanczos_upscale(lr_f, scale))
                speed.setdefault(f"lanczos x{scale}", []).append(mp / (time.perf_counter() - t0))
                for label, (m, _) in models.items():
                    if m.scale != scale:
                        continue
                    t0 = time.perf_counter()
                    outs[label] = to_uint8(m.run(lr_f))
                    speed.setdefault(label, []).append(mp / (time.perf_counter() - t0))
                for label, out in outs.items():
                    rows.setdefault(label, []).append(y_psnr(hr, out, scale))
            summary = {k: round(float(np.mean(v)), 2) for k, v in rows.items()}
            summary["images"] = len(paths)
            results["sets"].setdefault(f"x{scale}", {})[set_name] = summary
            print(f"x{scale}", set_name, summary, flush=True)
    results["mp_per_s_median"] = {k: round(statistics.median(v), 3) for k, v in speed.items()}
    results["threads"] = args.threads
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results["mp_per_s_median"]))


if __name__ == "__main__":
    main()
