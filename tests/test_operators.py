"""Operator resolution: user's choice, shipped default, classical fallback."""

from __future__ import annotations

import pytest

from daguerre.operators import CLASSICAL, identity, resolve_operators
from daguerre.records import PIXEL_STAGES


def test_every_stage_resolves_and_face_needs_the_users_model() -> None:
    operators = resolve_operators(PIXEL_STAGES, {}, "cpu")
    assert set(operators) == {*PIXEL_STAGES, "damage"}
    assert operators["face"] is None  # no shipped face model: bring GFPGAN or CodeFormer
    assert resolve_operators(("denoise",), {}, "cpu")["colorize"] is None  # not run: not loaded
    for stage in ("inpaint", "tone", "upscale", "colorize"):
        assert operators[stage] is not None and operators[stage].stage == stage
    assert operators["inpaint"].id == "daguerre-inpaint-s"  # the learned defaults
    assert operators["colorize"].id == "daguerre-colorize-s"


def test_classical_can_be_forced() -> None:
    operators = resolve_operators(("denoise",), {"denoise": "classical"}, "cpu")
    assert isinstance(operators["denoise"], CLASSICAL["denoise"])
    assert identity(operators["denoise"]).startswith("opencv.fastNlMeans@")


def test_classical_colorizer_does_not_exist() -> None:
    with pytest.raises(ValueError, match="no classical operator"):
        resolve_operators(("colorize",), {"colorize": "classical"}, "cpu")


def test_upscale_choice_picks_the_model_of_each_factor() -> None:
    import numpy as np

    from daguerre.operators import LanczosUpscale, StageContext, operator_for, upscale_choice

    x2 = LanczosUpscale(id="x2-model")
    choice = upscale_choice({2: x2})
    assert operator_for(choice, {"scale": 2}) is x2
    assert isinstance(operator_for(choice, {"scale": 4}), LanczosUpscale)
    assert operator_for(choice, {"scale": 4}) is not x2
    assert identity(choice).startswith("x2=x2-model@") and ";else=opencv.resize-lanczos4@" in (
        identity(choice)
    )
    out = choice.apply(np.zeros((5, 6, 3), np.float32), {"scale": 4}, StageContext())
    assert out.pixels.shape == (20, 24, 3)


def test_denoise_choice_gives_one_band_masters_the_grey_model() -> None:
    from daguerre.operators import NlmDenoise, denoise_choice, operator_for

    colour, grey = NlmDenoise(id="colour-model"), NlmDenoise(id="grey-model")
    choice = denoise_choice(colour, grey)
    assert operator_for(choice, {"bands": 1}) is grey
    assert operator_for(choice, {"bands": 3}) is colour
    assert operator_for(choice, {"sigma": 9.0}) is colour  # plans from before bands were known
    assert identity(choice).startswith("bands1=grey-model@") and ";else=colour-model@" in (
        identity(choice)
    )


def _random_damage_model(path, rule: dict | None = None, context_levels: int = 0) -> str:
    """Random damage weights (context levels switched on); with `rule`, carrying it as
    `daguerre train` writes it."""
    import json

    import torch
    from safetensors.torch import save_file

    from daguerre.models.arch.damage import DamageUNet
    from daguerre.models.loading import sha256_file

    torch.manual_seed(0)
    meta = None
    if rule is not None:
        info = {"task": "damage", "architecture": "daguerre-damage-unet", **rule}
        meta = {"daguerre": json.dumps(info)}
    model = DamageUNet(channels=8, context_levels=context_levels)
    for level in model.context:
        torch.nn.init.normal_(level.lift.weight, std=0.1)  # zero at first: not a test of them
    save_file(model.state_dict(), str(path), metadata=meta)
    return sha256_file(path)


@pytest.mark.parametrize("context_levels", [0, 1])
def test_learned_damage_detector_tiles_like_the_whole_image(tmp_path, context_levels) -> None:
    import numpy as np

    from daguerre.imaging.tiling import tile_array
    from daguerre.operators import ClassicalDamage, LearnedDamage, damage_detector

    assert isinstance(damage_detector({"damage": "classical"}, "cpu"), ClassicalDamage)
    path = tmp_path / "damage.safetensors"
    sha = _random_damage_model(path, context_levels=context_levels)
    detector = damage_detector({"damage": str(path)}, "cpu")
    assert isinstance(detector, LearnedDamage) and detector.weights_sha256 == sha
    req, mask_fn = detector.mask_job()
    assert req.blend == 0 and req.multiple_of == 4 * 2**context_levels
    assert req.context >= (48, 70)[context_levels]  # the measured reach (test_models)
    img = np.random.default_rng(0).random((150, 173, 3), dtype=np.float32)

    def prob(pixels, tile):
        return detector.model.run(pixels)

    whole = detector.model.run(img)
    tiled = tile_array(img, prob, req, tile=128 + 64 * context_levels)
    assert np.abs(tiled - whole).max() < 1e-4
    assert mask_fn(img, None).shape == (150, 173)


