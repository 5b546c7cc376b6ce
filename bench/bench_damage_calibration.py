"""How well a damage detector's calibrated threshold holds on undamaged photos it never saw.

    .venv/bin/python bench/bench_damage_calibration.py \
        --model s4=models/weights/daguerre-damage-s.safetensors [--threads 1]

Training photos only, never a test set: the detectors' validation split of BSDS500 (20 photos,
what `daguerre train damage` calibrates on) and T91 (91 photos no detector trains on: flowers,
fruit, faces, with fine bright streaks and edges). Each photo as it is and aged twice by the
old-photo chain without damage, every third made grey (`undamaged_probabilities`). For each
model: the share each set gets marked by the model's own rule (threshold and grow threshold);
for plain thresholding, the threshold each set calibrates (0.3% of pixels marked), the share
the other set gets marked at it, and how often a threshold calibrated on N random photos of
the pool exceeds 0.3% on the rest (the spread of the estimate).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from common import (
    add_model_option,
    add_run_options,
    bench_parser,
    load_models,
    set_threads,
    write_results,
)

from daguerre.imaging.masks import threshold_damage
from daguerre.models.training import (
    DAMAGE_MARK_BUDGET,
    check_data_dirs,
    list_images,
    plain_threshold,
    split_files,
    undamaged_probabilities,
)

TRAIN = Path("../shared/datasets/train")
DAMAGE_DIRS = (TRAIN / "BSDS500-train", TRAIN / "BSDS500-test-split")  # as trained
VAL_FRACTION = 0.05  # `train`'s default split
DRAWS = 200


def threshold(per_photo: list[np.ndarray]) -> float:
    """The plain-threshold rule of `calibrate_damage_threshold` over these photos."""
    return plain_threshold(np.concatenate(per_photo))


def marked(per_photo: list[np.ndarray], at: float) -> float:
    return float((np.concatenate(per_photo) > at).mean())


def rule_marked(per_photo: list[list[np.ndarray]], t: float, grow: float | None) -> float:
    """Share of the pixels of all the maps marked by the rule (`threshold_damage`)."""
    masks = [threshold_damage(m, t, grow) for maps in per_photo for m in maps]
    return round(float(sum(int(m.sum()) for m in masks) / sum(m.size for m in masks)), 5)


def spread(pool: list[np.ndarray], n: int, rng: np.random.Generator) -> dict[str, float]:
    """Marks on the rest of the pool at thresholds calibrated on `n` random photos of it."""
    rest_marked = []
    for _ in range(DRAWS):
        order = rng.permutation(len(pool))
        calibrated = threshold([pool[i] for i in order[:n]])
        rest_marked.append(marked([pool[i] for i in order[n:]], calibrated))
    a = np.array(rest_marked)
    return {
        "photos": n,
        "median_marked": round(float(np.median(a)), 5),
        "p90_marked": round(float(np.quantile(a, 0.9)), 5),
        "share_over_budget": round(float((a > DAMAGE_MARK_BUDGET).mean()), 3),
    }


def main() -> None:
    parser = bench_parser(__doc__)
    add_model_option(parser)
    add_run_options(parser, Path("bench/results/damage_calibration.json"))
    args = parser.parse_args()
    set_threads(args.threads)

    import torch

    from daguerre.operators import LearnedDamage

    dev = torch.device("cpu")
    _, val = split_files(list_images(check_data_dirs(DAMAGE_DIRS)), VAL_FRACTION)
    t91 = [p for p, _ in list_images(check_data_dirs([TRAIN / "T91"]))]
    results: dict = {"val_photos": len(val), "t91_photos": len(t91), "models": {}}
    for label, (model, path) in load_models("damage", args.model).items():
        maps_val = undamaged_probabilities(model.module, val, dev)
        maps_t91 = undamaged_probabilities(model.module, t91, dev)
        on_val = [np.concatenate([m.ravel() for m in maps]) for maps in maps_val]
        on_t91 = [np.concatenate([m.ravel() for m in maps]) for maps in maps_t91]
        pool = on_val + on_t91
        rule = LearnedDamage(model)  # the pipeline's rule
        t, grow = float(rule.threshold or 0.5), rule.grow_threshold

        rng = np.random.default_rng(0)
        t_val, t_t91, t_pool = threshold(on_val), threshold(on_t91), threshold(pool)
        row = {
            "weights": path,
            "rule": {"threshold": t, "grow_threshold": grow},
            "val_marked_by_rule": rule_marked(maps_val, t, grow),
            "t91_marked_by_rule": rule_marked(maps_t91, t, grow),
            "val_threshold": t_val,
            "t91_marked_at_val_threshold": round(marked(on_t91, t_val), 5),
            "t91_threshold": t_t91,
            "val_marked_at_t91_threshold": round(marked(on_val, t_t91), 5),
            "pooled_threshold": t_pool,
            "spread": [spread(pool, n, rng) for n in (20, len(pool) // 2)],
        }
        results["models"][label] = row
        print(label, row)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
