"""Colorization benchmark: CBSD68 turned grey, colour restored, scored against the originals.

    .venv/bin/python bench/bench_colorize.py \
        --model unet=models/weights/daguerre-colorize-s.safetensors \
        [--temperatures 0.25,0.5] [--limit N] [--threads 2] \
        [--real ../shared/datasets/real/grayscale_to_colorize]

Every method gets the BT.601 luma of each CBSD68 image (8-bit, one channel) and returns RGB,
rounded to 8 bits. Scores, per method (means over the images):
- RGB PSNR against the original colour image;
- colourfulness (Hasler and Suesstrunk 2003, on 0-255 values: sqrt(std_rg^2 + std_yb^2)
  + 0.3 sqrt(mean_rg^2 + mean_yb^2), rg = R - G, yb = (R + G) / 2 - B), also of the originals.
Baselines: "grey" (the input itself) and "sepia" (one global a*b* offset on the grey's CIELAB
L, tuned by grid search for mean PSNR on 20 BSDS500-train images, never on the test set).
Models run through `LoadedModel.run` (their own annealed-mean temperature); `--temperatures`
adds the same models decoded at other temperatures ("LABEL@T"), to choose one.
Speed: megapixels per second (median per image).
With --real, each grey photo of the folder goes through the pipeline's colorize operator (the
model sees a view of at most 1024 px; its chroma is laid on the full-resolution lightness) and
is written beside its grey input to bench/results/colorize_real/ to look at (no ground truth).
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from common import (
    DATASETS,
    TEST_DATASETS,
    Speeds,
    add_model_option,
    add_run_options,
    bench_parser,
    load_images,
    load_models,
    megapixels,
    model_record,
    psnr_from_mse,
    quantise,
    set_threads,
    unit,
    write_results,
)

from daguerre.models.arch import colorize as col

TEST_SET = TEST_DATASETS / "CBSD68"
TUNE_SET = DATASETS / "train" / "BSDS500-train"
REAL_OUT = Path("bench/results/colorize_real")

Colorizer = Callable[[np.ndarray], np.ndarray]  # (H, W, 1) grey in [0, 1] -> (H, W, 3)


def load_rgb(folder: Path, limit: int, suffixes: tuple[str, ...]) -> list[np.ndarray]:
    """The first `limit` images (0: all) of `folder` as float32 RGB in [0, 1]."""
    return [unit(img) for img in load_images(folder, True, limit, suffixes)]


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W, 1) BT.601 luma, rounded to 8 bits (a grey scan)."""
    luma = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    return (np.round(np.clip(luma, 0, 1) * 255) / 255).astype(np.float32)[..., None]


def psnr(out: np.ndarray, ref: np.ndarray) -> float:
    mse = float(((out.astype(np.float64) - ref) ** 2).mean())
    return 99.0 if mse <= 1e-12 else psnr_from_mse(mse)


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler and Suesstrunk (2003) colourfulness of (H, W, 3) [0, 1] RGB, on 0-255 values."""
    r, g, b = (rgb[..., k].astype(np.float64) * 255 for k in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _nchw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]


def _lightness(grey: np.ndarray) -> torch.Tensor:
    return col.rgb_to_lab(_nchw(np.repeat(grey, 3, axis=2)))[:, :1]


def tint(grey: np.ndarray, a: float, b: float) -> np.ndarray:
    """The grey's CIELAB L with a constant a*, b* (chroma shrunk where out of gamut)."""
    lightness = _lightness(grey)
    ab = torch.tensor([a, b], dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, *grey.shape[:2])
    rgb = col.lab_to_rgb_in_gamut(torch.cat([lightness, ab], dim=1))
    return rgb[0].permute(1, 2, 0).numpy()


def tune_sepia(images: list[np.ndarray]) -> tuple[float, float]:
    """The a*, b* offset maximising mean PSNR over `images` (coarse grid, then a finer one).
    Images are shrunk 4x: a global tint's PSNR hardly depends on resolution."""
    small = [cv2.resize(i, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA) for i in images]
    pairs = [(to_grey(i), i) for i in small]

    def score(a: float, b: float) -> float:
        return statistics.fmean(psnr(tint(g, a, b), i) for g, i in pairs)

    coarse = [(a, b) for a in range(-4, 17, 2) for b in range(-4, 31, 2)]
    best = max(coarse, key=lambda t: score(*t))
    fine = [(best[0] + da / 2, best[1] + db / 2) for da in range(-4, 5) for db in range(-4, 5)]
    a, b = max(fine, key=lambda t: score(*t))
    return float(a), float(b)


