"""Tests for daguerre.imaging.degrade: contracts, reproducibility, masks, noise levels."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from daguerre.imaging import degrade as dg


def _picture(h: int = 48, w: int = 64, c: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth synthetic picture (gradients and blobs), float32 (h, w, c) in [0.1, 0.9]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = []
    for _ in range(c):
        fx, fy, ph = rng.uniform(0.02, 0.15, 2).tolist() + [rng.uniform(0, 6)]
        chans.append(0.5 + 0.4 * np.sin(fx * xx + ph) * np.cos(fy * yy))
    return np.stack(chans, axis=2).astype(np.float32)


def _flat(value: float = 0.5, h: int = 64, w: int = 64, c: int = 3) -> np.ndarray:
    return np.full((h, w, c), value, np.float32)


# Every operation, as f(img, rng) -> image (damage functions return only their image here).
OPS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": lambda x, r: dg.gaussian_noise(x, 10.0, r),
    "poisson_noise": lambda x, r: dg.poisson_noise(x, 40.0, r),
    "film_grain": lambda x, r: dg.film_grain(x, 0.05, 1.2, r),
    "gaussian_blur": lambda x, r: dg.gaussian_blur(x, 1.3),
    "motion_blur": lambda x, r: dg.motion_blur(x, 7.5, 30.0),
    "downscale_keep": lambda x, r: dg.downscale(x, 2.5, "bicubic", keep_size=True),
    "jpeg_artifacts": lambda x, r: dg.jpeg_artifacts(x, 30),
    "fade": lambda x, r: dg.fade(x, 0.5),
    "halftone": lambda x, r: dg.halftone(x, 4.0, 45.0),
    "paper_texture": lambda x, r: dg.paper_texture(x, 0.08, r),
    "to_monochrome": lambda x, r: dg.to_monochrome(x),
    "scratches": lambda x, r: dg.scratches(x, r, 4)[0],
    "dust": lambda x, r: dg.dust(x, r, 30)[0],
    "stains": lambda x, r: dg.stains(x, r, 2)[0],
    "fold": lambda x, r: dg.tears_and_folds(x, r, "fold")[0],
    "tear": lambda x, r: dg.tears_and_folds(x, r, "tear")[0],
    "degrade": lambda x, r: dg.degrade(x, r, dg.DegradationConfig.heavy()).image,
}
# These turn grey into colour on purpose.
COLOUR_OPS = {
    "sepia": lambda x, r: dg.sepia(x, 0.8),
    "yellowing": lambda x, r: dg.yellowing(x, 0.5, r),
}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", [*OPS, *COLOUR_OPS])
def test_contract_shape_dtype_range_and_purity(name: str, channels: int) -> None:
    op = OPS.get(name) or COLOUR_OPS[name]
    img = _picture(c=channels)
    before = img.copy()
    out = op(img, np.random.default_rng(3))
    expected_c = 3 if name in COLOUR_OPS else channels
    assert out.shape == (48, 64, expected_c)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(img, before)  # inputs are never modified
    if name != "to_monochrome" or channels == 3:
        assert not np.array_equal(out[..., :channels], img), "the operation changed nothing"


@pytest.mark.parametrize("name", [n for n in OPS if n not in {"gaussian_blur", "motion_blur"}])
def test_same_seed_same_output(name: str) -> None:
    img = _picture()
    a = OPS[name](img, np.random.default_rng(11))
    b = OPS[name](img, np.random.default_rng(11))
    np.testing.assert_array_equal(a, b)


def test_degrade_reproducible_and_seed_dependent() -> None:
    img = _picture(96, 96)
    cfg = dg.DegradationConfig.heavy()
    a = dg.degrade(img, np.random.default_rng(5), cfg)
    b = dg.degrade(img, np.random.default_rng(5), cfg)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.damage_mask, b.damage_mask)
    assert a.params == b.params
    c = dg.degrade(img, np.random.default_rng(6), cfg)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("channels", [1, 3])
def test_degrade_contract_and_params(channels: int) -> None:
    img = _picture(64, 80, channels)
    seen: set[str] = set()
    for seed in range(12):
        res = dg.degrade(img, np.random.default_rng(seed))
        assert res.image.shape == img.shape and res.image.dtype == np.float32
        assert res.damage_mask.shape == (64, 80) and res.damage_mask.dtype == bool
        assert res.image.min() >= 0.0 and res.image.max() <= 1.0
        json.dumps(res.params)  # recorded parameters are JSON-serialisable
        seen |= set(res.params)
        if not {"scratches", "dust", "stains", "tears_and_folds"} & set(res.params):
            assert not res.damage_mask.any()
    if channels == 1:
        assert not {"sepia", "yellowing", "monochrome"} & seen
    assert len(seen) >= 6  # the default recipe really varies


def test_degrade_none_is_identity_and_config_validation() -> None:
    img = _picture()
    res = dg.degrade(img, np.random.default_rng(0), dg.DegradationConfig.none())
    np.testing.assert_array_equal(res.image, img)
    assert res.params == {} and not res.damage_mask.any()
    assert res.image is not img
    with pytest.raises(ValueError):
        dg.DegradationConfig(p_fade=1.5)
    with pytest.raises(ValueError):
        dg.DegradationConfig(blur_sigma=(2.0, 1.0))
    assert dg.DegradationConfig.old_photo() == dg.DegradationConfig()


DAMAGE: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "scratches": lambda x, r: dg.scratches(x, r, 3),
    "dust": lambda x, r: dg.dust(x, r, 25),
    "stains": lambda x, r: dg.stains(x, r, 2, (15.0, 40.0)),
    "fold": lambda x, r: dg.tears_and_folds(x, r, "fold"),
    "tear": lambda x, r: dg.tears_and_folds(x, r, "tear"),
}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list(DAMAGE))
def test_damage_mask_is_exactly_the_visibly_changed_pixels(name: str, channels: int) -> None:
    for seed in range(4):
        img = _picture(96, 96, channels, seed)
        out, mask = DAMAGE[name](img, np.random.default_rng(seed))
        assert mask.shape == (96, 96) and mask.dtype == bool
        assert mask.any(), f"{name} drew nothing visible (seed {seed})"
        delta = np.abs(out - img).max(axis=2)
        np.testing.assert_array_equal(mask, delta > dg.VISIBLE_DELTA)
        assert delta[~mask].max(initial=0.0) <= dg.VISIBLE_DELTA  # repairs need only the mask
        assert mask.mean() < 0.6


def test_zero_count_damage_changes_nothing() -> None:
    img = _picture()
    rng = np.random.default_rng(0)
    for out, mask in (dg.scratches(img, rng, 0), dg.dust(img, rng, 0), dg.stains(img, rng, 0)):
        np.testing.assert_array_equal(out, img)
        assert not mask.any()


def test_degrade_mask_covers_all_damage() -> None:
    cfg = replace(
        dg.DegradationConfig.none(), p_scratches=1.0, p_dust=1.0, p_stains=1.0, p_tears_folds=1.0
    )
    img = _picture(128, 128)
    for seed in range(3):
        res = dg.degrade(img, np.random.default_rng(seed), cfg)
        assert set(res.params) == {"stains", "tears_and_folds", "scratches", "dust"}
        delta = np.abs(res.image - img).max(axis=2)
        assert res.damage_mask.any()
        assert delta[~res.damage_mask].max(initial=0.0) <= dg.VISIBLE_DELTA


def test_unaged_held_out_damage_changes_only_what_it_marks() -> None:
    cfg = dg.damage_held_out_config(aged=False)
    assert all(getattr(cfg, step) == 0.0 for step in dg.AGING_STEPS)
    assert cfg.scratch_colour_mode == dg.damage_held_out_config().scratch_colour_mode
    img = _picture(128, 128)
    res = dg.degrade(img, np.random.default_rng(0), cfg)
    assert {"scratches", "dust"} <= set(res.params) and res.damage_mask.any()
    delta = np.abs(res.image - img).max(axis=2)
    assert delta[~res.damage_mask].max(initial=0.0) <= dg.VISIBLE_DELTA  # no tone, blur, noise


def test_scratches_and_dust_vary_in_brightness_and_width() -> None:
    """Damage must not be a few fixed colours: over seeds it is brighter and darker than the
    background, with several contrast levels and widths."""
    img = _flat(0.5, 96, 96)
    signs, levels, areas = set(), [], []
    for seed in range(16):
        out, mask = dg.scratches(img, np.random.default_rng(seed), 1)
        if mask.any():
            diff = (out - img)[mask].mean(axis=1)
            signs |= set(np.sign(diff).astype(int).tolist())
            levels.append(float(np.abs(diff).max()))
            areas.append(int(mask.sum()))
    assert {-1, 1} <= signs
    assert np.ptp(levels) > 0.2 and len(set(areas)) > 8
    out, mask = dg.dust(img, np.random.default_rng(0), 60)
    diff = (out - img)[mask].mean(axis=1)
    assert (diff > 0.1).any() and (diff < -0.1).any()
    relative, _ = dg.scratches(img, np.random.default_rng(1), 4, colour_mode="relative")
    assert not np.array_equal(relative, img)


def test_noise_levels_and_grain_properties() -> None:
    img = _flat(0.5, 128, 128)
    out = dg.gaussian_noise(img, 10.0, np.random.default_rng(0))
    assert abs(float((out - img).std()) - 10 / 255) < 0.003
    out = dg.poisson_noise(img, 100.0, np.random.default_rng(0))
    assert abs(float((out - img).var()) - 0.5 / 100) < 0.0008
    low = dg.poisson_noise(_flat(0.05, 128, 128), 20.0, np.random.default_rng(0))  # exact path
    assert abs(float(low.mean()) - 0.05) < 0.005
    assert np.allclose(low * 20, np.round(low * 20), atol=1e-4)  # integer photon counts
    grain = dg.film_grain(img, 0.05, 1.5, np.random.default_rng(0)) - img
    assert abs(float(grain.std()) - 0.05) < 0.01
    np.testing.assert_allclose(grain[..., 0], grain[..., 2], atol=1e-6)  # monochrome grain
    g = grain[..., 0]
    corr = np.corrcoef(g[:, 1:].ravel(), g[:, :-1].ravel())[0, 1]
    assert corr > 0.5  # spatially correlated
    fine = dg.film_grain(img, 0.05, 0.0, np.random.default_rng(0))[..., 0] - 0.5
    assert abs(np.corrcoef(fine[:, 1:].ravel(), fine[:, :-1].ravel())[0, 1]) < 0.1
    dark = dg.film_grain(_flat(0.1, 128, 128), 0.05, 1.5, np.random.default_rng(0)) - 0.1
    assert dark.std() < grain.std()  # luminance dependent: strongest in mid-tones


def test_resolution_ops() -> None:
    img = _picture(60, 90)
    small = dg.downscale(img, 3.0)
    assert small.shape == (20, 30, 3)
    assert dg.downscale(img, 2.0, "area").shape == (30, 45, 3)
    assert dg.downscale(img[..., :1], 2.0, "nearest").shape == (30, 45, 1)
    kept = dg.downscale(img, 3.0, keep_size=True)
    assert kept.shape == img.shape and not np.array_equal(kept, img)
    with pytest.raises(ValueError):
        dg.downscale(img, 0.5)
    # Blur removes high frequencies; motion blur is directional (horizontal keeps columns).
    stripes = np.zeros((32, 32, 1), np.float32)
    stripes[:, ::2] = 1.0
    assert dg.gaussian_blur(stripes, 1.5).std() < 0.1
    rows = np.zeros((32, 32, 1), np.float32)
    rows[::4] = 1.0
    np.testing.assert_allclose(dg.motion_blur(rows, 9, 0.0), rows, atol=1e-5)
    assert dg.motion_blur(rows, 9, 90.0).std() < rows.std()


def test_resize_matches_pil() -> None:
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    x = rng.random((37, 53, 1), dtype=np.float32) * 0.8 + 0.1
    for method, flag in (
        ("bicubic", pil.Resampling.BICUBIC),
        ("bilinear", pil.Resampling.BILINEAR),
        ("lanczos", pil.Resampling.LANCZOS),
    ):
        for size in ((15, 20), (37, 26), (80, 100)):
            ours = dg.resize(x, size, method)[..., 0]
            ref = np.asarray(pil.fromarray(x[..., 0]).resize(size[::-1], flag))
            np.testing.assert_allclose(ours, np.clip(ref, 0, 1), atol=1e-5)


def test_jpeg_quantises_and_quality_matters() -> None:
    img = _picture(64, 64)
    rough = dg.jpeg_artifacts(img, 10)
    fine = dg.jpeg_artifacts(img, 95)
    np.testing.assert_allclose(rough * 255, np.round(rough * 255), atol=1e-3)
    assert np.abs(fine - img).mean() < np.abs(rough - img).mean()
    grey = dg.jpeg_artifacts(img[..., :1], 50)
    assert grey.shape == (64, 64, 1)
    # RGB order is preserved (a red image stays red).
    red = np.zeros((16, 16, 3), np.float32)
    red[..., 0] = 0.9
    out = dg.jpeg_artifacts(red, 90)
    assert out[..., 0].mean() > 0.8 and out[..., 2].mean() < 0.1


def test_tone_ops() -> None:
    img = _picture(64, 64)
    faded = dg.fade(img, 0.6)
    assert faded.std() < img.std() and faded.min() > img.min() + 0.1
    np.testing.assert_array_equal(dg.fade(img, 0.0), img)
    toned = dg.sepia(_flat(0.5), 1.0)
    r, g, b = toned[0, 0]
    assert r > g > b  # brown
    grey_toned = dg.sepia(_flat(0.5, c=1), 1.0)
    np.testing.assert_allclose(grey_toned, toned, atol=1e-6)
    yellow = dg.yellowing(_flat(0.9), 0.5) - 0.9
    assert yellow[..., 2].mean() < yellow[..., 0].mean() <= 0
    mono = dg.to_monochrome(img)
    np.testing.assert_allclose(mono[..., 0], mono[..., 1])
    for v in (0.2, 0.5, 0.8):  # a halftone keeps the average grey level
        assert abs(float(dg.halftone(_flat(v, 96, 96, 1), 6.0, 30.0).mean()) - v) < 0.02
    ht = dg.halftone(_flat(0.5, 96, 96, 1), 6.0, 30.0)
    assert (ht < 0.05).mean() > 0.3 and (ht > 0.95).mean() > 0.3  # mostly ink or paper


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        dg.fade(np.zeros((8, 8), np.float32), 0.5)
    with pytest.raises(ValueError):
        dg.gaussian_blur(np.zeros((8, 8, 4), np.float32), 1.0)


def test_damage_recipes_hold_out_colours_and_widths() -> None:
    train_cfg, held_out = dg.damage_training_config(), dg.damage_held_out_config()
    assert "tinted" not in train_cfg.scratch_colour_mode
    assert held_out.scratch_colour_mode == "tinted"

    def drawn_widths(spans: tuple) -> set[int]:  # scratches round their width to whole pixels
        spans = spans if isinstance(spans[0], tuple) else (spans,)
        return {max(1, round(v)) for lo, hi in spans for v in np.linspace(lo, hi, 101)}

    held_widths = drawn_widths(held_out.scratch_width)
    train_widths = drawn_widths(train_cfg.scratch_width)
    assert not held_widths & train_widths
    assert min(train_widths) < min(held_widths) and max(train_widths) > max(held_widths)
    lo, hi = held_out.dust_size
    for t_lo, t_hi in train_cfg.dust_size:  # type: ignore[misc]
        assert t_hi < lo or t_lo > hi
    # widths from a union of ranges land in those ranges only, both used
    rng = np.random.default_rng(1)
    draws = np.array([dg._draw(rng, ((1.0, 2.0), (7.0, 9.0))) for _ in range(400)])
    assert (((draws >= 1) & (draws <= 2)) | ((draws >= 7) & (draws <= 9))).all()
    assert 0.15 < (draws < 5).mean() < 0.55
    with pytest.raises(ValueError):
        dg.DegradationConfig(scratch_width=((1.0, 2.0), (9.0, 7.0)))
    none = dg.undamaged_config()
    img = np.full((64, 64, 3), 0.5, np.float32)
    assert not dg.degrade(img, np.random.default_rng(0), none).damage_mask.any()
    out, mask = dg.scratches(img, np.random.default_rng(0), 4, colour_mode="bright|dark")
    assert mask.any() and out.shape == img.shape
    out, mask = dg.scratches(img, np.random.default_rng(0), 4, (7.0, 9.0), (1.0, 1.0), "shifted")
    change = (out - img)[mask]
    assert mask.any() and np.abs(change).max() >= 0.19  # coloured shifts of at least 0.2
    # "grey": flat, near-neutral lines of any brightness, mid-greys included
    levels = []
    for seed in range(24):
        out, mask = dg.scratches(
            img * 0, np.random.default_rng(seed), 1, (3.0, 3.0), (1.0, 1.0), "grey"
        )
        if mask.any():
            core = out[mask]
            assert np.ptp(core[core.max(axis=1) > 0.5 * core.max()], axis=1).max() < 0.2
            levels.append(float(core.max()))
    assert min(levels) < 0.3 and max(levels) > 0.7 and any(0.35 < v < 0.65 for v in levels)
