"""Training: data checks, the split, degradations, and short real runs on synthetic images.

The runs train tiny nets (4 layers, 16 channels) for seconds on PNGs the test writes; nothing
here needs /work/shared.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from daguerre.models.loading import load_user_model, safetensors_metadata, sha256_file
from daguerre.models.training import (
    Recipe,
    check_data_dirs,
    degrade_for_denoise,
    degrade_for_upscale,
    list_images,
    split_files,
    train,
)

# threads=1: on a busy shared 2-core machine two OpenMP threads slow tiny nets down many times.
TINY = {"layers": 4, "channels": 16, "batch_size": 8, "patch": 32, "val_patch": 48, "threads": 1}


def _picture(h: int, w: int, seed: int) -> np.ndarray:
    """Synthetic (H, W, 3) uint8 RGB: smooth shading, discs and bars of random colours."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for k in range(3):
        img[..., k] = rng.uniform(0.2, 0.6) + 0.3 * (xx / w) * rng.uniform(-1, 1) + 0.2 * yy / h
    for _ in range(4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(6, 20)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 1, 3)
    y0 = int(rng.integers(0, h - 10))
    img[y0 : y0 + 6, :] = rng.uniform(0, 1, 3)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("images")
    for i in range(10):
        cv2.imwrite(str(d / f"c{i}.png"), _picture(96, 112, i)[..., ::-1])
    (d / "sub").mkdir()
    cv2.imwrite(str(d / "sub" / "g.bmp"), cv2.cvtColor(_picture(80, 90, 99), cv2.COLOR_RGB2GRAY))
    cv2.imwrite(str(d / "j.jpg"), _picture(100, 100, 7)[..., ::-1])
    (d / "notes.txt").write_text("not an image")
    return d


def test_test_sets_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="test set"):
        check_data_dirs([Path("/work/shared/datasets/test/CBSD68")])
    with pytest.raises(ValueError, match="test set"):
        check_data_dirs([Path("/work/shared/datasets/train/../test/Set12")])
    fake = tmp_path / "datasets" / "test" / "x"
    fake.mkdir(parents=True)
    with pytest.raises(ValueError, match="test set"):
        check_data_dirs([fake])
    with pytest.raises(ValueError, match="does not exist"):
        check_data_dirs([tmp_path / "missing"])
    with pytest.raises(ValueError, match="test set"):
        train("denoise", [fake], tmp_path / "w.safetensors", minutes=0.01, progress=False)


def test_listing_and_split_are_deterministic(data_dir) -> None:
    files = list_images([data_dir])
    assert len(files) == 12  # png, bmp in a sub-folder, jpg; not the .txt
    train_a, val_a = split_files(files, 0.2)
    train_b, val_b = split_files(list(reversed(files)), 0.2)
    assert (train_a, val_a) == (train_b, val_b)
    assert len(val_a) == 2 and not set(train_a) & set(val_a)
    assert split_files(files, 0.0)[1] == []
    assert len(split_files(files[:3], 0.01)[1]) == 1  # at least one validation file


def test_denoise_degradation_contract() -> None:
    rng = np.random.default_rng(0)
    r = Recipe()
    clean = _picture(48, 48, 1).astype(np.float32) / 255
    grey_seen = colour_seen = 0
    for _ in range(200):
        c, n, sigma = degrade_for_denoise(clean, rng, r)
        assert c.shape == n.shape == (48, 48, 3) and n.dtype == np.float32
        assert 0 <= sigma <= 80
        same = np.array_equal(c[..., 0], c[..., 1]) and np.array_equal(n[..., 0], n[..., 2])
        grey_seen += same
        colour_seen += not same
    assert 20 < grey_seen < 90 and colour_seen > 100  # ~25 % grey with identical noise
    # Gaussian sigma is the true one
    g = Recipe(poisson_fraction=0, grain_fraction=0, jpeg_fraction=0, clip_fraction=0)
    c, n, sigma = degrade_for_denoise(np.full((64, 64, 3), 0.5, np.float32), rng, g)
    assert abs((n - c).std() * 255 - sigma) < 0.1 * sigma + 0.5


