"""How well detection's noise estimate reads the sigma of clipped 8-bit files.

    .venv/bin/python bench/bench_noise_estimate.py [--limit 30] [--sigmas 0,5,15,25,35,50,75]

Gaussian noise of each sigma (seed = image index) is added to training photos
(train/BSDS500-train, grey and colour; the denoiser benchmarks' test sets are left alone),
clipped to [0, 1] and rounded to 8 bits, as a scanned file is. Each estimator reads the noisy
image; the table gives the mean and standard deviation of its estimate over the images, and
its mean absolute error. Baseline in the same run: scikit-image's `estimate_sigma` (Donoho's
wavelet MAD over all coefficients, averaged over channels), which Daguerre used before it
left out the coefficients near black and white. The learned denoisers are steered by this
estimate, so its error at sigma 50 is PSNR lost (see the `blind` column of bench_denoise.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from common import DATASETS, add_run_options, bench_parser, load_images, set_threads, unit

TRAIN_SET = DATASETS / "train" / "BSDS500-train"


def _clipped_noisy(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = unit(clean)
    noisy = np.clip(x + rng.normal(0.0, sigma / 255.0, x.shape), 0, 1)
    return (np.round(noisy * 255) / 255).astype(np.float32)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--sigmas", default="0,5,15,25,35,50,75")
    add_run_options(parser, Path("bench/results/noise_estimate.json"))
    args = parser.parse_args()
    set_threads(args.threads)
    from skimage.restoration import estimate_sigma

    from daguerre.imaging.detect import estimate_noise_sigma

    def skimage_estimate(noisy: np.ndarray) -> float:
        return float(estimate_sigma(noisy * 255.0, channel_axis=-1, average_sigmas=True))

    estimators = {"skimage": skimage_estimate, "daguerre": estimate_noise_sigma}
    limit = args.limit or 30
    results: dict = {"images": str(TRAIN_SET), "limit": limit, "rows": []}
    print(f"{'kind':6} {'sigma':>5}  " + "  ".join(f"{n:>24}" for n in estimators))
    for colour in (False, True):
        images = load_images(TRAIN_SET, colour, limit, (".jpg",))
        for sigma in (float(s) for s in args.sigmas.split(",")):
            reads: dict[str, list[float]] = {name: [] for name in estimators}
            for index, clean in enumerate(images):
                noisy = _clipped_noisy(clean, sigma, index)
                for name, estimate in estimators.items():
                    reads[name].append(estimate(noisy))
            row = {"kind": "colour" if colour else "grey", "sigma": sigma, "images": len(images)}
            cells = []
            for name, values in reads.items():
                v = np.asarray(values)
                stats = {
                    "mean": float(v.mean()),
                    "sd": float(v.std()),
                    "mae": float(np.abs(v - sigma).mean()),
                }
                row[name] = {k: round(x, 2) for k, x in stats.items()}
                cells.append("{mean:6.2f} sd {sd:4.2f} mae {mae:4.2f}".format(**stats))
            results["rows"].append(row)
            print(f"{row['kind']:6} {sigma:5.0f}  " + "  ".join(f"{c:>24}" for c in cells))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
