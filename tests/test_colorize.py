"""Our colorizer: CIELAB conversions, chroma bins, the U-Net, loading and the operator path.

Everything runs on tiny random nets and arrays (no training here: see test_training.py).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from skimage import color

from daguerre.models.arch import ARCHITECTURES, detect_architecture, get_architecture
from daguerre.models.arch import colorize as C
from daguerre.models.loading import load_user_model, sha256_file


def _nchw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t[0].permute(1, 2, 0).numpy()


def _colours() -> np.ndarray:
    """(20, 20, 3) float32 random sRGB colours plus the cube's corners and a grey ramp."""
    rng = np.random.default_rng(0)
    img = rng.random((20, 20, 3), dtype=np.float32)
    corners = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, -1).T
    img[0, :8] = corners
    img[1, :] = np.linspace(0, 1, 20, dtype=np.float32)[:, None]
    return img


def _seeded(build, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


# ----------------------------------------------------------------------------- CIELAB


def test_lab_conversion_matches_the_references() -> None:
    rgb = _colours()
    ours = _hwc(C.rgb_to_lab(_nchw(rgb).double())).astype(np.float64)
    # Exact formulas (skimage, float64) agree closely ...
    assert np.abs(ours - color.rgb2lab(rgb.astype(np.float64))).max() < 5e-3
    # ... OpenCV's float path interpolates a lookup table: L off by up to ~0.25 (even on
    # greys), a* and b* by up to ~0.5, so 1e-3 against it is out of reach in this direction.
    cv = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
    assert np.abs(ours[..., 0] - cv[..., 0]).max() < 0.3
    assert np.abs(ours - cv).max() < 0.6 and np.abs(ours - cv).mean() < 0.1
    # Lab -> sRGB follows OpenCV's within 1e-3, and the round trip is exact.
    back = _hwc(C.lab_to_rgb(_nchw(cv)))
    assert np.abs(back - cv2.cvtColor(cv, cv2.COLOR_Lab2RGB)).max() < 1e-3
    again = _hwc(C.lab_to_rgb(C.rgb_to_lab(_nchw(rgb))))
    assert np.abs(again - rgb).max() < 1e-4


def test_out_of_gamut_chroma_shrinks_and_lightness_stays() -> None:
    lightness = torch.linspace(2, 98, 25).view(1, 1, 5, 5)
    ab = torch.tensor([90.0, -100.0]).view(1, 2, 1, 1).expand(1, 2, 5, 5)  # far outside sRGB
    rgb = C.lab_to_rgb_in_gamut(torch.cat([lightness, ab], dim=1))
    assert rgb.min() >= 0 and rgb.max() <= 1
    lab = C.rgb_to_lab(rgb)
    assert (lab[:, :1] - lightness).abs().max() < 0.05
    assert (lab[:, 1:].norm(dim=1) > 5).float().mean() > 0.5  # still coloured where possible
    # In-gamut colours pass unchanged.
    inside = C.rgb_to_lab(_nchw(_colours()))
    assert torch.allclose(C.lab_to_rgb_in_gamut(inside), _nchw(_colours()), atol=1e-4)


# ----------------------------------------------------------------------------- bins


def test_bins_cover_srgb_on_a_grid() -> None:
    bins = C.ab_bin_centres(10)
    assert bins.shape == (261, 2) and bins.dtype == torch.float32
    assert torch.all(bins % 10 == 0) and (bins == 0).all(dim=1).any()
    assert bins.abs().max() <= C.AB_RANGE
    # Every sRGB colour's chroma lies within half a cell diagonal of some bin.
    ab = C.rgb_to_lab(_nchw(_colours()))[:, 1:].permute(0, 2, 3, 1).reshape(-1, 2)
    d2, _ = C.nearest_bins(ab, bins)
    assert d2.max() <= 50.0 + 1e-3


def test_decode_and_encode_round_trip() -> None:
    bins = C.ab_bin_centres(10)
    q = bins.shape[0]
    chosen = torch.tensor([0, 17, 130, q - 1])
    logits = torch.zeros(len(chosen), q, 2, 3)
    logits[torch.arange(len(chosen)), chosen] = 8.0  # a confident one-hot at each chosen bin
    ab = C.decode(logits, bins, 0.38)
    assert torch.allclose(ab, bins[chosen].view(-1, 2, 1, 1).expand(-1, 2, 2, 3), atol=1e-3)
    # Temperature 1 on a flat distribution: the plain mean of the bins.
    flat = C.decode(torch.zeros(1, q, 1, 1), bins, 1.0)
    assert torch.allclose(flat.flatten(), bins.mean(0), atol=1e-4)
    # A bin's own centre encodes to itself first, with weights summing to 1.
    centres = bins[chosen].view(1, -1, 2).permute(0, 2, 1).unsqueeze(-1)  # (1, 2, 4, 1)
    idx, w = C.soft_encode(centres, bins, k=5, sigma=5.0)
    assert idx.shape == w.shape == (1, 5, 4, 1)
    assert torch.equal(idx[0, 0, :, 0], chosen)
    assert torch.allclose(w.sum(dim=1), torch.ones(1, 4, 1)) and torch.all(w[:, 0] >= w[:, 1])
    # The lookup-table encoder agrees with the exact one on integer a*b*.
    rng = np.random.default_rng(1)
    ab = torch.from_numpy(rng.integers(-100, 100, (2, 2, 6, 7)).astype(np.float32))
    exact_idx, exact_w = C.soft_encode(ab, bins)
    lut_idx, lut_w = C.SoftEncoder(bins)(ab)
    assert torch.equal(lut_idx[:, 0], exact_idx[:, 0])
    assert torch.allclose(lut_w.sort(dim=1).values, exact_w.sort(dim=1).values, atol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        C.decode(logits, bins, 0.0)


# ----------------------------------------------------------------------------- architecture


def test_arch_shapes_round_trip_and_size(tmp_path) -> None:
    arch = get_architecture(C.ARCH_NAME)
    assert arch.task == "colorize" and arch.multiple_of({}) == 8
    model = _seeded(lambda: arch.build(channels=8)).eval()
    lightness = torch.rand(2, 1, 16, 24)
    with torch.no_grad():
        logits = model(lightness)
    assert logits.shape == (2, model.bins, 16, 24)
    path = tmp_path / "c.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    from daguerre.models.loading import load_state_dict

    sd = load_state_dict(path, expected_sha256=sha256_file(path))
    assert detect_architecture(sd) is arch
    assert [a for a in ARCHITECTURES if a.detect(sd)] == [arch]
    assert arch.hyperparameters_from_state_dict(sd) == {"channels": 8, "grid": 10}
    with torch.no_grad():
        torch.testing.assert_close(arch.load(sd).eval()(lightness), logits)
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.rand(1, 1, 12, 16))
    n = sum(p.numel() for p in arch.build().parameters())
    assert 500_000 < n < 1_500_000  # the default: CPU-sized


def test_receptive_radius_bounds_the_context() -> None:
    model = _seeded(lambda: C.ColorizeUNet(channels=4))
    x = torch.rand(1, 1, 320, 320, requires_grad=True)
    model(x)[0, :, 160, 160].sum().backward()
    assert x.grad is not None
    ys, xs = torch.nonzero(x.grad[0, 0]).unbind(1)
    reach = int(max((ys - 160).abs().max(), (xs - 160).abs().max()))
    assert 0 < reach <= C.RECEPTIVE_RADIUS


def test_colorize_keeps_lightness_in_strips() -> None:
    model = _seeded(lambda: C.ColorizeUNet(channels=4)).eval()
    rgb = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        whole = model.colorize(rgb)
        strips = model.colorize(rgb, budget=1)  # one row at a time
    assert whole.shape == rgb.shape and whole.min() >= 0 and whole.max() <= 1
    torch.testing.assert_close(strips, whole)
    err = (C.rgb_to_lab(whole)[:, 0] - C.rgb_to_lab(rgb)[:, 0]).abs()
    assert err.max() < 0.05


# ----------------------------------------------------------------------------- loading and use


@pytest.fixture
def red_weights(tmp_path) -> str:
    """A random tiny colorizer whose tail prefers a red bin: its output is visibly coloured."""
    model = _seeded(lambda: C.ColorizeUNet(channels=4))
    red = int(torch.argmin((model.ab_bins - torch.tensor([40.0, 30.0])).norm(dim=1)))
    with torch.no_grad():
        model.tail.bias[red] = 30.0
    path = tmp_path / "red.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def test_loaded_colorizer_gives_colour_for_grey_and_keeps_lightness(red_weights) -> None:
    model = load_user_model("colorize", red_weights, sha256_file(red_weights), "cpu")
    assert model.task == "colorize" and model.in_channels == model.out_channels == 3
    rng = np.random.default_rng(0)
    grey = cv2.GaussianBlur(rng.random((30, 41), dtype=np.float32), (0, 0), 2)[..., None]
    for image in (grey, np.repeat(grey, 3, axis=2), rng.random((30, 41, 3), dtype=np.float32)):
        out = model.run(image)
        assert out.shape == (30, 41, 3) and out.dtype == np.float32
        rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
        lab_in = _hwc(C.rgb_to_lab(_nchw(rgb)))
        lab_out = _hwc(C.rgb_to_lab(_nchw(out)))
        assert np.abs(lab_out[..., 0] - lab_in[..., 0]).max() < 0.05  # L kept
        assert np.hypot(lab_out[..., 1], lab_out[..., 2]).mean() > 10  # and coloured (red)
        assert out[..., 0].mean() > out[..., 1].mean()


def test_colorize_operator_uses_the_model(red_weights) -> None:
    from daguerre import operators

    model = load_user_model("colorize", red_weights, None, "cpu")
    op = operators.LearnedOperator("colorize", model)
    grey = np.linspace(0.1, 0.9, 40 * 56, dtype=np.float32).reshape(40, 56, 1)
    result = op.apply(grey, {}, operators.StageContext())
    out = result.pixels
    assert out.shape == (40, 56, 3) and result.parameters["view"] == [56, 40]
    lightness = cv2.cvtColor(out, cv2.COLOR_RGB2Lab)[..., 0]
    original = cv2.cvtColor(np.repeat(grey, 3, axis=2), cv2.COLOR_RGB2Lab)[..., 0]
    assert np.abs(lightness - original).mean() < 0.5
    assert out[..., 0].mean() > out[..., 2].mean() + 0.02
