"""Bring-your-own colorizer (DDColor) and face models (GFPGAN, CodeFormer) through spandrel.

The networks are built here with random weights (the smallest hyperparameters spandrel still
detects, or its fixed ones where it detects none), saved as safetensors and loaded back through
`load_user_model`. Face networks only run at 512 px, which costs 10+ s each on a small CPU:
their wrapping (range, layout, options) is checked here against a stand-in forward, and the
real forward passes run under CI or with DAGUERRE_SLOW_TESTS=1.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from daguerre.models import loading
from daguerre.models.loading import (
    CODEFORMER_FIDELITY,
    FACE_SIZE,
    LoadedModel,
    WeightsError,
    load_user_model,
    sha256_file,
)

SLOW = os.environ.get("DAGUERRE_SLOW_TESTS") == "1" or os.environ.get("CI", "") == "true"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on a small, busy CPU two threads wait on each other at every op
    (measured here: 20x slower on these small tensors)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _seeded(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()


def _saved(module: torch.nn.Module, path: Path, dtype: torch.dtype | None = None) -> str:
    sd = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    if dtype is not None:  # halves the file; loading casts back to the model's float32
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    save_file(sd, str(path))
    return sha256_file(path)


def _ddcolor() -> torch.nn.Module:
    from spandrel_extra_arches.architectures.DDColor import DDColor

    # convnext-t is the smallest encoder spandrel names; nf (512) and the three scales are
    # fixed by the decoder. Few queries, one decoder layer. input_size only sizes the probe
    # pass the constructor makes.
    return DDColor(
        encoder_name="convnext-t",
        num_output_channels=2,
        num_queries=8,
        dec_layers=1,
        last_norm="Spectral",
        input_size=(32, 32),
    )


def _gfpgan() -> torch.nn.Module:
    from spandrel.architectures.GFPGAN import GFPGAN

    # spandrel builds only GFPGAN v1.2-1.4 (clean) with these fixed hyperparameters.
    return GFPGAN(
        out_size=512,
        num_style_feat=512,
        channel_multiplier=2,
        decoder_load_path=None,
        fix_decoder=False,
        num_mlp=8,
        input_is_latent=True,
        different_w=True,
        narrow=1,
        sft_half=True,
    )


def _codeformer() -> torch.nn.Module:
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    # The VQGAN around it is fixed (512 px, 16x16 latents); the transformer is not.
    return CodeFormer(
        dim_embd=64, n_head=8, n_layers=1, codebook_size=32, latent_size=256, connect_list=["32"]
    )


@pytest.fixture(scope="module")
def ddcolor_file(tmp_path_factory) -> tuple[str, str]:
    path = tmp_path_factory.mktemp("ddcolor") / "ddcolor.safetensors"
    return str(path), _saved(_seeded(_ddcolor), path)


@pytest.fixture(scope="module")
def face_files(tmp_path_factory) -> dict[str, tuple[str, str]]:
    folder = tmp_path_factory.mktemp("faces")
    files = {}
    for arch, build, dtype in [
        ("GFPGAN", _gfpgan, torch.float16),
        ("CodeFormer", _codeformer, None),
    ]:
        path = folder / f"{arch}.safetensors"
        files[arch] = (str(path), _saved(_seeded(build), path, dtype))
    return files


def _image(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, c), dtype=np.float32)


def _lab(rgb: np.ndarray) -> np.ndarray:
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return cv2.cvtColor(np.ascontiguousarray(rgb, np.float32), cv2.COLOR_RGB2Lab)


# ----------------------------------------------------------------------------- DDColor


def test_ddcolor_colorizes_and_keeps_lightness(ddcolor_file, monkeypatch) -> None:
    monkeypatch.setattr(loading, "DDCOLOR_SIZE", 64)  # a small working size: a fast test
    path, sha = ddcolor_file
    model = load_user_model("colorize", path, sha, "cpu")
    assert isinstance(model, LoadedModel)
    assert (model.task, model.architecture, model.model_id) == (
        "colorize",
        "DDColor",
        "user:DDColor",
    )
    assert (model.scale, model.in_channels, model.out_channels) == (1, 3, 3)
    assert model.weights_sha256 == sha and model.source == path and model.fixed_size is None

    seen: list[torch.Tensor] = []
    model.module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    colour = _image(40, 56)
    # the same CIELAB lightness without chroma: what DDColor is meant to see of `colour`
    lab = _lab(colour)
    lab[..., 1:] = 0
    grey = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)[..., :1]

    for img in (grey, colour):
        out = model.run(img)
        assert out.shape == (40, 56, 3) and out.dtype == np.float32
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
        # the result keeps the input's lightness (the colorize stage relies on it)
        np.testing.assert_allclose(_lab(out)[..., 0], _lab(img)[..., 0], atol=0.5)
    # DDColor saw a grey (R = G = B) sRGB image at its working size, the same for both inputs
    assert [tuple(x.shape) for x in seen] == [(1, 3, 64, 64)] * 2
    for x in seen:
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
        assert float(x.min()) >= 0 and float(x.max()) <= 1
    torch.testing.assert_close(seen[0], seen[1], atol=2e-3, rtol=0)
    np.testing.assert_allclose(model.run(colour), model.run(grey), atol=5e-3)


def test_ddcolor_is_refused_for_other_tasks(ddcolor_file) -> None:
    path, sha = ddcolor_file
    for task in ("denoise", "upscale", "face"):
        with pytest.raises(WeightsError, match="colorize model, not usable for"):
            load_user_model(task, path, sha, "cpu")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_user_model("colorize", path, "0" * 64, "cpu")


def test_extra_architectures_stay_out_of_spandrels_global_registry(ddcolor_file) -> None:
    from spandrel import MAIN_REGISTRY

    with pytest.raises(WeightsError):
        load_user_model("denoise", ddcolor_file[0], None, "cpu")  # detected as DDColor
    assert "DDColor" in loading._spandrel_registry()
    assert "DDColor" not in MAIN_REGISTRY and "CodeFormer" not in MAIN_REGISTRY


def test_a_restoration_model_is_not_a_colorizer(tmp_path) -> None:
    from spandrel.architectures.DnCNN import DnCNN

    path = tmp_path / "dncnn.safetensors"
    _saved(_seeded(lambda: DnCNN(in_nc=3, out_nc=3, nc=16, nb=4, act_mode="BR")), path)
    with pytest.raises(WeightsError, match="other than DDColor"):
        load_user_model("colorize", str(path), None, "cpu")
    with pytest.raises(WeightsError, match="other than GFPGAN and CodeFormer"):
        load_user_model("face", str(path), None, "cpu")


# ----------------------------------------------------------------------------- faces


class _Stand:
    """Stands in for a face network's forward: records what it is given and answers the way
    GFPGAN and CodeFormer do ((image in [-1, 1], extra)), here the negated input."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, dict[str, Any]]] = []

    def __call__(self, x: torch.Tensor, **options: Any) -> tuple[torch.Tensor, None]:
        self.calls.append((x, options))
        return -x, None


