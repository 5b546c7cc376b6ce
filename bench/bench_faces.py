"""Face detection on real photos: the Haar proposals, and those confirmation keeps.

    .venv/bin/python bench/bench_faces.py [--threads 1]

There is no ground truth: for each folder of ../shared/datasets/real (faces, old_photos,
grayscale_to_colorize) the script counts proposals and confirmed faces, times detection, and
writes montages of the kept and the rejected crops to bench/results/faces/ to be judged by
eye (the face stage draws a face into every kept box, so a kept non-face is the costly error).
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
from common import DATASETS, bench_parser, set_threads, unit, write_results

from daguerre.imaging.detect import detect_faces

REAL = DATASETS / "real"
FOLDERS = ("faces", "old_photos", "grayscale_to_colorize")
OUT = Path("bench/results/faces")
TILE = 96


def montage(crops: list[np.ndarray], per_row: int = 8) -> np.ndarray:
    if not crops:
        return np.zeros((TILE, TILE, 3), np.uint8)
    crops = crops + [np.zeros_like(crops[0])] * (-len(crops) % per_row)
    rows = [np.hstack(crops[i : i + per_row]) for i in range(0, len(crops), per_row)]
    return np.vstack(rows)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    results = {}
    for folder in FOLDERS:
        paths = sorted(p for p in (REAL / folder).rglob("*") if p.is_file())
        kept_crops, rejected_crops, seconds = [], [], []
        images = proposals = kept = 0
        for path in paths:
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                continue
            images += 1
            pixels = unit(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
            t0 = time.perf_counter()
            confirmed = detect_faces(pixels)
            seconds.append(time.perf_counter() - t0)
            proposed = detect_faces(pixels, confirm=False)
            proposals += len(proposed)
            kept += len(confirmed)
            for x, y, w, h in proposed:
                crop = cv2.resize(img[max(0, y) : y + h, max(0, x) : x + w], (TILE, TILE))
                (kept_crops if (x, y, w, h) in confirmed else rejected_crops).append(crop)
        cv2.imwrite(str(OUT / f"{folder}-kept.png"), montage(kept_crops))
        cv2.imwrite(str(OUT / f"{folder}-rejected.png"), montage(rejected_crops))
        results[folder] = {
            "images": images,
            "proposals": proposals,
            "confirmed": kept,
            "median_ms": round(1000 * float(np.median(seconds)), 1) if seconds else None,
        }
        print(
            f"{folder:24s} images {images:3d}  proposals {proposals:3d}  confirmed {kept:3d}  "
            f"median {results[folder]['median_ms']} ms/image"
        )
    write_results(OUT / "faces.json", results)


if __name__ == "__main__":
    main()