def test_detect_stage_records_the_damage_model(tmp_path) -> None:
    import cv2
    from skimage import data

    from daguerre.config import RestoreConfig
    from daguerre.tasks.stages import detect_stage, inspect_master

    source, dest = tmp_path / "masters", tmp_path / "out"
    source.mkdir()
    cv2.imwrite(str(source / "cat.png"), data.chelsea()[:96, :128, ::-1])
    path = tmp_path / "damage.safetensors"
    sha = _random_damage_model(path)
    cfg = RestoreConfig(source=str(source), dest=str(dest), models={"damage": str(path)})
    (asset,) = inspect_master.fn(cfg.source, "cat.png")
    detected = detect_stage.fn(cfg, 1, asset)
    assert detected.step.weights_sha256 == sha
    assert detected.step.parameters["damage"].startswith("user:daguerre-damage-unet@")
    # uncalibrated weights (not written by our trainer): the default threshold, recorded
    assert detected.step.parameters["damage_threshold"] == 0.5
    assert "damage_grow_threshold" not in detected.step.parameters

    # A calibrated hysteresis rule travels with the weights, is applied and recorded.
    calibrated = tmp_path / "calibrated.safetensors"
    _random_damage_model(calibrated, {"decision_threshold": 0.9, "grow_threshold": 0.6})
    cfg = RestoreConfig(source=str(source), dest=str(dest), models={"damage": str(calibrated)})
    detected = detect_stage.fn(cfg, 1, asset)
    assert detected.step.parameters["damage_threshold"] == 0.9
    assert detected.step.parameters["damage_grow_threshold"] == 0.6


def test_ensemble_applies_to_learned_pixel_aligned_stages_only() -> None:
    from daguerre.operators import LearnedOperator, OperatorChoice, with_ensemble

    plain = resolve_operators(("denoise", "inpaint", "tone", "upscale"), {}, "cpu")
    operators = resolve_operators(("denoise", "inpaint", "tone", "upscale"), {}, "cpu", 4)
    inpaint = operators["inpaint"]
    assert isinstance(inpaint, LearnedOperator) and inpaint.ensemble == 4
    assert identity(inpaint) == identity(plain["inpaint"]) + "~ensemble4"  # a new config hash
    assert operators["tone"] is plain["tone"]  # classical: unchanged
    for stage in ("denoise", "upscale"):  # choices: each model of the choice
        choice = operators[stage]
        assert isinstance(choice, OperatorChoice)
        assert all(op.ensemble == 4 for op in choice.by_value.values())
    assert plain["inpaint"].ensemble == 1  # the cached operator itself is not changed
    with pytest.raises(ValueError, match="ensemble"):
        with_ensemble(inpaint, 3)


def test_replaced_user_weights_are_reloaded(tmp_path) -> None:
    import os

    import torch
    from safetensors.torch import save_file

    from daguerre import operators
    from daguerre.models.arch.denoise import FFDNetLike

    weights = tmp_path / "denoise.safetensors"

    def write(seed: int) -> None:
        torch.manual_seed(seed)
        sd = FFDNetLike(in_channels=3, channels=8, layers=4).state_dict()
        save_file({k: v.contiguous() for k, v in sd.items()}, str(weights))

    write(0)
    spec = {"denoise": str(weights)}
    first = resolve_operators(("denoise",), spec, "cpu")["denoise"]
    assert resolve_operators(("denoise",), spec, "cpu")["denoise"] is first  # loaded once
    write(1)  # retrained weights saved over the same path
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # coarse-clock filesystems
    second = resolve_operators(("denoise",), spec, "cpu")["denoise"]
    assert second.weights_sha256 != first.weights_sha256
    assert [k for k in operators._cache if k[:2] == ("denoise", str(weights))] == [
        ("denoise", str(weights), "cpu", operators._weights_version(str(weights)))
    ]  # the old model was dropped
    pinned = f"{weights}#sha256={second.weights_sha256}"
    assert operators._weights_version(pinned) is None  # pinned content cannot change


def test_a_named_grey_denoiser_serves_grey_images_and_the_colour_default_the_rest() -> None:
    from daguerre.operators import LearnedOperator, OperatorChoice, operator_for

    grey_m = resolve_operators(("denoise",), {"denoise": "daguerre-denoise-grey-m"}, "cpu")
    choice = grey_m["denoise"]
    assert isinstance(choice, OperatorChoice)
    grey, colour = operator_for(choice, {"bands": 1}), operator_for(choice, {"bands": 3})
    assert isinstance(grey, LearnedOperator) and isinstance(colour, LearnedOperator)
    assert grey.model.in_channels == 1 and colour.model.in_channels == 3
    assert identity(choice).startswith("bands1=daguerre-denoise-grey-m@")
    assert ";else=daguerre-denoise-m@" in identity(choice)
    # A colour net named with --model still serves every image.
    named = resolve_operators(("denoise",), {"denoise": "daguerre-denoise-s"}, "cpu")
    assert isinstance(named["denoise"], LearnedOperator)