@pytest.mark.parametrize("arch", ["GFPGAN", "CodeFormer"])
def test_face_models_load_and_work_in_minus_one_to_one(face_files, arch, monkeypatch) -> None:
    path, sha = face_files[arch]
    model = load_user_model("face", path, sha, "cpu")
    assert (model.task, model.architecture, model.model_id) == ("face", arch, f"user:{arch}")
    assert (model.scale, model.in_channels, model.out_channels) == (1, 3, 3)
    assert model.weights_sha256 == sha and model.fixed_size == FACE_SIZE == 512
    assert model.size_requirements.minimum == FACE_SIZE  # what the face stage reads

    stand = _Stand()
    monkeypatch.setattr(model.module, "forward", stand)
    crop = _image(FACE_SIZE, FACE_SIZE)
    out = model.run(crop)
    assert out.shape == crop.shape and out.dtype == np.float32
    # [0, 1] -> [-1, 1] -> negated -> back to [0, 1]: exactly the inverted crop
    np.testing.assert_allclose(out, 1.0 - crop, atol=1e-6)
    x, options = stand.calls[-1]
    assert tuple(x.shape) == (1, 3, FACE_SIZE, FACE_SIZE) and x.is_contiguous()
    torch.testing.assert_close(x[0].permute(1, 2, 0), torch.from_numpy(crop) * 2 - 1)
    expected = (
        {"weight": CODEFORMER_FIDELITY}
        if arch == "CodeFormer"
        else {"return_rgb": False, "randomize_noise": False}
    )
    assert options == expected

    grey = model.run(crop[..., :1])  # grey crops: replicated in, averaged out
    np.testing.assert_allclose(grey, 1.0 - crop[..., :1], atol=1e-6)
    small = _image(100, 80, seed=1)  # another size: resized to 512 and back
    assert model.run(small).shape == (100, 80, 3)
    assert tuple(stand.calls[-1][0].shape) == (1, 3, FACE_SIZE, FACE_SIZE)


@pytest.mark.parametrize("arch", ["GFPGAN", "CodeFormer"])
def test_face_models_are_refused_for_other_tasks(face_files, arch) -> None:
    path, sha = face_files[arch]
    task = "upscale" if arch == "GFPGAN" else "colorize"
    with pytest.raises(WeightsError, match=f"face model, not usable for {task}"):
        load_user_model(task, path, sha, "cpu")


@pytest.mark.skipif(not SLOW, reason="512 px face networks on CPU: set DAGUERRE_SLOW_TESTS=1")
@pytest.mark.parametrize("arch", ["GFPGAN", "CodeFormer"])
def test_face_models_real_forward(face_files, arch) -> None:
    path, sha = face_files[arch]
    model = load_user_model("face", path, sha, "cpu")
    crop = _image(FACE_SIZE, FACE_SIZE, seed=2)
    out = model.run(crop)
    assert out.shape == crop.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(model.run(crop), out)  # no fresh noise: repeatable