def _at_temperature(module: col.ColorizeUNet, temperature: float) -> Colorizer:
    """The model decoded at `temperature`, padded like LoadedModel.run (reflect to 8)."""

    def run(grey: np.ndarray) -> np.ndarray:
        h, w = grey.shape[:2]
        x = _nchw(np.repeat(grey, 3, axis=2))
        ph, pw = -h % col.MULTIPLE_OF, -w % col.MULTIPLE_OF
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        with torch.inference_mode():
            y = module.colorize(x.contiguous(memory_format=torch.channels_last), temperature)
        return y[0, :, :h, :w].permute(1, 2, 0).numpy()

    return run


def _side_by_side(folder: Path, models: dict, out: Path, long_edge: int = 720) -> None:
    """Each grey photo beside its colorizations, labelled, one PNG per photo."""
    from daguerre import operators

    out.mkdir(parents=True, exist_ok=True)
    ops = {label: operators.LearnedOperator("colorize", m) for label, m in models.items()}
    for path in sorted(folder.iterdir()):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            continue
        grey = to_grey(unit(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)))
        panels = [("grey", np.repeat(grey, 3, axis=2))]
        for label, op in ops.items():
            t0 = time.perf_counter()
            panels.append((label, op.apply(grey, {}, operators.StageContext()).pixels))
            print(f"{path.name} {label}: {time.perf_counter() - t0:.2f} s", flush=True)
        f = min(1.0, long_edge / max(grey.shape[:2]))
        row = []
        for label, panel in panels:
            small = cv2.resize(panel, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
            rgb8 = (np.clip(small, 0, 1) * 255).round().astype(np.uint8)
            bgr = np.ascontiguousarray(rgb8[..., ::-1])
            cv2.putText(bgr, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 3)
            cv2.putText(bgr, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1)
            row.append(bgr)
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("_")
        cv2.imwrite(str(out / f"{name}.png"), np.hstack(row))


def main() -> None:
    parser = bench_parser(__doc__)
    add_model_option(parser)
    parser.add_argument("--temperatures", default="", help="extra decodings, e.g. 0.25,0.5")
    parser.add_argument("--tune-images", type=int, default=20)
    parser.add_argument("--real", type=Path, default=None, help="folder of grey photos")
    add_run_options(parser, Path("bench/results/colorize.json"), "only the first N images")
    args = parser.parse_args()

    set_threads(args.threads)
    t0 = time.perf_counter()
    sepia = tune_sepia(load_rgb(TUNE_SET, args.tune_images, (".jpg", ".png")))
    print(f"sepia a*={sepia[0]} b*={sepia[1]} (tuned in {time.perf_counter() - t0:.0f} s)")
    methods: dict[str, Colorizer] = {
        "grey": lambda g: np.repeat(g, 3, axis=2),
        "sepia": lambda g: tint(g, *sepia),
    }
    results: dict = {"sepia_ab": list(sepia), "models": {}}
    loaded = {}
    for label, (model, path) in load_models("colorize", args.model).items():
        loaded[label] = model
        results["models"][label] = model_record(model, path)
        methods[label] = lambda g, model=model: model.run(g)
        for t in filter(None, args.temperatures.split(",")):
            methods[f"{label}@{float(t)}"] = _at_temperature(model.module, float(t))

    images = load_rgb(TEST_SET, args.limit, (".png",))
    scores: dict[str, dict[str, list[float]]] = {
        k: {"psnr": [], "colourfulness": []} for k in methods
    }
    speeds = Speeds(methods)
    for img in images:
        grey = to_grey(img)
        for label, colorize in methods.items():
            with speeds.timing(label, megapixels(img)):
                out = colorize(grey)
            out = quantise(out)
            scores[label]["psnr"].append(psnr(out, img))
            scores[label]["colourfulness"].append(colourfulness(out))
    summary = {
        label: {
            "psnr": round(statistics.fmean(s["psnr"]), 2),
            "colourfulness": round(statistics.fmean(s["colourfulness"]), 1),
            "mp_per_s": speeds.median(label),
        }
        for label, s in scores.items()
    }
    summary["originals"] = {"colourfulness": round(statistics.fmean(map(colourfulness, images)), 1)}
    results["CBSD68"] = {"images": len(images), **summary}
    results["threads"] = args.threads
    print(json.dumps(results["CBSD68"], indent=1), flush=True)
    if args.real is not None:
        _side_by_side(args.real, loaded, REAL_OUT)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