def test_upscale_degradation_contract() -> None:
    rng = np.random.default_rng(0)
    hr = _picture(64, 64, 3).astype(np.float32) / 255
    for scale in (2, 4):
        lr = degrade_for_upscale(hr, scale, rng)
        assert lr.shape == (64 // scale, 64 // scale, 3) and lr.dtype == np.float32
        assert lr.min() >= 0 and lr.max() <= 1


def test_unknown_recipe_and_task_are_refused(data_dir, tmp_path) -> None:
    with pytest.raises(TypeError, match="unknown recipe"):
        train("denoise", [data_dir], tmp_path / "w.safetensors", 0.01, lr_typo=1)
    with pytest.raises(ValueError, match="cannot train"):
        train("face", [data_dir], tmp_path / "w.safetensors", 0.01)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_denoise_training_smoke_resume_and_use(data_dir, tmp_path) -> None:
    out = tmp_path / "run" / "dn.safetensors"
    # Runs are bounded by steps (the minutes are only a ceiling): the same work however busy
    # the machine is.
    common = dict(progress=False, val_fraction=0.1, val_minutes=0.03, checkpoint_minutes=0.05)
    first = train("denoise", [data_dir], out, minutes=5, max_steps=500, **common, **TINY)
    ckpt = out.with_suffix(".ckpt.pt")
    assert out.is_file() and ckpt.is_file() and first.steps == 500
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["weights_sha256"] == sha256_file(out) == first.weights_sha256
    assert card["task"] == "denoise" and card["hyperparameters"]["layers"] == 4
    assert card["steps"] == first.steps and card["val_psnr"] == first.val_score
    assert card["data_dirs"] == [str(data_dir.resolve())] and card["seed"] == 0
    assert card["descriptor"]["weights_sha256"] == first.weights_sha256
    assert safetensors_metadata(out)["daguerre"]["task"] == "denoise"
    assert first.val_score is not None and first.val_baseline is not None
    assert first.metric == "psnr" and first.val_score > first.val_baseline

    # The checkpoint holds only tensors and plain types.
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["step"] == first.steps

    resumed = train("denoise", [data_dir], out, minutes=5, max_steps=1500, **common, **TINY)
    assert resumed.steps == 1500
    assert resumed.history[: len(first.history)] == first.history
    done = train("denoise", [data_dir], out, minutes=5, max_steps=1500, **common, **TINY)
    assert done.steps == resumed.steps  # nothing left to do
    assert done.weights_sha256 == resumed.weights_sha256  # same weights, same bytes
    with pytest.raises(ValueError, match="resume=False"):
        train("denoise", [data_dir], out, minutes=0.4, **common, **{**TINY, "channels": 8})

    # The trained tiny denoiser beats its noisy input on an unseen synthetic image.
    model = load_user_model("denoise", str(out), resumed.weights_sha256)
    clean = _picture(64, 80, 1234).astype(np.float32) / 255
    noisy = clean + np.random.default_rng(5).normal(0, 25 / 255, clean.shape).astype(np.float32)
    restored = model.run(noisy, noise_sigma=25)
    assert _psnr(restored, clean) > _psnr(np.clip(noisy, 0, 1), clean) + 1.0
    blind = model.run(noisy)  # sigma estimated from the image
    assert _psnr(blind, clean) > _psnr(np.clip(noisy, 0, 1), clean)


def test_upscale_training_smoke_from_the_command_line(data_dir, tmp_path) -> None:
    from typer.testing import CliRunner

    from daguerre.cli import app

    out = tmp_path / "sr.safetensors"
    options = ["scale=4", "realistic=true", "layers=3", "channels=8", "patch=16"]
    options += ["batch_size=4", "threads=1"]
    args = ["train", "upscale", "--data", str(data_dir), "--out", str(out)]
    args += ["--minutes", "0.05", "--no-progress"]
    for option in options:
        args += ["--set", option]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["recipe"]["realistic"] is True and card["hyperparameters"]["scale"] == 4
    model = load_user_model("upscale", str(out), card["weights_sha256"], "cpu", scale=4)
    assert model.run(np.zeros((5, 7, 3), np.float32)).shape == (20, 28, 3)


def test_warm_start_copies_matching_tensors(data_dir, tmp_path) -> None:
    """An x4 run warm-started from x2 weights takes the body, not the x2-shaped tail."""
    small = {"layers": 3, "channels": 8, "batch_size": 4, "patch": 16, "threads": 1}
    x2 = train("upscale", [data_dir], tmp_path / "x2.safetensors", 0.02, progress=False, **small)
    x4 = train(
        "upscale",
        [data_dir],
        tmp_path / "x4.safetensors",
        0.0,
        progress=False,
        init_from=x2.weights,
        scale=4,
        **small,
    )
    card = json.loads(x4.card.read_text())
    info = card["init_from"]
    assert info["sha256"] == x2.weights_sha256
    # 2 body convs + their 2 PReLUs (weights and biases) match; the tail's shape differs.
    assert info["tensors_copied"] == info["tensors_total"] - 2
    with pytest.raises(ValueError, match="holds daguerre-srnet weights"):
        train(
            "denoise",
            [data_dir],
            tmp_path / "d.safetensors",
            0.0,
            progress=False,
            init_from=x2.weights,
            layers=4,
            channels=16,
            threads=1,
        )


@pytest.mark.parametrize("task", ["denoise", "upscale", "damage", "inpaint", "colorize"])
def test_a_data_workers_batches_match_the_training_process_batches(data_dir, task) -> None:
    """What a data worker draws (run here, in-process) has the form of the batches the
    training process makes itself, and depends on the step a run (re)started at."""
    from daguerre.models.training import _Data, _WorkerBatches, is_colour, list_images, make_batch

    r = Recipe(batch_size=2, patch=32, realistic=task == "upscale")
    data = _Data([p for p, _ in list_images([data_dir])], 64)
    if task == "colorize":  # as `train` does: a colorizer learns from colour photos only
        data.images = [img for img in data.images if is_colour(img)]
    here = make_batch(task, data, r, np.random.default_rng(0))
    started, restarted = (next(iter(_WorkerBatches(task, data, r, 0, s))) for s in (0, 100))
    assert [(t.shape, t.dtype) for t in started] == [(t.shape, t.dtype) for t in here]
    assert not torch.equal(started[0], restarted[0])  # a resumed run does not replay batches


def test_data_workers_give_the_same_batches_each_time(data_dir) -> None:
    from daguerre.models.training import BatchStream, _Data, list_images

    r = Recipe(batch_size=2, patch=32, data_workers=2)
    data = _Data([p for p, _ in list_images([data_dir])], 64)

    def first_three() -> list[tuple[torch.Tensor, ...]]:
        stream = BatchStream("damage", data, r, np.random.default_rng(0), 0, 0)
        try:
            return [next(stream) for _ in range(3)]
        finally:
            stream.close()

    a, b = first_three(), first_three()
    assert all(
        torch.equal(x, y) for ta, tb in zip(a, b, strict=True) for x, y in zip(ta, tb, strict=True)
    )
    assert not torch.equal(a[0][0], a[1][0])  # the two workers draw different patches


def test_training_with_data_workers_from_a_bare_checkout(data_dir, tmp_path) -> None:
    """The GPU path: `infra/train_uninstalled.py` (no install) with spawned data workers
    trains the very weights an installed run with as many workers does."""
    import subprocess
    import sys

    recipe = {**TINY, "max_steps": 20, "data_workers": 1}
    here = train(
        "denoise", [data_dir], tmp_path / "a" / "dn.safetensors", 5, progress=False, **recipe
    )
    script = Path(__file__).resolve().parents[1] / "infra" / "train_uninstalled.py"
    args = [sys.executable, str(script), "denoise", str(tmp_path / "b" / "dn.safetensors")]
    args += ["--data", str(data_dir), "--minutes", "5", "--no-progress"]
    for key, value in recipe.items():
        args += ["--set", f"{key}={value}"]
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["weights_sha256"] == here.weights_sha256
    assert json.loads(here.card.read_text())["recipe"]["data_workers"] == 1


def test_a_deeper_denoiser_warm_starts_exactly_from_a_shallower_one(data_dir, tmp_path) -> None:
    """`--init` with a shallower denoiser's weights and `layers` set deeper: the new net
    starts out computing exactly what the trained shallow one does."""
    from safetensors.torch import load_file

    from daguerre.models.arch import denoise as denoise_arch

    shallow = train(
        "denoise", [data_dir], tmp_path / "s.safetensors", 5, progress=False, max_steps=10, **TINY
    )
    deep = train(
        "denoise",
        [data_dir],
        tmp_path / "d.safetensors",
        0.0,
        progress=False,
        init_from=shallow.weights,
        **{**TINY, "layers": 8},
    )
    info = json.loads(deep.card.read_text())["init_from"]
    assert info["grown_from"]["layers"] == 4
    assert info["tensors_copied"] == info["tensors_total"]
    nets = [denoise_arch.load(load_file(str(r.weights))).eval() for r in (shallow, deep)]
    assert nets[1].layers == 8
    x, sigma = torch.rand(1, 3, 16, 20), torch.full((1,), 0.1)
    with torch.no_grad():
        assert torch.allclose(nets[0](x, sigma), nets[1](x, sigma), atol=1e-6)


def test_damage_training_smoke_and_use(data_dir, tmp_path) -> None:
    from daguerre.models.training import degrade_for_damage, f1_score

    rng = np.random.default_rng(1)
    img, mask = degrade_for_damage(np.full((64, 64, 3), 0.5, np.float32), rng, Recipe())
    assert img.shape == (64, 64, 3) and mask.shape == (64, 64) and mask.dtype == bool
    # a grey master: degraded and damaged as one band, shown to the detector on 3 channels
    colour = np.random.default_rng(2).uniform(0, 1, (64, 64, 3)).astype(np.float32)
    grey, _ = degrade_for_damage(colour, rng, Recipe(grey_fraction=1.0))
    assert grey.shape == (64, 64, 3) and np.array_equal(grey[..., 0], grey[..., 2])
    assert f1_score(np.ones(4, bool), np.ones(4, bool)) == 1.0
    assert f1_score(np.zeros(4, bool), np.zeros(4, bool)) == 1.0
    assert f1_score(np.array([1, 0], bool), np.array([0, 1], bool)) == 0.0

    recipe = dict(channels=8, batch_size=2, patch=32, val_patch=48, threads=1)
    res = train("damage", [data_dir], tmp_path / "dmg.safetensors", 0.02, progress=False, **recipe)
    card = json.loads(res.card.read_text())
    assert res.metric == "f1" and "val_f1" in card and 0.0 <= card["val_f1"] <= 1.0
    assert card["descriptor"]["out_channels"] == 1
    model = load_user_model("damage", str(res.weights), res.weights_sha256, "cpu")
    prob = model.run(np.random.default_rng(0).random((30, 41, 3), dtype=np.float32))
    assert prob.shape == (30, 41, 1) and prob.min() >= 0.0 and prob.max() <= 1.0
    # The decision threshold is calibrated on validation photos and travels with the weights.
    calibration = card["calibration"]
    assert 0.5 <= calibration["decision_threshold"] <= 0.9999
    assert calibration["versions"] == Recipe().calibration_versions == 4
    assert calibration["marked_at_threshold"] <= calibration["mark_budget"] + 1e-9
    assert model.decision_threshold == calibration["decision_threshold"]
    # Plain thresholding and hysteresis rules within the budget, compared on validation F1;
    # the best one ships (its grow threshold too, None for plain).
    rules = calibration["rules"]
    assert rules[0]["grow"] is None and all(r["marked"] <= 0.003 + 1e-9 for r in rules[1:])
    assert calibration["val_f1"] == max(r["val_f1"] for r in rules)
    assert model.grow_threshold == calibration["grow_threshold"]
    from daguerre.operators import LearnedDamage

    detector = LearnedDamage(model)
    assert detector.threshold == calibration["decision_threshold"]
    assert detector.grow_threshold == calibration["grow_threshold"]

    # Re-running the finished run with photos it never trained on re-calibrates over them too
    # and re-exports; training photos (and other tasks) are refused.
    extra = tmp_path / "calibration"
    extra.mkdir()
    for i in range(3):
        cv2.imwrite(str(extra / f"k{i}.png"), _picture(64, 72, 50 + i)[..., ::-1])
    again = train(
        "damage", [data_dir], res.weights, 0.02, progress=False, calibration_dirs=[extra], **recipe
    )
    recalibrated = json.loads(again.card.read_text())["calibration"]
    assert again.steps == res.steps
    assert recalibrated["images"] == calibration["images"] + 3
    assert recalibrated["extra_dirs"] == [str(extra.resolve())]
    with pytest.raises(ValueError, match="must not be training photos"):
        train("damage", [data_dir], res.weights, 0.02, calibration_dirs=[data_dir], **recipe)
    with pytest.raises(ValueError, match="damage models only"):
        train("denoise", [data_dir], tmp_path / "d.safetensors", 0.0, calibration_dirs=[extra])
    with pytest.raises(ValueError, match="multiple of 4"):
        train("damage", [data_dir], tmp_path / "x.safetensors", 0.0, progress=False, patch=30)

    # A checkpoint written before context_levels existed still resumes.
    state = torch.load(res.checkpoint, weights_only=True)
    del state["hyperparameters"]["context_levels"]
    torch.save(state, res.checkpoint)
    resumed = train("damage", [data_dir], res.weights, 0.02, progress=False, **recipe)
    assert resumed.steps == res.steps

    # A deeper detector warm-started from these weights: its context level starts at zero.
    deeper = train(
        "damage",
        [data_dir],
        tmp_path / "deeper.safetensors",
        0.02,
        progress=False,
        init_from=res.weights,
        **{**recipe, "context_levels": 1},
    )
    deep_card = json.loads(deeper.card.read_text())
    assert deep_card["hyperparameters"]["context_levels"] == 1
    assert deep_card["init_from"]["tensors_copied"] == len(load_file_keys(res.weights))
    deep = load_user_model("damage", str(deeper.weights), None, "cpu")
    assert deep.size_requirements.multiple_of == 8 and deep.receptive_overlap > 48
    with pytest.raises(ValueError, match="multiple of 8"):
        train("damage", [data_dir], tmp_path / "y.safetensors", 0.0, patch=36, context_levels=1)
    with pytest.raises(ValueError, match="damage detector"):
        train("denoise", [data_dir], tmp_path / "z.safetensors", 0.0, context_levels=1)


def load_file_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def test_inpaint_training_smoke_and_use(data_dir, tmp_path) -> None:
    from daguerre.models.training import degrade_for_inpaint

    clean = _picture(64, 64, 3).astype(np.float32) / 255
    damaged, mask, target = degrade_for_inpaint(clean, np.random.default_rng(2))
    assert damaged.shape == target.shape == (64, 64, 3) and mask.shape == (64, 64)
    # Outside the damage the target is the input (nothing after the damage changes pixels).
    assert np.abs(damaged - target)[~mask].max() < 0.04

    res = train(
        "inpaint",
        [data_dir],
        tmp_path / "inp.safetensors",
        0.02,
        progress=False,
        channels=8,
        batch_size=2,
        patch=32,
        val_patch=48,
        threads=1,
    )
    card = json.loads(res.card.read_text())
    assert res.metric == "psnr" and card["val_baseline_psnr"] is not None
    model = load_user_model("inpaint", str(res.weights), res.weights_sha256, "cpu")
    assert model.needs_mask
    img = np.random.default_rng(0).random((30, 41, 3), dtype=np.float32)
    hole = np.zeros((30, 41), bool)
    hole[10:15, 5:30] = True
    out = model.run(img, mask=hole)
    assert out.shape == img.shape
    assert np.array_equal(out[~hole], img[~hole])  # only masked pixels change


def test_colorize_training_smoke_and_use(data_dir, tmp_path) -> None:
    from daguerre.models.arch.colorize import ab_bin_centres, rgb_to_lab
    from daguerre.models.training import ab_prior, colour_patch, is_colour, rebalancing_weights

    img = _picture(96, 112, 5)
    assert is_colour(img) and not is_colour(np.repeat(img[..., :1], 3, axis=2))
    patch = colour_patch(img, Recipe(patch=32, zoom_max=2.0), np.random.default_rng(0))
    assert patch.shape == (32, 32, 3) and patch.dtype == np.float32
    bins = ab_bin_centres()
    prior = ab_prior([img], bins, np.random.default_rng(0), pixels=500)
    assert prior.shape == (bins.shape[0],) and abs(float(prior.sum()) - 1) < 1e-9
    weights = rebalancing_weights(prior, 0.5)
    assert abs(float((prior * weights.double()).sum()) - 1) < 1e-5  # mean weight 1
    assert weights[prior.argmax()] == weights.min()  # the commonest colour counts least

    res = train(
        "colorize",
        [data_dir],
        tmp_path / "col.safetensors",
        0.02,
        progress=False,
        channels=8,
        batch_size=2,
        patch=32,
        val_patch=48,
        threads=1,
    )
    card = json.loads(res.card.read_text())
    assert res.metric == "psnr" and card["val_baseline_psnr"] is not None
    assert card["colour"]["skipped_grey_images"] == 1  # sub/g.bmp
    assert len(card["colour"]["ab_prior"]) == card["colour"]["bins"] == bins.shape[0]
    assert card["descriptor"]["in_channels"] == card["descriptor"]["out_channels"] == 3
    model = load_user_model("colorize", str(res.weights), res.weights_sha256, "cpu")
    grey = np.random.default_rng(0).random((30, 41, 1), dtype=np.float32)
    out = model.run(grey)
    assert out.shape == (30, 41, 3)
    lab = rgb_to_lab(torch.from_numpy(out).permute(2, 0, 1)[None])[0, 0]
    lab_in = rgb_to_lab(torch.from_numpy(np.repeat(grey, 3, axis=2)).permute(2, 0, 1)[None])
    assert float((lab - lab_in[0, 0]).abs().max()) < 0.05


def test_training_needs_only_cv2_numpy_and_torch() -> None:
    """A bare GPU image (torch, OpenCV, numpy, safetensors) must run `daguerre train`'s code:
    importing it may not pull in the pipeline's other dependencies."""
    import subprocess
    import sys

    blocked = ["pyvips", "pydantic", "prefect", "sqlalchemy", "boto3", "spandrel", "tifffile"]
    blocked += ["pywt", "skimage"]  # the noise estimate computes its own wavelet band
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import daguerre.models.training\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_lowest_threshold_keeps_the_surest_regions_within_the_allowance() -> None:
    from daguerre.models.training import _lowest_threshold

    peaks = np.array([0.875, 0.75, 0.9375, 0.5])
    sizes = np.array([10, 100, 5, 1])
    # 15 pixels allowed: the two surest regions (5 + 10) fit, 0.75's must be left out
    assert _lowest_threshold(peaks, sizes, 15, floor=0.6) == 0.75
    assert _lowest_threshold(peaks, sizes, 4, floor=0.6) == 0.9375
    assert _lowest_threshold(peaks, sizes, 1000, floor=0.6) == 0.6
    assert _lowest_threshold(np.array([0.99995]), np.array([9]), 4, floor=0.6) == float("inf")


def test_damage_loss_with_hard_fraction_weighs_the_hardest_pixels() -> None:
    from daguerre.models.training import Recipe, _damage_loss, train

    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 0, 0] = 1.0
    logits = torch.full((1, 1, 4, 4), -6.0)  # confident "clean" everywhere: one miss
    plain = _damage_loss(Recipe(dice_weight=0.0), logits, target)
    hard = _damage_loss(Recipe(dice_weight=0.0, hard_fraction=1 / 16), logits, target)
    # The mean over all 16 pixels dilutes the missed one; the hardest 1/16 is that pixel alone.
    assert hard.item() > 10 * plain.item()
    assert hard.item() == pytest.approx(6.0, abs=0.01)
    with pytest.raises(ValueError, match="hard_fraction"):
        train("damage", [], Path("x.safetensors"), 0.0, hard_fraction=0.0)
