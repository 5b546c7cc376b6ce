"""Model layer: registry, our architectures, safe loading, bring-your-own weights, tiling.

Everything runs on tiny random-initialised nets (a few thousand parameters) and small images;
nothing is downloaded and /work/shared is not needed.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from daguerre.models import registry
from daguerre.models.arch import ARCHITECTURES, detect_architecture, get_architecture
from daguerre.models.arch import denoise as denoise_arch
from daguerre.models.arch import upscale as upscale_arch
from daguerre.models.inference import estimate_noise_sigma, pick_device, run_tiled
from daguerre.models.loading import (
    LoadedModel,
    ModelSpec,
    WeightsError,
    load_model,
    load_state_dict,
    load_user_model,
    parse_model_spec,
    sha256_file,
)
from daguerre.models.registry import ModelDescriptor, SizeRequirements

TINY_DENOISE = {"in_channels": 3, "channels": 16, "layers": 4}


def _seeded(build, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _save(state_dict: dict, path, fmt: str) -> str:
    sd = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    if fmt == "safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return sha256_file(path)


def _image(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth synthetic picture (gradients, a disc, stripes) in [0, 1], float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = []
    for k in range(c):
        base = 0.3 + 0.4 * (xx / w) * (k + 1) / c + 0.2 * (yy / h)
        base += 0.2 * ((xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (min(h, w) / 3) ** 2)
        base += 0.05 * np.sin(xx / (3 + k) + rng.uniform(0, 6))
        chans.append(base)
    return np.clip(np.stack(chans, axis=2), 0, 1).astype(np.float32)


def _descriptor(**overrides) -> ModelDescriptor:
    base = dict(
        id="test-denoise",
        task="denoise",
        architecture=denoise_arch.ARCH_NAME,
        version="0.0.1",
        scale=1,
        in_channels=3,
        out_channels=3,
        size_requirements=SizeRequirements(0, 2),
        tiling="supported",
        receptive_overlap=10,
        supports_half=True,
        supports_bfloat16=True,
        weights_file=None,
        weights_sha256=None,
        licence="Apache-2.0",
        training={},
        hyperparameters=TINY_DENOISE,
        takes_noise_level=True,
    )
    base.update(overrides)
    return ModelDescriptor(**base)


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize("d", registry.SHIPPED, ids=lambda d: d.id)
def test_shipped_descriptors_have_their_weights(d: ModelDescriptor) -> None:
    assert registry.descriptor_problems(d) == []
    assert d.weights_path is not None and d.weights_path.is_file()
    assert sha256_file(d.weights_path) == d.weights_sha256
    get_architecture(d.architecture)
    assert registry.get_descriptor(d.id) is d


def test_registry_lookups() -> None:
    ids = [d.id for d in registry.SHIPPED]
    assert len(ids) == len(set(ids))
    with pytest.raises(KeyError, match="no shipped model"):
        registry.get_descriptor("no-such-model")
    with pytest.raises(ValueError, match="unknown task"):
        registry.default_for("sharpen")
    for task in registry.TASKS:
        d = registry.default_for(task)
        assert d is None or (d.task == task and d in registry.SHIPPED)
        for channels in (1, 3):
            d = registry.default_for(task, in_channels=channels)
            assert d is None or (d.task == task and d.in_channels == channels)
    assert isinstance(registry.SHIPPED, tuple)


def test_descriptor_is_immutable_and_checked() -> None:
    d = _descriptor()
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.scale = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        d.hyperparameters["layers"] = 99  # type: ignore[index]
    assert hash(d) == hash(_descriptor())
    for bad in (
        {"scale": 3},
        {"scale": 2},  # a denoiser cannot change the size
        {"task": "upscale", "scale": 1},
        {"tiling": "sometimes"},
        {"weights_file": "x.safetensors"},  # without a sha256
        {"weights_file": "a/b.safetensors", "weights_sha256": "0" * 64},
        {"weights_file": "x.safetensors", "weights_sha256": "XYZ"},
        {"task": "sharpen"},
    ):
        with pytest.raises(ValueError, match="invalid model descriptor"):
            _descriptor(**bad)
    assert SizeRequirements(16, 8).padded(5, 17) == (16, 24)


# ----------------------------------------------------------------------------- architectures


@pytest.mark.parametrize(
    "arch_name, hp",
    [
        (denoise_arch.ARCH_NAME, {"in_channels": 3, "channels": 16, "layers": 4}),
        (denoise_arch.ARCH_NAME, {"in_channels": 1, "channels": 8, "layers": 6}),
        (upscale_arch.ARCH_NAME, {"in_channels": 3, "channels": 16, "layers": 4, "scale": 2}),
        (upscale_arch.ARCH_NAME, {"in_channels": 1, "channels": 8, "layers": 3, "scale": 4}),
    ],
)
def test_arch_state_dict_round_trip(tmp_path, arch_name: str, hp: dict) -> None:
    arch = get_architecture(arch_name)
    model = _seeded(lambda: arch.build(**hp)).eval()
    path = tmp_path / "w.safetensors"
    _save(model.state_dict(), path, "safetensors")
    sd = load_state_dict(path, expected_sha256=sha256_file(path))
    assert detect_architecture(sd) is arch
    assert [a for a in ARCHITECTURES if a.detect(sd)] == [arch]  # no ambiguity
    assert arch.hyperparameters_from_state_dict(sd) == {**arch.default_hyperparameters, **hp}
    again = arch.load(sd).eval()
    x = torch.rand(1, hp["in_channels"], 12, 14)
    with torch.no_grad():
        if arch.takes_noise_level:
            sigma = torch.tensor([0.1])
            a, b = model(x, sigma), again(x, sigma)
        else:
            a, b = model(x), again(x)
    assert a.shape == (1, hp["in_channels"], 12 * arch.scale(hp), 14 * arch.scale(hp))
    torch.testing.assert_close(a, b)


def test_default_denoiser_matches_the_measured_recipe() -> None:
    model = get_architecture(denoise_arch.ARCH_NAME).build()
    n = sum(p.numel() for p in model.parameters())
    assert 380_000 < n < 390_000  # ENVIRONMENT.md: 384k parameters, 12 layers of 64


def test_opt_in_models_are_never_defaults(monkeypatch) -> None:
    from dataclasses import replace

    denoiser = registry.default_for("denoise")
    assert denoiser is not None
    opt_in = replace(denoiser, id="opt-in-denoiser", opt_in=True)
    monkeypatch.setattr(registry, "SHIPPED", (opt_in,))
    assert registry.default_for("denoise") is None
    assert registry.get_descriptor("opt-in-denoiser") is opt_in


def test_decision_threshold_only_for_damage_models() -> None:
    from dataclasses import replace

    denoiser = registry.default_for("denoise")
    assert denoiser is not None and denoiser.decision_threshold is None
    with pytest.raises(ValueError, match="decision_threshold"):
        replace(denoiser, decision_threshold=0.7)
    damage = registry.get_descriptor("daguerre-damage-s")
    assert replace(damage, grow_threshold=0.6).grow_threshold == 0.6
    for bad in (0.0, damage.decision_threshold):
        with pytest.raises(ValueError, match="grow_threshold"):
            replace(damage, grow_threshold=bad)
    with pytest.raises(ValueError, match="grow_threshold"):
        replace(damage, decision_threshold=None, grow_threshold=0.6)


def test_grey_denoiser_from_colour_is_exact_on_grey() -> None:
    torch.manual_seed(0)
    colour = denoise_arch.FFDNetLike(in_channels=3, channels=8, layers=4).eval()
    grey = denoise_arch.load(denoise_arch.grey_from_colour(colour.state_dict())).eval()
    assert grey.in_channels == 1
    x, sigma = torch.rand(2, 1, 10, 12), torch.tensor([0.05, 0.2])
    with torch.no_grad():
        expected = colour(x.expand(-1, 3, -1, -1), sigma).mean(dim=1, keepdim=True)
        torch.testing.assert_close(grey(x, sigma), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="colour"):
        denoise_arch.grey_from_colour(grey.state_dict())


def test_deepened_denoiser_computes_the_same() -> None:
    torch.manual_seed(0)
    shallow = denoise_arch.FFDNetLike(in_channels=1, channels=8, layers=6).eval()
    deep = denoise_arch.load(denoise_arch.deepened(shallow.state_dict(), 12)).eval()
    assert deep.layers == 12
    x, sigma = torch.rand(2, 1, 10, 12), torch.tensor([0.05, 0.2])
    with torch.no_grad():
        torch.testing.assert_close(deep(x, sigma), shallow(x, sigma), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="at least 6"):
        denoise_arch.deepened(shallow.state_dict(), 4)


def test_damage_context_levels_start_exact_and_stay_within_their_radius() -> None:
    from daguerre.models.arch import damage as damage_arch

    shallow = _seeded(lambda: damage_arch.DamageUNet(channels=4)).eval()
    deep = _seeded(lambda: damage_arch.DamageUNet(channels=4, context_levels=2), seed=1).eval()
    missing = deep.load_state_dict(shallow.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("context.") for k in missing)
    hp = damage_arch.hyperparameters_from_state_dict(deep.state_dict())
    assert hp == {"in_channels": 3, "channels": 4, "context_levels": 2}
    assert damage_arch.multiple_of(hp) == 16
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(deep(x), shallow(x))  # new levels add zero at first
    with pytest.raises(ValueError, match="multiples of 16"):
        deep(torch.rand(1, 3, 24, 48))
    # Once trained (non-zero lift), the field reaches further, but not past the radius.
    for level in deep.context:
        torch.nn.init.normal_(level.lift.weight, std=0.1)
    x = torch.rand(1, 3, 512, 512, requires_grad=True)
    deep(x)[0, 0, 256, 256].backward()
    assert x.grad is not None
    ys, xs = torch.nonzero(x.grad[0].abs().sum(0)).unbind(1)
    reach = int(max((ys - 256).abs().max(), (xs - 256).abs().max()))
    assert damage_arch.RECEPTIVE_RADIUS < reach <= damage_arch.receptive_radius(hp)


def test_our_descriptor_loads_verified(tmp_path, monkeypatch) -> None:
    model = _seeded(lambda: denoise_arch.FFDNetLike(**TINY_DENOISE))
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    sha = _save(model.state_dict(), tmp_path / "tiny.safetensors", "safetensors")
    d = _descriptor(weights_file="tiny.safetensors", weights_sha256=sha)
    loaded = load_model(d, device="cpu")
    assert (loaded.model_id, loaded.task, loaded.weights_sha256) == ("test-denoise", "denoise", sha)
    assert loaded.takes_noise_level and loaded.scale == 1 and loaded.version == "0.0.1"
    out = loaded.run(_image(17, 23), noise_sigma=10)
    assert out.shape == (17, 23, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1

    wrong = _descriptor(weights_file="tiny.safetensors", weights_sha256="0" * 64)
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_model(wrong, device="cpu")
    other_hp = _descriptor(
        weights_file="tiny.safetensors", weights_sha256=sha, hyperparameters={"channels": 32}
    )
    with pytest.raises(WeightsError, match="hyperparameters"):
        load_model(other_hp, device="cpu")


# ----------------------------------------------------------------------------- safe loading


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_without_running(tmp_path, how: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"weight": torch.zeros(2), "boom": _Evil(str(marker))}
    if how == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(WeightsError, match="refused"):
        load_state_dict(path, expected_sha256=None)
    with pytest.raises(WeightsError, match="refused"):
        load_user_model("denoise", str(path), None, "cpu")
    assert not marker.exists()


def test_sha256_mismatch_and_garbage_refused(tmp_path) -> None:
    path = tmp_path / "w.pth"
    sha = _save({"a": torch.ones(3)}, path, "pth")
    assert load_state_dict(path, expected_sha256=sha)["a"].sum() == 3
    assert load_state_dict(path.read_bytes(), expected_sha256=sha.upper())["a"].shape == (3,)
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_state_dict(path, expected_sha256="f" * 64)
    with pytest.raises(WeightsError, match="64 hex"):
        load_state_dict(path, expected_sha256="abc")
    (tmp_path / "junk.pth").write_bytes(b"not a model at all")
    with pytest.raises(WeightsError):
        load_state_dict(tmp_path / "junk.pth", expected_sha256=None)
    with pytest.raises(WeightsError, match="cannot read"):
        load_state_dict(tmp_path / "missing.safetensors", expected_sha256=None)


def test_state_dict_containers_are_unwrapped(tmp_path) -> None:
    path = tmp_path / "ema.pth"
    torch.save({"params_ema": {"module.w": torch.ones(2)}, "epoch": 3}, path)
    assert list(load_state_dict(path, expected_sha256=None)) == ["w"]


def test_parse_model_spec() -> None:
    sha = "ab" * 32
    assert parse_model_spec(f"denoise=/m/x.pth#sha256={sha.upper()}") == ModelSpec(
        "denoise", "/m/x.pth", sha
    )
    assert parse_model_spec("upscale=s3://bucket/models/x4.safetensors") == ModelSpec(
        "upscale", "s3://bucket/models/x4.safetensors", None
    )
    for bad in (
        "denoise",
        "sharpen=/x.pth",
        "denoise=",
        f"denoise=#sha256={sha}",
        "denoise=/x#sha256=12",
    ):
        with pytest.raises(ValueError):
            parse_model_spec(bad)


# ----------------------------------------------------------------------------- bring your own


def _spandrel_models():
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.DnCNN import DnCNN
    from spandrel.architectures.DRUNet import DRUNet
    from spandrel.architectures.SwinIR import SwinIR

    return [
        (
            "DnCNN",
            "denoise",
            1,
            False,
            lambda: DnCNN(in_nc=3, out_nc=3, nc=16, nb=4, act_mode="BR"),
        ),
        (
            "DnCNN",
            "denoise",
            1,
            True,
            lambda: DnCNN(in_nc=4, out_nc=3, nc=8, nb=8, act_mode="R", mode="FDnCNN"),
        ),
        ("DRUNet", "denoise", 1, True, lambda: DRUNet(in_nc=2, out_nc=1, nc=[8, 16, 32, 64], nb=2)),
        (
            "Compact",
            "upscale",
            2,
            False,
            lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=2, upscale=2),
        ),
        (
            "Compact",
            "upscale",
            4,
            False,
            lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4),
        ),
        (
            "SwinIR",
            "upscale",
            2,
            False,
            lambda: SwinIR(
                img_size=16,
                in_chans=3,
                embed_dim=12,
                depths=[2],
                num_heads=[2],
                window_size=4,
                mlp_ratio=2.0,
                upscale=2,
                upsampler="pixelshuffledirect",
            ),
        ),
    ]


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
@pytest.mark.parametrize(
    "arch_id, task, scale, noise_map, build",
    [
        pytest.param(*m, id=f"{m[0]}-x{m[2]}{'-noisemap' if m[3] else ''}")
        for m in _spandrel_models()
    ],
)
def test_bring_your_own_spandrel(tmp_path, fmt, arch_id, task, scale, noise_map, build) -> None:
    path = tmp_path / f"user.{fmt}"
    sha = _save(_seeded(build).state_dict(), path, fmt)
    model = load_user_model(task, str(path), sha, "cpu")
    assert isinstance(model, LoadedModel)
    assert (model.architecture, model.task, model.scale) == (arch_id, task, scale)
    assert model.weights_sha256 == sha and model.model_id == f"user:{arch_id}"
    assert model.takes_noise_level is noise_map
    img = _image(13, 18)
    out = model.run(img, noise_sigma=15)
    assert out.shape == (13 * scale, 18 * scale, 3) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert model.run(img[..., :1]).shape == (13 * scale, 18 * scale, 1)  # grey in, grey out

    other = "upscale" if task == "denoise" else "denoise"
    with pytest.raises(WeightsError, match="not usable|not an upscaler|not a denoiser"):
        load_user_model(other, str(path), sha, "cpu")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_user_model(task, str(path), "0" * 64, "cpu")


def test_byo_task_scale_and_unknown_checks(tmp_path) -> None:
    from spandrel.architectures.Compact import Compact

    path = tmp_path / "x2.safetensors"
    _save(
        _seeded(lambda: Compact(num_feat=8, num_conv=2, upscale=2)).state_dict(),
        path,
        "safetensors",
    )
    with pytest.raises(WeightsError, match="x4 was asked"):
        load_user_model("upscale", str(path), None, "cpu", scale=4)
    with pytest.raises(WeightsError, match="no bring-your-own"):
        load_user_model("colorize", str(path), None, "cpu")
    save_file({"foo.weight": torch.zeros(3, 3)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(WeightsError, match="unknown architecture"):
        load_user_model("denoise", str(tmp_path / "odd.safetensors"), None, "cpu")
    with pytest.raises(WeightsError, match="unsupported storage URI scheme"):
        load_user_model("denoise", "https://example.com/x.pth", None, "cpu")


def test_byo_our_own_trained_weights_and_spec_text(tmp_path) -> None:
    model = _seeded(lambda: upscale_arch.SRNet(in_channels=3, channels=8, layers=3, scale=2))
    path = tmp_path / "ours.safetensors"
    sha = _save(model.state_dict(), path, "safetensors")
    loaded = load_model(f"upscale={path}#sha256={sha}", device="cpu")
    assert (loaded.architecture, loaded.scale, loaded.task) == (
        upscale_arch.ARCH_NAME,
        2,
        "upscale",
    )
    with pytest.raises(WeightsError, match="a upscale model"):
        load_user_model("denoise", str(path), sha, "cpu")


# ----------------------------------------------------------------------------- running, tiling


def _tiny_loaded(tmp_path, **hp) -> LoadedModel:
    hp = {**TINY_DENOISE, **hp}
    model = _seeded(lambda: denoise_arch.FFDNetLike(**hp))
    path = tmp_path / "tiny.safetensors"
    _save(model.state_dict(), path, "safetensors")
    return load_user_model("denoise", str(path), None, "cpu")


def test_run_adapts_channels_and_pads(tmp_path) -> None:
    colour_model = _tiny_loaded(tmp_path)
    grey = _image(15, 21, 1)
    out = colour_model.run(grey, noise_sigma=20)
    assert out.shape == (15, 21, 1)
    # grey through a colour model == the mean of the colour model on the replicated image
    rep = colour_model.run(np.repeat(grey, 3, axis=2), noise_sigma=20)
    np.testing.assert_allclose(out[..., 0], rep.mean(axis=2), atol=1e-5)

    grey_model = _tiny_loaded(tmp_path, in_channels=1)
    colour = _image(15, 21, 3)
    out = grey_model.run(colour, noise_sigma=20)
    for k in range(3):
        np.testing.assert_allclose(
            out[..., k], grey_model.run(colour[..., k : k + 1], noise_sigma=20)[..., 0], atol=1e-5
        )
    # a grey image stored as RGB: one pass, the same as its single band
    grey_rgb = np.repeat(grey, 3, axis=2)
    np.testing.assert_array_equal(
        grey_model.run(grey_rgb, noise_sigma=20),
        np.repeat(grey_model.run(grey, noise_sigma=20), 3, axis=2),
    )
    with pytest.raises(ValueError, match="expected"):
        grey_model.run(colour[..., 0])
    assert grey_model.run(np.zeros((1, 1, 1), np.float32), noise_sigma=5).shape == (1, 1, 1)


def test_self_ensemble_averages_flipped_and_turned_passes(tmp_path) -> None:
    import torch

    from daguerre.models.inference import self_ensemble

    # A forward that is not equivariant (an asymmetric kernel, a mask-dependent offset), on a
    # non-square image: every pass must be turned back onto the input's grid.
    kernel = torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3) / 36

    def forward(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        assert mask is not None and mask.shape[-2:] == x.shape[-2:]
        return torch.nn.functional.conv2d(x, kernel, padding=1) + mask

    x = torch.rand(1, 1, 5, 7, generator=torch.Generator().manual_seed(0))
    mask = (torch.rand(1, 1, 5, 7, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    arr, m = x[0, 0].numpy(), mask[0, 0].numpy()
    passes = []
    for turns, mirrored in [(0, False), (0, True), (1, False), (1, True)] + [
        (t, f) for t in (2, 3) for f in (False, True)
    ]:
        xt, mt = np.rot90(arr, turns), np.rot90(m, turns)
        xt, mt = (xt[:, ::-1], mt[:, ::-1]) if mirrored else (xt, mt)
        y = forward(
            torch.from_numpy(xt.copy())[None, None], torch.from_numpy(mt.copy())[None, None]
        )
        y = y[0, 0].numpy()
        passes.append(np.rot90(y[:, ::-1] if mirrored else y, -turns))
    for n in (1, 2, 4, 8):
        got = self_ensemble(forward, x, mask, n)[0, 0].numpy()
        np.testing.assert_allclose(got, np.mean(passes[:n], axis=0), atol=1e-6)
    with pytest.raises(ValueError, match="ensemble"):
        self_ensemble(forward, x, mask, 3)

    # Through a loaded model: same shape, close to the plain run.
    model = _tiny_loaded(tmp_path)
    img = _image(15, 21, 3)
    out = model.run(img, noise_sigma=20, ensemble=8)
    assert out.shape == img.shape and np.abs(out - model.run(img, noise_sigma=20)).max() < 0.5


@pytest.mark.parametrize("kind", ["denoise", "upscale"])
def test_run_tiled_matches_untiled(tmp_path, kind: str) -> None:
    if kind == "denoise":
        model = _tiny_loaded(tmp_path)
    else:
        net = _seeded(lambda: upscale_arch.SRNet(channels=8, layers=4, scale=2))
        with torch.no_grad():
            net.tail.weight.normal_(0, 0.05)  # make the learned branch matter
        path = tmp_path / "sr.safetensors"
        _save(net.state_dict(), path, "safetensors")
        model = load_user_model("upscale", str(path), None, "cpu")
    img = np.clip(_image(150, 173) + np.random.default_rng(1).normal(0, 0.05, (150, 173, 3)), 0, 1)
    img = img.astype(np.float32)
    whole = model.run(img, noise_sigma=12)
    tiled = run_tiled(model, img, tile=64, noise_sigma=12)
    assert tiled.shape == whole.shape and tiled.dtype == np.float32
    assert np.abs(tiled - whole).max() < 1 / 255


def test_run_tiled_retries_smaller_tiles_on_oom(tmp_path) -> None:
    model = _tiny_loaded(tmp_path)
    real_run = model.run
    seen: list[int] = []

    def flaky(pixels, **kw):
        seen.append(max(pixels.shape[:2]))
        if max(pixels.shape[:2]) > 64:
            raise torch.cuda.OutOfMemoryError("fake OOM")
        return real_run(pixels, **kw)

    model.run = flaky  # type: ignore[method-assign]
    img = _image(140, 150)
    out = run_tiled(model, img, tile=128, noise_sigma=5)
    assert max(seen) > 64 and seen[-1] <= 64
    assert np.abs(out - real_run(img, noise_sigma=5)).max() < 1 / 255

    def broken(pixels, **kw):
        raise RuntimeError("something else")

    model.run = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="something else"):
        run_tiled(model, img, tile=64)


def test_estimate_noise_sigma() -> None:
    img = _image(128, 128)
    rng = np.random.default_rng(0)
    assert estimate_noise_sigma(img) < 3
    for sigma in (10, 25, 50):
        noisy = img + rng.normal(0, sigma / 255, img.shape).astype(np.float32)
        assert abs(estimate_noise_sigma(noisy) - sigma) < 0.1 * sigma + 1


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            pick_device("cuda")
    with pytest.raises((ValueError, RuntimeError)):
        pick_device("nonsense")


def test_loaded_run_is_deterministic_io(tmp_path) -> None:
    model = _tiny_loaded(tmp_path)
    img = _image(20, 20)
    buf = io.BytesIO()
    np.save(buf, model.run(img, noise_sigma=3))
    assert np.array_equal(np.load(io.BytesIO(buf.getvalue())), model.run(img, noise_sigma=3))


def test_byo_from_s3_uri_goes_through_storage(tmp_path, monkeypatch) -> None:
    import daguerre.storage

    model = _seeded(lambda: denoise_arch.FFDNetLike(**TINY_DENOISE))
    (tmp_path / "models").mkdir()
    sha = _save(model.state_dict(), tmp_path / "models" / "dn.safetensors", "safetensors")
    opened: list[tuple[str, bool]] = []

    class FakeStorage:
        def __init__(self, uri: str) -> None:
            self.root = tmp_path / uri.removeprefix("s3://bucket/")

        def read_bytes(self, key: str) -> bytes:
            return (self.root / key).read_bytes()

    def fake_open(uri: str, *, read_only: bool = False):
        opened.append((uri, read_only))
        return FakeStorage(uri)

    monkeypatch.setattr(daguerre.storage, "open_storage", fake_open)
    loaded = load_user_model("denoise", "s3://bucket/models/dn.safetensors", sha, "cpu")
    assert opened == [("s3://bucket/models", True)]
    assert loaded.weights_sha256 == sha and loaded.source == "s3://bucket/models/dn.safetensors"


def test_a_shipped_model_can_be_chosen_by_id() -> None:
    from daguerre.models.loading import WeightsError, load_user_model
    from daguerre.models.registry import SHIPPED

    first = SHIPPED[0]
    model = load_user_model(first.task, first.id, device="cpu")
    assert model.model_id == first.id and model.weights_sha256 == first.weights_sha256
    other = next(t for t in ("denoise", "upscale") if t != first.task)
    with pytest.raises(WeightsError, match="not a"):
        load_user_model(other, first.id, device="cpu")
    with pytest.raises(WeightsError, match="sha256"):
        load_user_model(first.task, first.id, "0" * 64, device="cpu")
