"""Damage detection benchmark: learned detectors vs the classical one, pixel F1 and false marks.

    .venv/bin/python bench/bench_damage.py \
        --model unet=models/weights/daguerre-damage-s.safetensors \
        [--sets CBSD68,BSD68] [--threads 2] [--real ../shared/datasets/real/old_photos] [--by-kind]

Damage is drawn by `daguerre.imaging.degrade` over the test images with a fixed seed per image:
- "held-out": scratches of colours (tinted) and widths (4.6-6.4 px), dust of sizes (4-6 px)
  that the detector's training never drew, plus stains, folds and tears, over the old-photo
  chain (fading, sepia, blur, grain, noise, JPEG);
- "training-like": the training recipe, for reference;
- "held-out-unaged": the held-out damage drawn on the test image as it is (no fading, blur,
  noise or JPEG): damage alone, as the issue's target reads;
- with --by-kind, "kind:K": one kind of held-out damage alone (scratches, dust, stains,
  tears-folds), unaged: which kinds a detector misses.
False marks: the share of pixels marked on the undamaged originals as they are ("clean") and
through the old-photo chain without damage ("aged"). Every marked pixel there is one that
inpainting would smear. F1 is over all pixels of the set (micro). Recall is also given by how much
the damage changed a pixel (largest channel, 0-1, before the noise that follows it), with the
share of damaged pixels in each band: faint misses are told from visible ones. Speed: megapixels
per second.
With --real, the masks of real scans are written as overlays to bench/results/damage_real/ to
look at (no ground truth).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
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
    quantise,
    set_threads,
    unit,
)

from daguerre.imaging import degrade as dg
from daguerre.imaging.detect import damage_mask
from daguerre.imaging.masks import threshold_damage

Detector = Callable[[np.ndarray], np.ndarray]


# How much the damage changed a pixel (largest channel, 0-1, before any noise that follows it):
# recall is also reported per band, so faint misses can be told from visible ones.
CONTRAST_BANDS = ((0.0, 0.1), (0.1, 0.2), (0.2, 1.01))
BAND_NAMES = tuple(f">={lo:g}" if hi > 1 else f"{lo:g}-{hi:g}" for lo, hi in CONTRAST_BANDS)


def pixels_by_contrast(selected: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """How many `selected` pixels fall in each of `CONTRAST_BANDS` of `delta`."""
    return np.array([(selected & (delta >= lo) & (delta < hi)).sum() for lo, hi in CONTRAST_BANDS])


def by_band(values: np.ndarray, scale: float = 1.0, digits: int = 3) -> dict[str, float]:
    """`values` (one per band) as {band name: value * scale, rounded}."""
    pairs = zip(BAND_NAMES, values, strict=True)
    return {name: round(float(v) * scale, digits) for name, v in pairs}


class Counts:
    def __init__(self) -> None:
        self.tp = self.fp = self.fn = 0
        self.band_found = np.zeros(len(CONTRAST_BANDS), np.int64)

    def add(self, pred: np.ndarray, truth: np.ndarray, delta: np.ndarray | None = None) -> None:
        self.tp += int((pred & truth).sum())
        self.fp += int((pred & ~truth).sum())
        self.fn += int((~pred & truth).sum())
        if delta is not None:
            self.band_found += pixels_by_contrast(truth & pred, delta)

    def summary(self, band_truth: np.ndarray) -> dict:
        """P / R / F1, and recall per contrast band given the damaged pixels per band."""
        p = self.tp / max(1, self.tp + self.fp)
        r = self.tp / max(1, self.tp + self.fn)
        out: dict = {
            "precision": round(p, 3),
            "recall": round(r, 3),
            "f1": round(2 * p * r / max(1e-9, p + r), 3),
        }
        if band_truth.any():
            out["recall_by_contrast"] = by_band(self.band_found / np.maximum(1, band_truth))
        return out


def main() -> None:
    parser = bench_parser(__doc__)
    add_model_option(parser)
    parser.add_argument("--sets", default="CBSD68,BSD68")
    parser.add_argument("--real", type=Path, default=None, help="folder of real scans to mask")
    parser.add_argument(
        "--by-kind",
        action="store_true",
        help="also score each kind of held-out damage alone (scratches, dust, stains, folds/tears)",
    )
    add_run_options(parser, Path("bench/results/damage.json"))
    args = parser.parse_args()

    set_threads(args.threads)
    from daguerre.operators import LearnedDamage

    detectors: dict[str, Detector] = {"classical": damage_mask}
    results: dict = {"models": {}, "sets": {}}
    for label, (model, path) in load_models("damage", args.model).items():
        # The pipeline's rule: the one calibrated in training (threshold, and grow threshold
        # where it has one), else 0.5.
        rule = LearnedDamage(model)
        threshold, grow = float(rule.threshold or 0.5), rule.grow_threshold
        results["models"][label] = model_record(
            model, path, threshold=threshold, grow_threshold=grow
        )
        detectors[label] = lambda img, m=model, t=threshold, g=grow: threshold_damage(
            m.run(img)[:, :, 0], t, g
        )

    recipes = {
        "held-out": dg.damage_held_out_config(),
        "training-like": dg.damage_training_config(),
        # last: the seeds of the recipes above stay those of earlier runs
        "held-out-unaged": dg.damage_held_out_config(aged=False),
    }
    if args.by_kind:
        recipes.update(_one_kind_recipes())
    speeds = Speeds(detectors)
    for set_name in args.sets.split(","):
        images = [unit(img) for img in load_test_set(set_name, args.limit)]
        counts = {(r, d): Counts() for r in recipes for d in detectors}
        marked = {(k, d): [0, 0] for k in ("clean", "aged") for d in detectors}
        truth_share = {r: [0, 0] for r in recipes}
        truth_by_contrast = {r: np.zeros(len(CONTRAST_BANDS), np.int64) for r in recipes}
        for index, clean in enumerate(images):
            cases = {}
            for r_index, (recipe, cfg) in enumerate(recipes.items()):
                rng = np.random.default_rng([index, r_index, 7])
                out = dg.degrade(clean, rng, cfg)
                cases[recipe] = (quantise(out.image), out.damage_mask, out.damage_delta)
                truth_share[recipe][0] += int(out.damage_mask.sum())
                truth_share[recipe][1] += out.damage_mask.size
                if out.damage_delta is not None:
                    truth_by_contrast[recipe] += pixels_by_contrast(
                        out.damage_mask, out.damage_delta
                    )
            aged = quantise(
                dg.degrade(clean, np.random.default_rng([index, 9]), dg.undamaged_config()).image
            )
            for label, detect in detectors.items():
                for recipe, (img, truth, delta) in cases.items():
                    with speeds.timing(label, megapixels(img)):
                        pred = detect(img)
                    counts[(recipe, label)].add(pred, truth, delta)
                for kind, img in (("clean", clean), ("aged", aged)):
                    pred = detect(img)
                    marked[(kind, label)][0] += int(pred.sum())
                    marked[(kind, label)][1] += pred.size
        summary: dict = {"images": len(images)}
        for recipe in recipes:
            share = truth_share[recipe][0] / max(1, truth_share[recipe][1])
            summary[recipe] = {"damaged_pixels_pct": round(100 * share, 2)}
            bands = truth_by_contrast[recipe]
            summary[recipe]["damaged_pixels_by_contrast_pct"] = by_band(
                bands, 100 / max(1, bands.sum()), 1
            )
            for label in detectors:
                summary[recipe][label] = counts[(recipe, label)].summary(bands)
        for kind in ("clean", "aged"):
            summary[f"marked_pct_{kind}"] = {
                label: round(100 * marked[(kind, label)][0] / max(1, marked[(kind, label)][1]), 3)
                for label in detectors
            }
        results["sets"][set_name] = summary
        print(set_name, json.dumps(summary), flush=True)
    if args.real is not None:
        _overlays(args.real, detectors, Path("bench/results/damage_real"))
    finish(results, speeds, args.threads, args.out)


KIND_STEPS = {
    "scratches": "p_scratches",
    "dust": "p_dust",
    "stains": "p_stains",
    "tears-folds": "p_tears_folds",
}


def _one_kind_recipes() -> dict[str, dg.DegradationConfig]:
    """Recipes "kind:K": the held-out damage of kind K only, on every image, unaged. Precision
    counts the detector's marks elsewhere (fine real structure) as false, like the others."""
    none = dict.fromkeys(KIND_STEPS.values(), 0.0)
    return {
        f"kind:{kind}": replace(dg.damage_held_out_config(aged=False), **{**none, step: 1.0})
        for kind, step in KIND_STEPS.items()
    }


def _overlays(folder: Path, detectors: dict[str, Detector], out: Path) -> None:
    """Each real scan beside its masks (red where marked), one PNG per scan and detector."""
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            continue
        rgb = unit(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        for label, detect in detectors.items():
            mask = detect(rgb)
            overlay = img.copy()
            overlay[mask] = (0, 0, 255)
            pct = 100 * mask.mean()
            name = "_".join(path.relative_to(folder).with_suffix("").parts)
            cv2.imwrite(str(out / f"{name}.{label}.png"), np.hstack([img, overlay]))
            print(f"{name} {label}: {pct:.2f}% marked")


if __name__ == "__main__":
    main()
