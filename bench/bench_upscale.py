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

from pathlib import Path

import numpy as np
from common import (
    TEST_DATASETS,
    Speeds,
    add_model_option,
    add_run_options,
    bench_parser,
    finish,
    load_models,
    mean_scores,
    megapixels,
    model_record,
    psnr_from_mse,
    set_threads,
    to_uint8,
    unit,
)
from PIL import Image


def hr_paths(set_name: str, scale: int) -> list[Path]:
    if set_name == "Set5":
        return sorted((TEST_DATASETS / "Set5" / "HR").glob("*.png"))
    if set_name == "Set14":
        return sorted((TEST_DATASETS / "Set14" / f"image_SRF_{scale}").glob("*_HR.png"))
    if set_name == "BSD100":
        return sorted((TEST_DATASETS / "BSD100" / "HR").glob("*.png"))
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
    return psnr_from_mse(float(mse), 255.0)


def main() -> None:
    parser = bench_parser(__doc__)
    add_model_option(
        parser, "an upscaler's safetensors (its scale is read from the weights); repeatable"
    )
    parser.add_argument("--sets", default="Set5,Set14,BSD100")
    parser.add_argument("--scales", default="2,4")
    parser.add_argument("--protocol", choices=("bicubic", "realistic"), default="bicubic")
    add_run_options(parser, Path("bench/results/upscale.json"))
    args = parser.parse_args()

    set_threads(args.threads)
    from daguerre.imaging.classical import lanczos_upscale
    from daguerre.models.training import degrade_for_upscale

    models = load_models("upscale", args.model)
    results: dict = {
        "protocol": args.protocol,
        "models": {
            label: model_record(m, path, scale=m.scale) for label, (m, path) in models.items()
        },
        "sets": {},
    }
    speeds = Speeds()
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
                    lr_f = degrade_for_upscale(unit(hr), scale, rng)
                    lr = to_uint8(lr_f)
                else:
                    lr = bicubic_lr(hr, scale)
                lr_f = unit(lr)
                mp = megapixels(lr)
                outs: dict[str, np.ndarray] = {}
                h, w = hr.shape[:2]
                with speeds.timing(f"bicubic x{scale}", mp):
                    outs["bicubic"] = np.asarray(Image.fromarray(lr).resize((w, h), Image.BICUBIC))
                with speeds.timing(f"lanczos x{scale}", mp):
                    outs["lanczos"] = to_uint8(lanczos_upscale(lr_f, scale))
                for label, (m, _) in models.items():
                    if m.scale != scale:
                        continue
                    with speeds.timing(label, mp):
                        outs[label] = to_uint8(m.run(lr_f))
                for label, out in outs.items():
                    rows.setdefault(label, []).append(y_psnr(hr, out, scale))
            summary: dict = mean_scores(rows)
            summary["images"] = len(paths)
            results["sets"].setdefault(f"x{scale}", {})[set_name] = summary
            print(f"x{scale}", set_name, summary, flush=True)
    finish(results, speeds, args.threads, args.out)


if __name__ == "__main__":
    main()
