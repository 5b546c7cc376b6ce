"""Tests for daguerre.imaging.samples: the demo's synthetic old-photo collection."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from daguerre.imaging.samples import make_sample_collection, render_sample, sample_manifest
from daguerre.records import PIXEL_STAGES

_EXT = {"jpeg": (".jpg", ".jpeg"), "png": (".png",), "tiff": (".tif", ".tiff")}
_DAMAGE = {"scratches", "dust", "stains", "tears_and_folds"}


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_manifest_is_consistent() -> None:
    specs = sample_manifest()
    paths = [s.relative_path for s in specs]
    assert len(paths) == len(set(paths)) == 6
    assert {s.format for s in specs} == {"jpeg", "png", "tiff"}
    assert any(s.bit_depth == 16 for s in specs)
    assert any(s.bands == 1 for s in specs)
    assert any("/" in p for p in paths) and any("/" not in p for p in paths)
    for s in specs:
        assert Path(s.relative_path).suffix in _EXT[s.format]
        assert max(s.width, s.height) <= 512
        assert s.plan_hints and set(s.plan_hints) <= set(PIXEL_STAGES)
        assert s.degradations and s.description
    small = [s for s in specs if "upscale" in s.plan_hints]
    assert small and all(160 <= max(s.width, s.height) <= 200 for s in small)


def test_collection_files_match_manifest(sample_collection: Path) -> None:
    specs = sample_manifest()
    written = sorted(
        p.relative_to(sample_collection).as_posix()
        for p in sample_collection.rglob("*")
        if p.is_file()
    )
    assert written == sorted(s.relative_path for s in specs)
    for s in specs:
        arr = cv2.imread(str(sample_collection / s.relative_path), cv2.IMREAD_UNCHANGED)
        assert arr is not None, s.relative_path
        assert arr.dtype == (np.uint16 if s.bit_depth == 16 else np.uint8)
        expected = (s.height, s.width) if s.bands == 1 else (s.height, s.width, s.bands)
        assert arr.shape == expected, s.relative_path
        if s.bit_depth == 16:
            assert len(np.unique(arr)) > 4096  # real 16-bit content, not 8-bit values scaled up
        assert arr.std() > 10 * (257 if s.bit_depth == 16 else 1)  # a picture, not a blank


def test_sixteen_bit_tiff_metadata(sample_collection: Path) -> None:
    pyvips = pytest.importorskip("pyvips")
    (spec,) = [s for s in sample_manifest() if s.bit_depth == 16]
    img = pyvips.Image.new_from_file(str(sample_collection / spec.relative_path))
    assert img.format == "ushort" and img.bands == 3
    assert img.interpretation == "rgb16"
    assert abs(img.xres * 25.4 - 600) < 0.5  # ppi survives


def test_pixels_match_render_and_bgr_order(sample_collection: Path) -> None:
    for s in sample_manifest():
        render = render_sample(s, seed=0)
        assert render.image.shape == (s.height, s.width, s.bands)
        arr = cv2.imread(str(sample_collection / s.relative_path), cv2.IMREAD_UNCHANGED)
        arr = arr[:, :, None] if arr.ndim == 2 else arr[:, :, ::-1]  # back to RGB
        scale = 65535.0 if s.bit_depth == 16 else 255.0
        decoded = arr.astype(np.float32) / scale
        err = np.abs(decoded - render.image)
        if s.format == "jpeg":
            assert err.mean() < 0.03, s.relative_path  # lossy, but the channels are not swapped
        else:
            assert err.max() <= 0.5 / scale + 1e-6, s.relative_path  # lossless: exact rounding


def test_damage_masks_of_samples() -> None:
    for s in sample_manifest():
        render = render_sample(s.relative_path, seed=0)
        assert render.damage_mask.shape == (s.height, s.width)
        drawn = bool(_DAMAGE & set(s.degradations))
        assert render.damage_mask.any() == drawn, s.relative_path
        if drawn:
            assert "inpaint" in s.plan_hints
            assert render.damage_mask.mean() < 0.3


def test_deterministic_per_seed(sample_collection: Path, tmp_path: Path) -> None:
    paths = make_sample_collection(tmp_path / "again", seed=0)
    assert [p.relative_to(tmp_path / "again").as_posix() for p in paths] == [
        s.relative_path for s in sample_manifest()
    ]
    assert _digests(tmp_path / "again") == _digests(sample_collection)
    make_sample_collection(tmp_path / "other", seed=1)
    other = _digests(tmp_path / "other")
    assert other.keys() == _digests(sample_collection).keys()
    assert other != _digests(sample_collection)
