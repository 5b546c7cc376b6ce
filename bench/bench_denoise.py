"""Gaussian denoising benchmark: our learned denoiser vs OpenCV non-local means vs BM3D.

    .venv/bin/python bench/bench_denoise.py \
        --weights models/weights/daguerre-denoise-s.safetensors \
        [--grey-weights models/weights/daguerre-denoise-grey-s.safetensors] \
        [--grey-baseline OTHER_GREY_WEIGHTS] \
        [--sets BSD68,Set12,CBSD68] [--sigmas 15,25,50] [--bm3d-images 5] [--threads 2] \
        [--ensemble 8]

Protocol (../shared/datasets/README.md): clean uint8 image scaled to [0, 1]; per image, seed 0,
then add N(0, (sigma/255)^2) noise; the noisy input is not clipped; PSNR of the uint8 result, no
border cut; colour results are RGB PSNR. Every method sees the same noisy images in the same run.
Our model gets the true sigma (non-blind, as FFDNet is reported) and, separately, the sigma that
detection estimates (blind, as the pipeline runs it). With --grey-weights, grey images go to
that model, as the pipeline sends one-band masters to a shipped grey model; the colour model's
scores on them are kept beside ("colour_model"). With --ensemble N, the same model averaged over
N flips/turns (`--ensemble` of the pipeline) is scored and timed beside ("model_xN"). With
--grey-baseline (--colour-baseline), another grey (colour) model is scored and timed on the same
grey (colour) images beside ("grey_baseline", "grey_baseline_xN"; "colour_baseline", ...): a new
model against the shipped one. BM3D is slow (about 12 s per image here), so it runs on the first
N images of each set; the other methods are also reported on that subset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from common import (
    Speeds,
    add_run_options,
    bench_parser,
    finish,
    load_test_set,
    mean_scores,
    megapixels,
    psnr_from_mse,
    set_threads,
    unit,
)

SUFFIXES = (".png", ".jpg", ".bmp", ".tif")


def psnr_uint8(clean: np.ndarray, restored: np.ndarray) -> float:
    out = np.clip(np.round(restored * 255.0), 0, 255)
    mse = np.mean((clean.astype(np.float64) - out) ** 2)
    return psnr_from_mse(float(mse), 255.0)


def noisy_version(clean: np.ndarray, sigma: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = unit(clean)
    return (x + rng.normal(0.0, sigma / 255.0, x.shape)).astype(np.float32)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--grey-weights", type=Path, default=None)
    parser.add_argument("--grey-baseline", type=Path, default=None)
    parser.add_argument("--colour-baseline", type=Path, default=None)
    parser.add_argument("--sets", default="BSD68,Set12,CBSD68")
    parser.add_argument("--sigmas", default="15,25,50")
    parser.add_argument("--bm3d-images", type=int, default=5)
    parser.add_argument(
        "--ensemble", type=int, default=1, help="also the model averaged over N flips/turns"
    )
    add_run_options(
        parser, Path("bench/results/denoise.json"), "use only the first N images per set"
    )
    args = parser.parse_args()

    set_threads(args.threads)
    from daguerre.imaging.classical import nlm_denoise
    from daguerre.imaging.detect import estimate_noise_sigma
    from daguerre.models.loading import load_user_model

    colour = load_user_model("denoise", str(args.weights), device="cpu")
    grey = None
    if args.grey_weights is not None:
        grey = load_user_model("denoise", str(args.grey_weights), device="cpu")
    # Other models scored beside on the images of their kind (channels): new against shipped.
    baselines = {
        channels: (f"{kind}_baseline", load_user_model("denoise", str(path), device="cpu"))
        for channels, kind, path in (
            (1, "grey", args.grey_baseline),
            (3, "colour", args.colour_baseline),
        )
        if path is not None
    }
    try:
        import bm3d
    except ImportError:  # the `bench` extra
        bm3d = None

    results: dict = {
        "weights_sha256": colour.weights_sha256,
        "model_id": colour.model_id,
        "grey_weights_sha256": grey.weights_sha256 if grey is not None else None,
        **{f"{key}_sha256": net.weights_sha256 for key, net in baselines.values()},
        "sets": {},
    }
    ensembled = f"model_x{args.ensemble}"
    base_keys = [key for key, _ in baselines.values()]
    timed = ["model", "nlm", "bm3d", *base_keys]
    if args.ensemble > 1:
        timed += [ensembled, *(f"{key}_x{args.ensemble}" for key in base_keys)]
    speeds = Speeds(tuple(timed))
    for set_name in args.sets.split(","):
        images = load_test_set(set_name, args.limit, SUFFIXES, skip_unreadable=True)
        for sigma in (float(s) for s in args.sigmas.split(",")):
            rows: dict[str, list[float]] = {
                k: []
                for k in (
                    "noisy",
                    "model",
                    "model_blind",
                    ensembled,
                    "colour_model",
                    *base_keys,
                    *(f"{key}_x{args.ensemble}" for key in base_keys),
                    "nlm",
                    "nlm_sub",
                    "model_sub",
                    "bm3d_sub",
                )
            }
            for index, clean in enumerate(images):
                noisy = noisy_version(clean, sigma)
                mp = megapixels(clean)
                rows["noisy"].append(psnr_uint8(clean, np.clip(noisy, 0, 1)))
                model = grey if grey is not None and clean.shape[2] == 1 else colour
                if model is not colour:
                    rows["colour_model"].append(
                        psnr_uint8(clean, colour.run(noisy, noise_sigma=sigma))
                    )
                nets = [(model, "model", ensembled)]
                if clean.shape[2] in baselines:
                    key, net = baselines[clean.shape[2]]
                    nets.append((net, key, f"{key}_x{args.ensemble}"))
                for net, key, key_ensembled in nets:  # once, and averaged with --ensemble
                    for passes, label in ((1, key), (args.ensemble, key_ensembled)):
                        if label == key or passes > 1:
                            with speeds.timing(label, mp):
                                out = net.run(noisy, noise_sigma=sigma, ensemble=passes)
                            rows[label].append(psnr_uint8(clean, out))
                estimated = estimate_noise_sigma(np.clip(noisy, 0, 1))
                rows["model_blind"].append(
                    psnr_uint8(clean, model.run(noisy, noise_sigma=estimated))
                )
                with speeds.timing("nlm", mp):
                    nlm = nlm_denoise(np.clip(noisy, 0, 1), sigma, bit_depth=8)
                rows["nlm"].append(psnr_uint8(clean, nlm))
                if bm3d is not None and index < args.bm3d_images:
                    with speeds.timing("bm3d", mp):
                        if clean.shape[2] == 3:
                            b = bm3d.bm3d_rgb(noisy, sigma / 255.0)
                        else:
                            b = bm3d.bm3d(noisy[..., 0], sigma / 255.0)[..., None]
                    rows["bm3d_sub"].append(psnr_uint8(clean, b))
                    rows["model_sub"].append(rows["model"][-1])
                    rows["nlm_sub"].append(rows["nlm"][-1])
            summary: dict = mean_scores(rows)
            summary["images"] = len(images)
            results["sets"].setdefault(set_name, {})[str(int(sigma))] = summary
            print(set_name, int(sigma), summary, flush=True)
    finish(results, speeds, args.threads, args.out)


if __name__ == "__main__":
    main()
