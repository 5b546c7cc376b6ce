"""Bring-your-own LaMa (large-hole inpainting) through spandrel.

spandrel's LaMa has no size hyperparameters (51 M parameters, fixed), so it is built once with
seeded random weights, saved as fp16 safetensors (about 100 MB instead of 200) and loaded back
through `load_user_model` for every test. A forward at these sizes takes a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from daguerre.models.loading import LoadedModel, WeightsError, load_user_model, sha256_file
from daguerre.operators import LearnedOperator, StageContext, model_requirements

# Not multiples of LaMa's 8: run() pads and crops.
H, W = 37, 53


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on a small, busy CPU two threads wait on each other at every op."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lama_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """LaMa weights as spandrel builds them (RGB + mask in, RGB out): path and sha256."""
    from spandrel.architectures.LaMa import LaMa

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = LaMa(in_nc=4, out_nc=3)
    # fp16 halves the file; loading casts back to the model's float32
    sd = {
        k: (v.half() if v.is_floating_point() else v).detach().contiguous()
        for k, v in net.state_dict().items()
    }
    path = tmp_path_factory.mktemp("lama") / "big-lama.safetensors"
    save_file(sd, str(path))
    yield path, sha256_file(path)
    path.unlink()  # 100 MB: not left behind in pytest's kept temporary directories


@pytest.fixture(scope="module")
def lama(lama_file: tuple[Path, str]) -> LoadedModel:
    path, sha = lama_file
    return load_user_model("inpaint", str(path), sha, "cpu")


def _image_and_mask(channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    base = 0.5 + 0.3 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 5.0)[..., None]
    img = base + 0.05 * rng.standard_normal((H, W, channels), dtype=np.float32)
    mask = np.zeros((H, W), bool)
    mask[10:28, 15:40] = True  # a large hole
    mask[rng.random((H, W)) < 0.02] = True  # and specks
    return np.clip(img, 0.0, 1.0).astype(np.float32), mask


def test_lama_facts(lama: LoadedModel, lama_file: tuple[Path, str]) -> None:
    path, sha = lama_file
    assert (lama.task, lama.architecture, lama.model_id) == ("inpaint", "LaMa", "user:LaMa")
    assert lama.needs_mask and lama.scale == 1
    assert (lama.in_channels, lama.out_channels) == (3, 3)
    assert lama.weights_sha256 == sha and lama.source == str(path)
    assert next(lama.module.parameters()).dtype == torch.float32
    # three stride-2 stages: multiples of 8; spandrel's minimum of 16
    assert (lama.size_requirements.multiple_of, lama.size_requirements.minimum) == (8, 16)
    # global receptive field: big tiles with wide context, still splittable on OOM
    req = model_requirements(lama)
    assert lama.tiling == "discouraged" and not req.whole
    assert req.context == lama.receptive_overlap == 256 and req.tile == 2048
    assert req.multiple_of == 8 and req.minimum == 16


def test_run_fills_only_the_hole(lama: LoadedModel) -> None:
    img, mask = _image_and_mask()
    out = lama.run(img, mask=mask)
    assert out.shape == (H, W, 3) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    # LaMa composes its fill with the input itself: outside the hole nothing moves
    np.testing.assert_array_equal(out[~mask], img[~mask])
    assert not np.array_equal(out[mask], img[mask])
    # mask = 1 is the hole and its pixels are zeroed before the network sees them: what was
    # there makes no difference (an inverted mask convention would change everything)
    scribbled = img.copy()
    scribbled[mask] = np.random.default_rng(1).random((int(mask.sum()), 3), dtype=np.float32)
    np.testing.assert_array_equal(lama.run(scribbled, mask=mask), out)


def test_run_grey_and_small(lama: LoadedModel) -> None:
    img, mask = _image_and_mask(channels=1)
    out = lama.run(img, mask=mask)
    assert out.shape == (H, W, 1)
    # grey runs as three equal channels averaged back: equal up to float rounding here, and
    # bit-identical through the stage (below), which keeps the input outside the mask
    np.testing.assert_allclose(out[~mask], img[~mask], rtol=0, atol=1e-6)
    # below spandrel's 16 px minimum: padded up and cropped back
    tiny = lama.run(img[:9, :12], mask=mask[:9, :12])
    assert tiny.shape == (9, 12, 1) and np.isfinite(tiny).all()
    with pytest.raises(ValueError, match="mask"):
        lama.run(img)


def test_inpaint_stage_keeps_unmasked_pixels(lama: LoadedModel) -> None:
    img, mask = _image_and_mask()
    op = LearnedOperator("inpaint", lama)
    assert (op.id, op.weights_sha256) == ("user:LaMa", lama.weights_sha256)
    result = op.apply(img, {}, StageContext(damage_mask=mask))
    assert result.pixels.shape == img.shape and result.pixels.dtype == np.float32
    np.testing.assert_array_equal(result.pixels[~mask], img[~mask])
    assert not np.array_equal(result.pixels[mask], img[mask])
    assert result.parameters["architecture"] == "LaMa"
    assert result.metrics["masked_pixels"] == int(mask.sum())
    # no damage, no change (the model is not even run)
    empty = op.apply(img, {}, StageContext(damage_mask=np.zeros((H, W), bool)))
    np.testing.assert_array_equal(empty.pixels, img)
    grey = img.mean(axis=2, keepdims=True)
    filled = op.apply(grey, {}, StageContext(damage_mask=mask)).pixels
    assert filled.shape == (H, W, 1)
    np.testing.assert_array_equal(filled[~mask], grey[~mask])


@pytest.mark.parametrize("task", ["denoise", "upscale"])
def test_lama_refused_for_other_tasks(lama_file: tuple[Path, str], task: str) -> None:
    path, sha = lama_file
    with pytest.raises(WeightsError, match="Inpainting"):
        load_user_model(task, str(path), sha, "cpu")
