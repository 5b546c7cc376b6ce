"""Damage masks from a segmentation model's per-pixel damage probability.

Pure numpy and OpenCV (no pyvips): `daguerre train` calibrates with the same rule the
pipeline applies.
"""

from __future__ import annotations

import cv2
import numpy as np


def probability_regions(
    probability: np.ndarray, grow_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, peak, size) of the 8-connected regions of a (H, W) damage probability map above
    `grow_threshold`: int32 labels (0 outside every region), and per label its highest
    probability and its pixel count (label 0: 0 and 0)."""
    above = probability > grow_threshold
    count, labels = cv2.connectedComponents(above.view(np.uint8), connectivity=8)
    inside = labels[above]
    peak = np.zeros(count, np.float32)
    np.maximum.at(peak, inside, probability[above])
    size = np.bincount(inside, minlength=count)
    size[0] = 0
    return labels, peak, size


def threshold_damage(
    probability: np.ndarray, threshold: float, grow_threshold: float | None = None
) -> np.ndarray:
    """(H, W) bool damage mask of a probability map: pixels above `threshold`, and with a
    `grow_threshold` below it (hysteresis) the whole connected region above `grow_threshold`
    around each of them. A scratch the model is sure of somewhere is then masked along its
    whole length, where its faint stretches would fall under a threshold strict enough to
    leave undamaged photos alone."""
    if grow_threshold is None or grow_threshold >= threshold:
        return probability > threshold
    labels, peak, _ = probability_regions(probability, grow_threshold)
    keep = peak > threshold
    keep[0] = False
    return keep[labels]
