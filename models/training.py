"""Training Daguerre's own denoiser, upscaler, damage detector, inpainter and colorizer from
folders of clean images.

`train(task, data_dirs, out, minutes)` runs for a wall-clock budget, checkpoints every few
minutes to `out.with_suffix(".ckpt.pt")` (plain tensors and types only, reloaded with
`weights_only=True`), resumes from it, and finally writes the weights as safetensors (`out`)
and a model card (`out.with_suffix(".json")`). Test sets are refused as training data.

Run it from a shell (the lead launches the long runs):
    python -m daguerre.models.training denoise OUT.safetensors --minutes 120 \
        --data /work/shared/datasets/train/BSDS500-train --data /work/shared/datasets/train/Train400
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from daguerre.imaging import degrade
from daguerre.imaging.masks import probability_regions, threshold_damage

from .arch import Architecture, get_architecture
from .arch import colorize as colorize_arch
from .arch import damage as damage_arch
from .arch import denoise as denoise_arch
from .arch import inpaint as inpaint_arch
from .arch import upscale as upscale_arch
from .inference import pick_device
from .loading import safetensors_metadata, sha256_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# Benchmarks live here; training on them would make every reported number meaningless.
FORBIDDEN_DATA_ROOTS: tuple[Path, ...] = (Path("/work/shared/datasets/test"),)
TRAINABLE_TASKS = ("denoise", "upscale", "damage", "inpaint", "colorize")
ARCH_OF_TASK = {
    "denoise": denoise_arch.ARCH_NAME,
    "upscale": upscale_arch.ARCH_NAME,
    "damage": damage_arch.ARCH_NAME,
    "inpaint": inpaint_arch.ARCH_NAME,
    "colorize": colorize_arch.ARCH_NAME,
}
# U-Nets: their depth is fixed by their levels, so `layers` does not apply to them.
UNET_TASKS = ("damage", "inpaint", "colorize")
CARD_VERSION = 1
# Issue 7's limit for a damage detector: at most 0.3% of an undamaged photo's pixels marked.
# Inpainting smears every marked pixel, so the decision threshold is calibrated to it.
DAMAGE_MARK_BUDGET = 0.003
# Hysteresis levels tried in calibration: a region above one of these is damage as a whole when
# its peak clears the decision threshold (see `threshold_damage`).
GROW_CANDIDATES = (0.5, 0.6, 0.7, 0.8, 0.9)
# Thresholds are multiples of 1e-4 up to this: a detector's confident false marks (fine bright
# streaks) sit above 0.999, so a coarser grid or a lower cap would leave no rule within budget.
MAX_THRESHOLD = 0.9999


@dataclass
class Recipe:
    """Training knobs; any of them can be passed to `train(**recipe)`.

    Sizes are in pixels; sigmas in 8-bit levels. `patch` is the clean patch for denoising and
    the low-resolution patch for upscaling. `layers`/`channels`/`in_channels` (and `scale`
    for upscaling) are the architecture's hyperparameters.
    """

    batch_size: int = 16
    patch: int = 64
    lr: float = 5e-4
    lr_min: float = 1e-6
    schedule: str = "cosine"  # "cosine" or "step" (halve at 50, 75, 90 % of the budget)
    warmup_steps: int = 100
    loss: str = "l1"  # "l1", "l2" or "charbonnier"
    # denoise
    sigma_max: float = 55.0
    # denoise: grey patches (identical noise on identical channels: one model serves grey);
    # damage: patches degraded and damaged as one band (see `degrade_for_damage`)
    grey_fraction: float = 0.25
    poisson_fraction: float = 0.10
    grain_fraction: float = 0.10
    jpeg_fraction: float = 0.10
    clip_fraction: float = 0.5  # clip + quantise the noisy input to 8 bits, like real files
    # damage: share of patches that go through the chain without any damage (to learn to leave
    # real fine structure alone), and the weight of the soft-dice term beside BCE
    clean_fraction: float = 0.25
    dice_weight: float = 0.5
    pos_weight: float = 1.0  # BCE weight of damaged pixels (they are rare)
    # BCE averaged over this share of each batch's pixels, the hardest (online hard example
    # mining); 1 averages over all. The decision threshold sits where the most confident false
    # marks on undamaged photos are, so those few pixels, and the damage the model is least
    # sure of, are what the loss should weigh, not the easy background.
    hard_fraction: float = 1.0
    # A pixel is a damage target when the damage changed it by more than this (the degradation
    # module's mask threshold, VISIBLE_DELTA, is 0.03: faint edges that grain and JPEG bury).
    damage_min_delta: float = 0.03
    # Damage is drawn on a clean crop this many times the patch side and the patch is cut from
    # it, so scratch lengths, stain sizes and densities match those of whole photos; drawn on
    # the patch itself, one stain could cover most of it.
    damage_context: float = 2.0
    # upscale
    scale: int = 2
    realistic: bool = False  # False: bicubic-only protocol; True: blur + noise + JPEG too
    # colorize (Zhang et al. 2016): class rebalancing mixes the smoothed chroma prior with a
    # uniform one (lambda); ab_sigma smooths the prior and soft-encodes targets (a*b* units)
    rebalance: float = 0.5
    ab_sigma: float = 5.0
    zoom_max: float = 2.0  # cut 1x..zoom_max x `patch` and shrink to `patch`: more context
    fade_fraction: float = 0.3  # grey input with a faded tone curve (the target keeps its ab)
    min_chroma: float = 2.0  # mean a*b* chroma below this: a grey patch, drawn again
    # the loss sees every loss_stride-th pixel each way (random phase per batch): the logits
    # and softmax over Q bins cost as much as the rest of the net; 2 doubles the patches/s
    loss_stride: int = 2
    # architecture
    layers: int | None = None
    channels: int | None = None
    in_channels: int = 3
    context_levels: int | None = None  # damage: coarse levels below the U-Net's three
    # bookkeeping
    checkpoint_minutes: float = 5.0
    val_minutes: float = 1.0
    # Stop after this many steps in total even if time remains (the learning-rate schedule then
    # follows steps): reproducible short runs, whatever the machine's load.
    max_steps: int | None = None
    val_patches: int = 32
    val_patch: int = 96
    # damage: aged draws of each undamaged photo in calibration, besides the photo as it is.
    # Fine real structure (stamens, wires) is marked or not depending on the draw: more draws
    # steady the estimate of what share a threshold marks (with 2, a rule calibrated to 0.30%
    # of T91 marked 0.53% of it under other draws).
    calibration_versions: int = 4
    # None: os.cpu_count(). On a shared, busy machine 1 can be much faster than 2 (OpenMP
    # threads spin-waiting on each other): measured 30x on a tiny net under load.
    threads: int | None = None
    # Processes that make the batches (`BatchStream`); 0: the training process itself. A GPU
    # needs many (one core draws about 100 damage or 2,000 denoising patches a second); on
    # a CPU they only take cores from the model.
    data_workers: int = 0

    def hyperparameters(self, task: str) -> dict[str, int]:
        if task == "denoise":
            hp = dict(denoise_arch.DEFAULT_HYPERPARAMETERS)
        elif task == "damage":
            hp = dict(damage_arch.DEFAULT_HYPERPARAMETERS)
        elif task == "inpaint":
            hp = dict(inpaint_arch.DEFAULT_HYPERPARAMETERS)
        elif task == "colorize":  # lightness in, chroma out: no channel count to choose
            hp = dict(colorize_arch.DEFAULT_HYPERPARAMETERS)
            if self.channels is not None:
                hp["channels"] = self.channels
            return hp
        else:
            hp = dict(upscale_arch.DEFAULT_HYPERPARAMETERS)
            hp["scale"] = self.scale
        hp["in_channels"] = self.in_channels
        if self.layers is not None and task not in UNET_TASKS:
            hp["layers"] = self.layers
        if self.context_levels is not None:
            if task != "damage":
                raise ValueError("context_levels is a damage detector's hyperparameter")
            hp["context_levels"] = self.context_levels
        if self.channels is not None:
            hp["channels"] = self.channels
        return hp


def patch_multiple(task: str, hp: Mapping[str, Any]) -> int:
    """What training and validation crops' sides must be a multiple of."""
    if task == "upscale":
        return int(hp.get("scale", 1))
    return get_architecture(ARCH_OF_TASK[task]).multiple_of(hp)


@dataclass
class TrainResult:
    weights: Path
    card: Path
    checkpoint: Path
    steps: int
    minutes: float
    val_score: float | None  # validation PSNR (dB), or pixel F1 for damage: see `metric`
    val_baseline: float | None
    metric: str
    patches_per_s: float
    weights_sha256: str
    history: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------- data


def check_data_dirs(data_dirs: Sequence[Path]) -> list[Path]:
    """Resolved data dirs; raises ValueError for a missing dir or one under a test set."""
    out = []
    for d in data_dirs:
        r = Path(d).expanduser().resolve()
        parts = r.parts
        under_test = any(r.is_relative_to(root.resolve()) for root in FORBIDDEN_DATA_ROOTS) or any(
            parts[i] == "datasets" and parts[i + 1] == "test" for i in range(len(parts) - 1)
        )
        if under_test:
            raise ValueError(f"refusing to train on {d}: it is a test set (datasets/test)")
        if not r.is_dir():
            raise ValueError(f"data dir {d} does not exist")
        out.append(r)
    if not out:
        raise ValueError("no data dirs given")
    return out


def list_images(data_dirs: Sequence[Path]) -> list[tuple[Path, str]]:
    """(file, stable name) of every PNG/JPEG/BMP under the dirs, sorted."""
    files = []
    for d in data_dirs:
        for p in sorted(d.rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                files.append((p, f"{d.name}/{p.relative_to(d).as_posix()}"))
    return files


def split_files(
    files: Sequence[tuple[Path, str]], val_fraction: float
) -> tuple[list[Path], list[Path]]:
    """Deterministic train/val split by file: a hash of each file's name decides."""

    def u(name: str) -> float:
        return int(hashlib.sha256(name.encode()).hexdigest()[:12], 16) / float(1 << 48)

    ranked = sorted(files, key=lambda f: u(f[1]))
    n_val = round(len(files) * val_fraction) if val_fraction > 0 else 0
    if val_fraction > 0 and len(files) >= 2:
        n_val = min(max(n_val, 1), len(files) - 1)
    val = sorted(p for p, _ in ranked[:n_val])
    train = sorted(p for p, _ in ranked[n_val:])
    return train, val


def read_image(path: Path) -> np.ndarray:
    """(H, W, C) uint8 or uint16, C in {1, 3} RGB; alpha dropped."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot decode {path}")
    if img.ndim == 2:
        return img[..., None]
    if img.shape[2] == 4:
        img = img[..., :3]
    if img.shape[2] == 3:
        img = img[..., ::-1]
    return np.ascontiguousarray(img)


def _to_float(img: np.ndarray) -> np.ndarray:
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    return img.astype(np.float32) / scale


def _grey(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W, 1) luma (Rec. 601)."""
    return (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]


def _augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    k = int(rng.integers(4))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return np.rot90(img, k)


def _crop(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    return img[y : y + size, x : x + size]


# ----------------------------------------------------------------------------- degradations
# Built on daguerre.imaging.degrade (seeded through the Generator passed in). Sigmas in levels.


def _quantise(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0, 1) * 255) / np.float32(255)


def degrade_for_denoise(
    clean: np.ndarray, rng: np.random.Generator, r: Recipe
) -> tuple[np.ndarray, np.ndarray, float]:
    """(clean, noisy, sigma in levels) for one (P, P, 3) clean patch; both out (P, P, 3).

    Mostly Gaussian with sigma ~ U(0, sigma_max), unclipped; some Poisson, film grain or JPEG
    mixed in, whose sigma is the measured standard deviation of what they changed. With
    probability `grey_fraction` the patch becomes grey with the same noise on its 3 channels.
    Noisy inputs are clipped and quantised to 8 bits with probability `clip_fraction`.
    """
    # A grey net (in_channels 1) trains on grey patches only: averaging independent RGB noise
    # would shrink its sigma by sqrt(3).
    same = r.in_channels == 1 or rng.random() < r.grey_fraction
    base = _grey(clean) if same else clean  # grey: degrade one channel, then replicate
    u = rng.random()
    if u < r.poisson_fraction:
        peak = float(np.exp(rng.uniform(np.log(20.0), np.log(1000.0))))  # photons at white
        noisy, sigma = degrade.poisson_noise(base, peak, rng), None
    elif u < r.poisson_fraction + r.grain_fraction:
        strength = rng.uniform(5.0, 35.0) / 255.0
        noisy = degrade.film_grain(base, strength, rng.uniform(0.0, 1.5), rng)
        sigma = None
    else:
        sigma = float(rng.uniform(0.0, r.sigma_max))
        noisy = degrade.gaussian_noise(base, sigma, rng, clip=False)
    if rng.random() < r.jpeg_fraction:
        noisy, sigma = degrade.jpeg_artifacts(noisy, int(rng.integers(30, 96))), None
    elif rng.random() < r.clip_fraction:
        noisy = _quantise(noisy)
    if sigma is None:
        sigma = float((noisy - base).std() * 255.0)
    if same:
        base, noisy = np.repeat(base, 3, axis=2), np.repeat(noisy, 3, axis=2)
    return base, noisy.astype(np.float32), sigma


def degrade_for_upscale(hr: np.ndarray, scale: int, rng: np.random.Generator) -> np.ndarray:
    """Realistic LR of one (P*s, P*s, 3) HR patch: blur, random resize kernel, noise, JPEG."""
    img = hr
    if rng.random() < 0.7:
        img = degrade.gaussian_blur(img, rng.uniform(0.2, 0.6 * scale))
    method = ("bicubic", "bilinear", "area")[int(rng.integers(3))]
    img = degrade.downscale(img, scale, method)
    if rng.random() < 0.6:
        sigma = rng.uniform(1.0, 15.0)
        if rng.random() < 0.3:  # luminance-only noise
            noise = degrade.gaussian_noise(np.zeros_like(img[..., :1]), sigma, rng, clip=False)
            img = img + noise
        else:
            img = degrade.gaussian_noise(img, sigma, rng, clip=False)
    if rng.random() < 0.5:
        img = degrade.jpeg_artifacts(np.clip(img, 0, 1), int(rng.integers(40, 96)))
    return _quantise(img)


def degrade_for_damage(
    clean: np.ndarray, rng: np.random.Generator, r: Recipe, patch: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(damaged image (P, P, 3) float32, damage mask (P, P) bool) for one clean crop, cut to a
    random `patch` x `patch` window after the damage is drawn (None: the whole crop).

    The old-photo chain (tone, optics, noise, JPEG) always runs, so fading, grain and blur are
    never damage; `clean_fraction` of the patches get no damage at all. `grey_fraction` of
    them go through it as one band (a grey master: its damage is grey too, with no colour cue)
    and come out with that band on all 3 channels, as the detector sees a grey scan.
    """
    undamaged = rng.random() < r.clean_fraction
    cfg = degrade.undamaged_config() if undamaged else degrade.damage_training_config()
    if clean.shape[2] == 3 and rng.random() < r.grey_fraction:
        clean = degrade.to_monochrome(clean)[:, :, :1]
    out = degrade.degrade(clean, rng, cfg)
    mask = out.damage_mask
    if out.damage_delta is not None and r.damage_min_delta > degrade.VISIBLE_DELTA:
        mask = mask & (out.damage_delta > r.damage_min_delta)
    image = _quantise(out.image)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if patch is not None and (clean.shape[0] > patch or clean.shape[1] > patch):
        y = int(rng.integers(clean.shape[0] - patch + 1))
        x = int(rng.integers(clean.shape[1] - patch + 1))
        image, mask = image[y : y + patch, x : x + patch], mask[y : y + patch, x : x + patch]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def degrade_for_inpaint(
    clean: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(damaged (P, P, 3), mask (P, P) bool, target (P, P, 3)) for one clean patch: the target
    is the aged image before the damage (no noise or compression follows the damage here)."""
    out = degrade.degrade(clean, rng, degrade.inpainting_training_config())
    assert out.before_damage is not None
    return _quantise(out.image), out.damage_mask, _quantise(out.before_damage)


# ----------------------------------------------------------------------------- colorization


def is_colour(img: np.ndarray, levels: float = 2.0) -> bool:
    """Whether an (H, W, C) uint8/uint16 image has colour: channels differ by more than `levels`
    (8-bit) on average. Grey images (and grey scans saved as RGB) teach a colorizer nothing."""
    if img.shape[2] == 1:
        return False
    f = _to_float(img[:: max(1, img.shape[0] // 128), :: max(1, img.shape[1] // 128)])
    return float((f.max(axis=2) - f.min(axis=2)).mean()) * 255.0 > levels


def _mean_chroma(rgb: np.ndarray) -> float:
    lab = cv2.cvtColor(np.ascontiguousarray(rgb, np.float32), cv2.COLOR_RGB2Lab)
    return float(np.hypot(lab[..., 1], lab[..., 2]).mean())


def colour_patch(img: np.ndarray, r: Recipe, rng: np.random.Generator) -> np.ndarray:
    """One (P, P, 3) float32 colour patch of an (H, W, 3) image, P = `r.patch`.

    Cut at 1x..`zoom_max`x P (log-uniform, at most the image's short side) and shrunk to P
    (area), then flipped left-right half the time. No rotations: "sky is up" is a colour cue.
    """
    h, w = img.shape[:2]
    zoom = math.exp(rng.uniform(0.0, math.log(max(r.zoom_max, 1.0))))
    side = max(r.patch, min(h, w, round(r.patch * zoom)))
    crop = _to_float(_crop(img, side, rng))
    if side != r.patch:
        crop = cv2.resize(crop, (r.patch, r.patch), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop, dtype=np.float32)


def fade_grey(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A faded print's tone curve on a grey (H, W, 1) image: lifted blacks, dulled whites and a
    gamma change, quantised to 8 bits."""
    lo, hi = rng.uniform(0.0, 0.2), rng.uniform(0.8, 1.0)
    gamma = math.exp(rng.uniform(-0.35, 0.35))
    return _quantise(lo + (hi - lo) * np.clip(grey, 0, 1) ** gamma)


def ab_prior(
    images: Sequence[np.ndarray],
    centres: Tensor,
    rng: np.random.Generator,
    pixels: int = 4096,
    sigma: float = 5.0,
) -> Tensor:
    """(Q,) float64 empirical distribution of the training images' a*b* over the bins `centres`
    (Q, 2): `pixels` random pixels per image, each counted in its nearest bin, then smoothed
    with a Gaussian of `sigma` (a*b* units) over the bin centres and normalised to sum 1."""
    q = centres.shape[0]
    counts = torch.zeros(q, dtype=torch.float64)
    for img in images:
        flat = img.reshape(-1, img.shape[2])
        picked = _to_float(flat[rng.integers(0, flat.shape[0], min(pixels, flat.shape[0]))])
        if picked.shape[1] == 1:
            picked = np.repeat(picked, 3, axis=1)
        rgb = torch.from_numpy(np.ascontiguousarray(picked.T)).view(1, 3, -1, 1)
        ab = colorize_arch.rgb_to_lab(rgb)[0, 1:, :, 0].T.contiguous()
        _, nearest = colorize_arch.nearest_bins(ab, centres)
        counts += torch.bincount(nearest[:, 0], minlength=q).double()
    p = counts / counts.sum().clamp_min(1.0)
    c = centres.double()
    kernel = torch.exp(-torch.cdist(c, c).square() / (2.0 * sigma * sigma))
    smooth = kernel @ p
    return smooth / smooth.sum().clamp_min(1e-12)


def rebalancing_weights(prior: Tensor, lam: float) -> Tensor:
    """(Q,) float32 class weights ~ 1 / ((1 - lam) p + lam / Q), scaled so that their mean under
    the prior is 1 (Zhang et al.): rare, saturated colours count as much as the common browns."""
    if not 0.0 < lam <= 1.0:
        raise ValueError(f"rebalance must be in (0, 1], got {lam}")
    p = prior.double()
    w = 1.0 / ((1.0 - lam) * p + lam / p.numel())
    return (w / (p * w).sum()).float()


# ----------------------------------------------------------------------------- batches


class _Data:
    """Images in memory (uint8/uint16) and the batch makers of both tasks."""

    def __init__(self, files: Sequence[Path], min_side: int) -> None:
        self.images: list[np.ndarray] = []
        self.skipped: list[str] = []
        # colorize: the rebalanced loss (its class weights come from the training images)
        self.chroma_loss: ChromaLoss | None = None
        for p in files:
            img = read_image(p)
            if min(img.shape[:2]) < min_side:
                self.skipped.append(p.name)
                continue
            self.images.append(img)

    def patch(self, size: int, rng: np.random.Generator, augment: bool = True) -> np.ndarray:
        img = self.images[int(rng.integers(len(self.images)))]
        crop = _to_float(_crop(img, size, rng))
        if augment:
            crop = _augment(crop, rng)
        if crop.shape[2] == 1:
            crop = np.repeat(crop, 3, axis=2)  # grey images train as 3 identical channels
        return np.ascontiguousarray(crop)


def _nchw(batch: Sequence[np.ndarray], device: torch.device) -> Tensor:
    t = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
    return t.to(device).contiguous(memory_format=torch.channels_last)


def _bicubic_down(hr: Tensor, scale: int) -> Tensor:
    """MATLAB-like antialiased bicubic (torch matches PIL's to ~0.15 levels), quantised."""
    h, w = hr.shape[-2:]
    lr = F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", antialias=True)
    return (lr.clamp(0, 1) * 255).round() / 255


def _to_channels(t: Tensor, in_channels: int) -> Tensor:
    return t if in_channels == 3 else t.mean(dim=1, keepdim=True)


def _stacked(items: Sequence[np.ndarray]) -> Tensor:
    """(N, C, H, W) float32 CPU tensor of (H, W, C) arrays, channels_last in memory (a view)."""
    return torch.from_numpy(np.stack(items).astype(np.float32, copy=False)).permute(0, 3, 1, 2)


def _denoise_arrays(data: _Data, r: Recipe, rng: np.random.Generator) -> tuple[Tensor, ...]:
    cleans, noisys, sigmas = [], [], []
    for _ in range(r.batch_size):
        c, n, s = degrade_for_denoise(data.patch(r.patch, rng), rng, r)
        cleans.append(c)
        noisys.append(n)
        sigmas.append(s)
    sigma = torch.tensor(sigmas, dtype=torch.float32) / 255.0
    return _stacked(noisys), _stacked(cleans), sigma


def _upscale_arrays(data: _Data, r: Recipe, rng: np.random.Generator) -> tuple[Tensor, ...]:
    """(hr,) for the bicubic protocol (its LR is made on the device), else (lr, hr)."""
    hrs = [data.patch(r.patch * r.scale, rng) for _ in range(r.batch_size)]
    if not r.realistic:
        return (_stacked(hrs),)
    return _stacked([degrade_for_upscale(h, r.scale, rng) for h in hrs]), _stacked(hrs)


def _damage_canvas(r: Recipe) -> int:
    """Side of the clean crop the damage is drawn on (see `Recipe.damage_context`)."""
    return round(r.patch * max(1.0, r.damage_context))


def _damage_arrays(data: _Data, r: Recipe, rng: np.random.Generator) -> tuple[Tensor, ...]:
    images, masks = [], []
    for _ in range(r.batch_size):
        canvas = data.patch(_damage_canvas(r), rng)
        img, mask = degrade_for_damage(canvas, rng, r, r.patch)
        images.append(img)
        masks.append(mask[:, :, None])
    return _stacked(images), _stacked(masks)


def _inpaint_arrays(data: _Data, r: Recipe, rng: np.random.Generator) -> tuple[Tensor, ...]:
    damaged, masks, targets = [], [], []
    for _ in range(r.batch_size):
        d, m, t = degrade_for_inpaint(data.patch(r.patch, rng), rng)
        damaged.append(d)
        masks.append(m[:, :, None])
        targets.append(t)
    return _stacked(damaged), _stacked(masks), _stacked(targets)


def _colorize_arrays(data: _Data, r: Recipe, rng: np.random.Generator) -> tuple[Tensor, ...]:
    """(colour patches, their BT.601 grey, maybe faded, on 3 channels), both (N, 3, P, P)."""
    colours, greys = [], []
    for _ in range(r.batch_size):
        for _attempt in range(20):  # nearly grey patches teach nothing; draw again
            img = data.images[int(rng.integers(len(data.images)))]
            patch = colour_patch(img, r, rng)
            if _mean_chroma(patch) >= r.min_chroma:
                break
        grey = _quantise(_grey(patch))
        if rng.random() < r.fade_fraction:
            grey = fade_grey(grey, rng)
        colours.append(patch)
        greys.append(np.repeat(grey, 3, axis=2))
    return _stacked(colours), _stacked(greys)


_BATCH_MAKERS = {
    "denoise": _denoise_arrays,
    "upscale": _upscale_arrays,
    "damage": _damage_arrays,
    "inpaint": _inpaint_arrays,
    "colorize": _colorize_arrays,
}


def make_batch(task: str, data: _Data, r: Recipe, rng: np.random.Generator) -> tuple[Tensor, ...]:
    """One training batch of `task` as CPU tensors, images (N, C, P, P) float32 in [0, 1].

    The CPU-bound part of a step (cropping, degrading, drawing damage), free of the model and
    the device, so that data workers can run it (see `BatchStream`)."""
    return _BATCH_MAKERS[task](data, r, rng)


def _masked_l1(out: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error over the masked pixels only (the rest is copied from the input)."""
    weight = mask.expand_as(out)
    return ((out - target).abs() * weight).sum() / (weight.sum() + 1.0)


def _masked_psnr(out: Tensor, target: Tensor, mask: Tensor) -> float:
    weight = mask.expand_as(out)
    mse = float((((out - target) ** 2) * weight).sum() / weight.sum().clamp(min=1.0))
    return 99.0 if mse <= 1e-12 else 10 * math.log10(1.0 / mse)


def _batch_loss(
    task: str,
    model: nn.Module,
    batch: Sequence[Tensor],
    r: Recipe,
    rng: np.random.Generator,
    chroma_loss: ChromaLoss | None,
    device: torch.device,
) -> Tensor:
    """A batch of `make_batch` through the model, to its loss."""
    t = [
        b.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if b.dim() == 4
        else b.to(device, non_blocking=True)
        for b in batch
    ]
    c = r.in_channels
    if task == "denoise":
        noisy, clean, sigma = t
        return _loss(r, model(_to_channels(noisy, c), sigma), _to_channels(clean, c))
    if task == "damage":
        x, target = t
        return _damage_loss(r, model(_to_channels(x, c)), target)
    if task == "inpaint":
        x, mask, target = t
        return _masked_l1(model(_to_channels(x, c), mask), _to_channels(target, c), mask)
    if task == "colorize":
        colours, greys = t
        ab = colorize_arch.rgb_to_lab(colours)[:, 1:]
        lightness = colorize_arch.rgb_to_lab(greys)[:, :1] / 100.0
        lightness = lightness.contiguous(memory_format=torch.channels_last)
        assert chroma_loss is not None
        s = r.loss_stride
        oy, ox = (int(v) for v in rng.integers(s, size=2))
        logits = model.tail(model.features(lightness)[..., oy::s, ox::s])
        return chroma_loss(logits, ab[..., oy::s, ox::s])
    hr = t[-1]
    lr = t[0] if r.realistic else _bicubic_down(hr, r.scale)
    return _loss(r, model(_to_channels(lr, c)), _to_channels(hr, c))


class _WorkerBatches(torch.utils.data.IterableDataset):
    """Endless `make_batch` batches; each data worker draws from its own generator, seeded
    from the run's seed, the step this process started at and the worker's number."""

    def __init__(self, task: str, data: _Data, r: Recipe, seed: int, first_step: int) -> None:
        super().__init__()
        self.task, self.data, self.r = task, data, r
        self.seed, self.first_step = seed, first_step

    def __iter__(self):  # noqa: ANN204 - an endless generator of tuples of tensors
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        if info is not None:
            cv2.setNumThreads(1)  # one core per worker: the workers are the parallelism
        rng = np.random.default_rng([self.seed, self.first_step, worker, 0xDA7A])
        while True:
            yield make_batch(self.task, self.data, self.r, rng)


def _leave_without_teardown(_worker: int) -> None:
    """A data worker's `worker_init_fn`: the worker ends with `os._exit`. A spawned process
    otherwise runs the C++ static destructors at exit, and one aborted there ("terminate
    called without an active exception") while the trainer stopped its workers."""
    import atexit

    atexit.register(os._exit, 0)  # registered last, so it runs first


class BatchStream:
    """Training batches, made in this process or by `data_workers` processes.

    With no workers the batches come from the run's own generator `rng`, whose state the
    checkpoint keeps: a resumed run draws exactly the batches an unbroken one would. With
    workers (for a GPU, which one process cannot feed: drawing damage costs about 10 ms a
    patch on one core) each worker has its own generator (`_WorkerBatches`) and the batches
    are taken from the workers in turn, so a run is reproducible for a given worker count and
    resume point, though not the same batches as without workers.
    """

    def __init__(
        self,
        task: str,
        data: _Data,
        r: Recipe,
        rng: np.random.Generator,
        seed: int,
        first_step: int,
        pin_memory: bool = False,
    ) -> None:
        self.task, self.data, self.r, self.rng = task, data, r, rng
        self._loader_iter = None
        if r.data_workers > 0:
            loader = torch.utils.data.DataLoader(
                _WorkerBatches(task, data, r, seed, first_step),
                batch_size=None,
                num_workers=r.data_workers,
                prefetch_factor=4,
                pin_memory=pin_memory,
                # Not fork: a child forked while OpenCV's thread pool is busy can hang in its
                # first OpenCV call (seen here), and CUDA does not survive a fork either.
                # Each worker gets the images pickled (about 200 MB for BSDS500).
                multiprocessing_context="spawn",
                worker_init_fn=_leave_without_teardown,
            )
            self._loader_iter = iter(loader)

    def __next__(self) -> tuple[Tensor, ...]:
        if self._loader_iter is None:
            return make_batch(self.task, self.data, self.r, self.rng)
        return next(self._loader_iter)

    def close(self) -> None:
        """Stops the workers (they would otherwise live until the stream is collected)."""
        it, self._loader_iter = self._loader_iter, None
        if it is not None:
            # A worker that dies while being stopped owes nothing: its batches are unwanted.
            with contextlib.suppress(RuntimeError):
                it._shutdown_workers()  # what DataLoader's iterator runs when it is collected


class ChromaLoss:
    """Rebalanced cross-entropy of chroma-bin logits (N, Q, H, W) against a*b* (N, 2, H, W)
    soft-encoded over their 5 nearest bins (Gaussian, `sigma`); each pixel weighted by its
    nearest bin's class weight (`rebalancing_weights`). Bins `centres` (Q, 2)."""

    def __init__(self, centres: Tensor, class_weights: Tensor, sigma: float) -> None:
        self.encode = colorize_arch.SoftEncoder(centres, 5, sigma)
        self.class_weights = class_weights.to(centres.device, torch.float32)

    def __call__(self, logits: Tensor, ab: Tensor) -> Tensor:
        idx, soft = self.encode(ab)
        pixel_weight = self.class_weights[idx[:, 0]]
        logp = F.log_softmax(logits.float(), dim=1)
        ce = -(soft * logp.gather(1, idx)).sum(dim=1)
        return (pixel_weight * ce).mean()


def _damage_loss(r: Recipe, logits: Tensor, target: Tensor) -> Tensor:
    """BCE plus soft dice: BCE alone drifts to "no damage" because damage is rare."""
    weight = torch.tensor(r.pos_weight, device=logits.device)
    if r.hard_fraction >= 1.0:
        bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
    else:
        per_pixel = F.binary_cross_entropy_with_logits(
            logits, target, pos_weight=weight, reduction="none"
        ).flatten()
        keep = max(1, round(r.hard_fraction * per_pixel.numel()))
        bce = per_pixel.topk(keep, sorted=False).values.mean()
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return bce + r.dice_weight * dice


def f1_score(pred: np.ndarray | Tensor, truth: np.ndarray | Tensor) -> float:
    """Pixel F1 of boolean masks (1.0 when both are empty)."""
    tp = float((pred & truth).sum())
    fp = float((pred & ~truth).sum())
    fn = float((~pred & truth).sum())
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def _psnr(a: Tensor, b: Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 99.0 if mse <= 1e-12 else 10 * math.log10(1.0 / mse)


@torch.inference_mode()
def undamaged_probabilities(
    model: nn.Module, files: Sequence[Path], device: torch.device, versions: int = 2
) -> list[list[np.ndarray]]:
    """Per photo, the (H, W) damage probability maps the model gives it undamaged: as it is,
    then in `versions` aged by the old-photo chain (fading, blur, grain, noise, JPEG). Every
    third photo is made grey: grey masters must be left alone too."""
    was_training = model.training
    model.eval()
    multiple = damage_arch.multiple_of(model.hyperparameters)
    per_photo = []
    for index, path in enumerate(files):
        img = _to_float(read_image(path))
        img = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img
        if index % 3 == 2:
            img = degrade.to_monochrome(img)
        h, w = img.shape[0] - img.shape[0] % multiple, img.shape[1] - img.shape[1] % multiple
        maps = []
        for version in range(versions + 1):
            rng = np.random.default_rng([index, version, 11])
            undamaged = img[:h, :w]
            if version:
                undamaged = degrade.degrade(undamaged, rng, degrade.undamaged_config()).image
            x = _nchw([_quantise(undamaged)], device)
            maps.append(torch.sigmoid(model(x))[0, 0].float().cpu().numpy())
        per_photo.append(maps)
    model.train(was_training)
    return per_photo


def _grid_up(value: float) -> float:
    """`value` rounded up to the 1e-4 grid thresholds live on."""
    return math.ceil(round(value * 10_000, 6)) / 10_000


def plain_threshold(probabilities: np.ndarray, budget: float = DAMAGE_MARK_BUDGET) -> float:
    """The smallest threshold on the grid, never below 0.5 nor above `MAX_THRESHOLD`, that
    marks at most `budget` of `probabilities` (pixels of undamaged photos)."""
    quantile = float(np.quantile(probabilities, 1.0 - budget))
    return min(MAX_THRESHOLD, max(0.5, _grid_up(quantile)))


def _lowest_threshold(peaks: np.ndarray, sizes: np.ndarray, allowed: float, floor: float) -> float:
    """The smallest threshold on the grid, at least `floor`, such that the regions whose peak
    is above it hold at most `allowed` pixels (inf when even `MAX_THRESHOLD` marks more)."""
    order = np.argsort(-peaks, kind="stable")
    fits = int(np.searchsorted(np.cumsum(sizes[order]), allowed, side="right"))
    first_left_out = float(peaks[order[fits]]) if fits < len(order) else 0.0
    threshold = max(floor, _grid_up(first_left_out))
    return threshold if threshold <= MAX_THRESHOLD else math.inf


def calibrate_damage_threshold(
    model: nn.Module,
    files: Sequence[Path],
    device: torch.device,
    budget: float = DAMAGE_MARK_BUDGET,
    versions: int = 2,
    validation: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Any]:
    """The decision rule of a damage model: the probability above which a pixel is damage,
    never below 0.5, and optionally a lower level its region grows to (`threshold_damage`).

    For plain thresholding and for each of `GROW_CANDIDATES`, the smallest threshold that
    marks at most `budget` of the pixels of undamaged photos (`undamaged_probabilities`): clean
    scans and worn ones must both be left alone. Of those rules, the one with the best pixel F1
    on `validation` (damaged crops, truth masks) is kept; plain thresholding without it.

    Photos the model never trained on, and never a test set: the rule ships with the weights.
    """
    maps = [m for photo in undamaged_probabilities(model, files, device, versions) for m in photo]
    if not maps:
        return {}
    flat = np.concatenate([m.ravel() for m in maps])
    allowed = budget * flat.size
    plain = plain_threshold(flat, budget)
    rules: list[dict[str, Any]] = [
        {"threshold": plain, "grow": None, "marked": float((flat > plain).mean())}
    ]
    if validation is not None:
        for grow in GROW_CANDIDATES:
            regions = [probability_regions(m, grow)[1:] for m in maps]
            peaks = np.concatenate([peak[1:] for peak, _ in regions])
            sizes = np.concatenate([size[1:] for _, size in regions])
            threshold = _lowest_threshold(peaks, sizes, allowed, floor=_grid_up(grow + 1e-4))
            if math.isfinite(threshold):
                marked = float(sizes[peaks > threshold].sum() / flat.size)
                rules.append({"threshold": threshold, "grow": grow, "marked": marked})
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            logits = torch.cat([model(x) for x in validation[0].split(8)])
        probabilities = torch.sigmoid(logits)[:, 0].float().cpu().numpy()
        model.train(was_training)
        truth = validation[1][:, 0].cpu().numpy() > 0.5
        for rule in rules:
            pred = np.stack(
                [threshold_damage(p, rule["threshold"], rule["grow"]) for p in probabilities]
            )
            rule["val_f1"] = round(f1_score(pred, truth), 4)
    best = max(rules, key=lambda rule: rule.get("val_f1", 0.0))  # first of equals: plain
    return {
        "decision_threshold": best["threshold"],
        "grow_threshold": best["grow"],
        "mark_budget": budget,
        "marked_at_threshold": round(best["marked"], 5),
        "marked_at_0.5": round(float((flat > 0.5).mean()), 5),
        "val_f1": best.get("val_f1"),
        "rules": [
            {k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in rules
        ],
        "images": len(files),
        "versions": versions,
        "protocol": "undamaged photos never trained on (every third made grey) as they are and "
        "through the old-photo chain without damage (seeds [index, version, 11]); rules "
        "compared by pixel F1 on the validation damage crops",
    }


class _Validation:
    """Fixed validation crops (one centre crop per val file) and the task's protocol.

    denoise: Gaussian sigma 25, unclipped input, fixed seed; upscale: bicubic LR.
    Reports the mean PSNR (RGB, [0, 1]) of the model and of the trivial baseline
    (the noisy input; bicubic upsampling). damage: the training chain with a fixed seed;
    reports the pixel F1 of the thresholded (p > 0.5) mask (`metric` says which).
    colorize: colour crops turned into BT.601 grey, decoded with the annealed mean; RGB PSNR
    against the colour crop, baseline the grey crop itself.
    """

    def __init__(self, files: Sequence[Path], task: str, r: Recipe, device: torch.device) -> None:
        self.task, self.r = task, r
        self.metric = "f1" if task == "damage" else "psnr"
        self.baseline: float | None = None
        multiple = patch_multiple(task, r.hyperparameters(task))
        size = r.val_patch - r.val_patch % multiple
        crops = []
        for p in files[: r.val_patches]:
            img = read_image(p)
            h, w = img.shape[:2]
            if min(h, w) < size or (task == "colorize" and not is_colour(img)):
                continue
            y, x = (h - size) // 2, (w - size) // 2
            crop = _to_float(img[y : y + size, x : x + size])
            crops.append(np.repeat(crop, 3, axis=2) if crop.shape[2] == 1 else crop)
        channels = 3 if task == "colorize" else r.in_channels  # colorize: always colour out
        self.clean = _to_channels(_nchw(crops, device), channels) if crops else None
        if self.clean is None:
            return
        if task == "colorize":
            greys = [np.repeat(_quantise(_grey(c)), 3, axis=2) for c in crops]
            self.inputs = _nchw(greys, device)
            self.baseline = _psnr(self.inputs, self.clean)
        elif task == "inpaint":
            from daguerre.imaging.classical import telea_inpaint

            g = np.random.default_rng(0)
            triples = [degrade_for_inpaint(c, g) for c in crops]
            self.inputs = _to_channels(_nchw([t[0] for t in triples], device), r.in_channels)
            self.mask = _nchw([t[1][:, :, None].astype(np.float32) for t in triples], device)
            self.target = _to_channels(_nchw([t[2] for t in triples], device), r.in_channels)
            telea = [telea_inpaint(t[0], t[1], radius=3) for t in triples]
            telea_t = _to_channels(_nchw(telea, device), r.in_channels)
            self.baseline = _masked_psnr(telea_t, self.target, self.mask)
        elif task == "damage":
            g = np.random.default_rng(0)
            pairs = [degrade_for_damage(c, g, r) for c in crops]
            self.inputs = _to_channels(_nchw([p[0] for p in pairs], device), r.in_channels)
            self.truth = _nchw([p[1][:, :, None] for p in pairs], device)
        elif task == "denoise":
            g = np.random.default_rng(0)
            noise = g.standard_normal(tuple(self.clean.shape), dtype=np.float32) * (25 / 255)
            self.inputs = self.clean + torch.from_numpy(noise).to(device)
            self.sigma = torch.full((self.clean.shape[0],), 25 / 255, device=device)
            self.baseline = _psnr(self.inputs.clamp(0, 1), self.clean)
        else:
            self.inputs = _bicubic_down(self.clean, r.scale)
            up = F.interpolate(self.inputs, scale_factor=r.scale, mode="bicubic")
            self.baseline = _psnr(up.clamp(0, 1), self.clean)

    def damage_crops(self) -> tuple[Tensor, Tensor] | None:
        """(damaged crops, truth masks) of a damage validation, None when there are none."""
        return None if self.task != "damage" or self.clean is None else (self.inputs, self.truth)

    @torch.inference_mode()
    def __call__(self, model: nn.Module) -> float | None:
        if self.clean is None:
            return None
        model.eval()
        outs = []
        for i in range(0, self.clean.shape[0], 8):
            x = self.inputs[i : i + 8].contiguous(memory_format=torch.channels_last)
            if self.task == "denoise":
                outs.append(model(x, self.sigma[i : i + 8]))
            elif self.task == "inpaint":
                outs.append(model(x, self.mask[i : i + 8]))
            elif self.task == "colorize":
                outs.append(model.colorize(x))
            else:
                outs.append(model(x))
        model.train()
        if self.task == "inpaint":
            return _masked_psnr(torch.cat(outs).clamp(0, 1), self.target, self.mask)
        if self.task == "damage":
            return f1_score(torch.cat(outs) > 0, self.truth)
        return _psnr(torch.cat(outs).clamp(0, 1), self.clean)


# ----------------------------------------------------------------------------- training


def _lr_at(r: Recipe, fraction: float, step: int) -> float:
    fraction = min(max(fraction, 0.0), 1.0)
    if r.schedule == "cosine":
        lr = r.lr_min + 0.5 * (r.lr - r.lr_min) * (1 + math.cos(math.pi * fraction))
    elif r.schedule == "step":
        lr = r.lr * 0.5 ** sum(fraction >= m for m in (0.5, 0.75, 0.9))
    else:
        raise ValueError(f"unknown schedule {r.schedule!r} (cosine, step)")
    return lr * min(1.0, (step + 1) / max(1, r.warmup_steps))


def _loss(r: Recipe, out: Tensor, target: Tensor) -> Tensor:
    if r.loss == "l1":
        return F.l1_loss(out, target)
    if r.loss == "charbonnier":
        return torch.sqrt((out - target) ** 2 + 1e-6).mean()
    if r.loss == "l2":  # what PSNR scores: the fine-tune loss for Gaussian-noise benchmarks
        return F.mse_loss(out, target)
    raise ValueError(f"unknown loss {r.loss!r} (l1, l2, charbonnier)")


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-save leaves the previous checkpoint intact


def _cpu_state_dict(model: nn.Module) -> dict[str, Tensor]:
    # contiguous NCHW copies: safetensors needs contiguous tensors, channels_last is not
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


class _Progress:
    def __init__(self, enabled: bool, task: str, total_s: float, done_s: float) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn(f"train {task}"),
            BarColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.id = self.bar.add_task(task, total=total_s, completed=done_s, info="")
        self.bar.start()

    def update(self, done_s: float, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.id, completed=done_s, info=info)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def parse_recipe_options(items: list[str]) -> dict[str, Any]:
    """`["batch_size=32", "realistic=true"]` -> typed `Recipe` overrides; ValueError if unknown."""
    types = {f.name: str(f.type) for f in fields(Recipe)}
    recipe: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in types:
            raise ValueError(f"unknown recipe option {key!r}")
        t = types[key]
        if "bool" in t:
            recipe[key] = value.lower() in ("1", "true", "yes")
        elif "int" in t:
            recipe[key] = int(value)
        elif "float" in t:
            recipe[key] = float(value)
        else:
            recipe[key] = value
    return recipe


def train(
    task: str,
    data_dirs: list[Path],
    out: Path,
    minutes: float,
    device: str = "auto",
    resume: bool = True,
    seed: int = 0,
    val_fraction: float = 0.05,
    progress: bool = True,
    init_from: Path | None = None,
    calibration_dirs: Sequence[Path] = (),
    **recipe: Any,
) -> TrainResult:
    """Train our `task` model ("denoise" or "upscale") for `minutes` of wall clock in total.

    `recipe` overrides `Recipe` fields. With `resume`, an existing checkpoint of the same task
    and hyperparameters continues where it stopped (`minutes` counts the time already spent;
    pass a larger value to extend a finished run). `init_from` warm-starts a fresh run from
    another model's safetensors (tensors whose name and shape match are copied: an x2 body
    for an x4 net, bicubic-protocol weights for a realistic fine-tune); ignored when resuming.
    `calibration_dirs` (damage only): undamaged photos the model never trains on, pooled with
    the validation photos to calibrate the decision threshold (20 validation photos alone
    under-sample fine structure; re-running a finished run re-calibrates and re-exports).
    Writes `out` (safetensors), the model card
    `out.with_suffix(".json")` and keeps the checkpoint `out.with_suffix(".ckpt.pt")`.
    """
    if task not in TRAINABLE_TASKS:
        raise ValueError(f"cannot train {task!r}; trainable tasks: {', '.join(TRAINABLE_TASKS)}")
    known = {f.name for f in fields(Recipe)}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise TypeError(f"unknown recipe options {unknown}; known: {sorted(known)}")
    r = Recipe(**recipe)
    if task == "upscale" and r.scale not in (2, 4):
        raise ValueError("upscale training supports scale 2 or 4")
    _lr_at(r, 0.0, 0)  # unknown schedule or loss: fail now, not after loading the data
    _loss(r, torch.zeros(1), torch.zeros(1))
    if task == "colorize":
        rebalancing_weights(torch.full((2,), 0.5), r.rebalance)
        if r.loss_stride < 1:
            raise ValueError("loss_stride must be at least 1")
    if not 0.0 < r.hard_fraction <= 1.0:
        raise ValueError(f"hard_fraction must be in (0, 1], got {r.hard_fraction}")
    dirs = check_data_dirs(data_dirs)
    calibration_files: list[Path] = []
    if calibration_dirs:
        if task != "damage":
            raise ValueError("calibration photos are for damage models only")
        calibration_files = [p for p, _ in list_images(check_data_dirs(calibration_dirs))]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_path = out.with_suffix(".ckpt.pt")
    card_path = out.with_suffix(".json")

    dev = pick_device(device)
    arch: Architecture = get_architecture(ARCH_OF_TASK[task])
    hp = r.hyperparameters(task)

    files = list_images(dirs)
    train_files, val_files = split_files(files, val_fraction)
    if set(calibration_files) & set(train_files):
        raise ValueError("calibration photos must not be training photos")
    if not train_files:
        raise ValueError(f"no training images (PNG, JPEG, BMP) under {[str(d) for d in dirs]}")
    if r.patch % patch_multiple(task, hp):
        raise ValueError(f"{task} training needs a patch multiple of {patch_multiple(task, hp)}")
    min_side = r.patch * (r.scale if task == "upscale" else 1)
    if task == "damage":
        min_side = _damage_canvas(r)
    data = _Data(train_files, min_side)
    if not data.images:
        raise ValueError(f"no training image is at least {min_side} px on each side")
    skipped_grey = 0
    if task == "colorize":
        colour = [img for img in data.images if is_colour(img)]
        skipped_grey, data.images = len(data.images) - len(colour), colour
        if not colour:
            raise ValueError("no colour training image: a colorizer learns from colour photos")
    validate = _Validation(val_files, task, r, dev)

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(seed)
        model = arch.build(**hp)
    init_info = _warm_start(model, arch, hp, init_from) if init_from is not None else None
    # colorize: the chroma prior of the training images, once (seconds); kept in the checkpoint
    prior = (
        ab_prior(data.images, model.ab_bins, np.random.default_rng([seed, 1]), sigma=r.ab_sigma)
        if task == "colorize"
        else None
    )
    model = model.to(dev).to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=r.lr)
    rng = np.random.default_rng(seed)
    step, elapsed_s, step_s, patches = 0, 0.0, 0.0, 0
    history: list[dict[str, Any]] = []
    val_score: float | None = None

    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        # Hyperparameters added later (context_levels) are absent from older checkpoints.
        saved_hp = {**arch.default_hyperparameters, **state["hyperparameters"]}
        if state["task"] != task or saved_hp != {**arch.default_hyperparameters, **hp}:
            raise ValueError(
                f"checkpoint {ckpt_path} is for {state['task']} {state['hyperparameters']}, "
                f"not {task} {hp}; delete it or pass resume=False"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["numpy_rng"]
        step, elapsed_s = int(state["step"]), float(state["elapsed_s"])
        step_s, patches = float(state["step_s"]), int(state["patches"])
        history = list(state["history"])
        val_score = state.get("val_score", state.get("val_psnr"))
        init_info = state.get("init_from")
        prior = state.get("ab_prior", prior)
    class_weights = None if prior is None else rebalancing_weights(prior, r.rebalance)
    if class_weights is not None:
        data.chroma_loss = ChromaLoss(model.ab_bins, class_weights, r.ab_sigma)

    def checkpoint() -> None:
        _save_checkpoint(
            ckpt_path,
            {
                "task": task,
                "hyperparameters": hp,
                "recipe": asdict(r),
                "seed": seed,
                "model": _cpu_state_dict(model),
                "optimizer": opt.state_dict(),
                "numpy_rng": rng.bit_generator.state,
                "step": step,
                "elapsed_s": elapsed_s,
                "step_s": step_s,
                "patches": patches,
                "history": history,
                "val_score": val_score,
                "init_from": init_info,
                "ab_prior": prior,
            },
        )

    budget_s = minutes * 60.0
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch sizes: find the fastest kernels once
    batches = BatchStream(task, data, r, rng, seed, step, pin_memory=dev.type == "cuda")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(r.threads or os.cpu_count() or 1)
    bar = _Progress(progress, task, budget_s, min(elapsed_s, budget_s))
    start = time.monotonic() - elapsed_s
    last_ckpt = last_val = time.monotonic()
    loss_avg: float | None = None

    def done() -> bool:
        return elapsed_s >= budget_s or (r.max_steps is not None and step >= r.max_steps)

    try:
        while not done():
            t0 = time.perf_counter()
            fraction = elapsed_s / budget_s
            if r.max_steps is not None:
                fraction = max(fraction, step / r.max_steps)
            for group in opt.param_groups:
                group["lr"] = _lr_at(r, fraction, step)
            loss = _batch_loss(task, model, next(batches), r, rng, data.chroma_loss, dev)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            patches += r.batch_size
            step_s += time.perf_counter() - t0
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"loss became {value} at step {step}; lower lr")
            loss_avg = value if loss_avg is None else 0.98 * loss_avg + 0.02 * value
            now = time.monotonic()
            elapsed_s = now - start
            if now - last_val >= r.val_minutes * 60 or done():
                val_score = validate(model)
                history.append(
                    {
                        "step": step,
                        "minutes": round(elapsed_s / 60, 3),
                        "loss": round(loss_avg, 6),
                        f"val_{validate.metric}": None
                        if val_score is None
                        else round(val_score, 3),
                        "lr": opt.param_groups[0]["lr"],
                    }
                )
                last_val = time.monotonic()
            if now - last_ckpt >= r.checkpoint_minutes * 60:
                checkpoint()
                last_ckpt = time.monotonic()
            vp = "-" if val_score is None else f"{val_score:.3f} {validate.metric}"
            bar.update(
                min(elapsed_s, budget_s),
                f"step {step} loss {loss_avg:.4f} val {vp} "
                f"{patches / max(step_s, 1e-9):.0f} patches/s",
            )
        if val_score is None:
            val_score = validate(model)
        checkpoint()
    finally:
        batches.close()
        bar.stop()
        torch.set_num_threads(threads_before)

    calibration = {}
    if task == "damage":
        calibration = calibrate_damage_threshold(
            model,
            val_files + calibration_files,
            dev,
            versions=r.calibration_versions,
            validation=validate.damage_crops(),
        )
        if calibration and calibration_files:
            calibration["extra_dirs"] = [str(d) for d in calibration_dirs]
    shipped_facts = {
        key: calibration[key]
        for key in ("decision_threshold", "grow_threshold")
        if calibration.get(key) is not None
    }
    weights_sha = _write_weights(out, model, task, arch.name, hp, shipped_facts)
    result = TrainResult(
        weights=out,
        card=card_path,
        checkpoint=ckpt_path,
        steps=step,
        minutes=round(elapsed_s / 60, 3),
        val_score=None if val_score is None else round(val_score, 3),
        val_baseline=validate.baseline,
        metric=validate.metric,
        patches_per_s=round(patches / max(step_s, 1e-9), 2),
        weights_sha256=weights_sha,
        history=history,
    )
    n_params = sum(p.numel() for p in model.parameters())
    card = _card(result, task, arch, hp, r, dirs, data, train_files, val_files, seed, dev, n_params)
    card["init_from"] = init_info
    if calibration:
        card["calibration"] = calibration
    if prior is not None and class_weights is not None:
        card["colour"] = {
            "bins": int(prior.numel()),
            "grid": hp["grid"],
            "temperature": colorize_arch.DEFAULT_TEMPERATURE,
            "rebalance": r.rebalance,
            "ab_sigma": r.ab_sigma,
            "skipped_grey_images": skipped_grey,
            "ab_prior": [round(float(v), 7) for v in prior],
            "class_weights": [round(float(v), 4) for v in class_weights],
        }
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return result


def _warm_start(
    model: nn.Module, arch: Architecture, hp: Mapping[str, Any], path: Path
) -> dict[str, Any]:
    """Copy the tensors of safetensors `path` whose name and shape match `model`'s.

    Weights our trainer wrote name their architecture: another architecture is refused (equal
    names and shapes across architectures would be a coincidence, not a warm start). Where the
    architecture can `grow` a smaller net into `hp` exactly (a deeper denoiser), it does so
    first, so the larger net starts out computing what the smaller one did.
    """
    from safetensors.torch import load_file

    made_by = safetensors_metadata(path).get("daguerre", {}).get("architecture")
    if made_by is not None and made_by != arch.name:
        raise ValueError(f"{path} holds {made_by} weights; cannot warm-start {arch.name}")
    source = load_file(str(path))
    grown_from = None
    if arch.grow is not None and arch.detect(source):
        grown = arch.grow(source, hp)
        if set(grown) != set(source):  # tensors were added: the net was grown
            grown_from = arch.hyperparameters_from_state_dict(source)
        source = grown
    own = model.state_dict()
    matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ValueError(f"{path}: no tensor matches this architecture; cannot warm-start")
    model.load_state_dict(matched, strict=False)
    return {
        "file": Path(path).name,
        "sha256": sha256_file(Path(path)),
        "tensors_copied": len(matched),
        "tensors_total": len(own),
        **({"grown_from": grown_from} if grown_from is not None else {}),
    }


def _write_weights(
    out: Path,
    model: nn.Module,
    task: str,
    arch: str,
    hp: dict[str, int],
    facts: Mapping[str, Any] | None = None,
) -> str:
    """Write the weights with our metadata: task, architecture, hyperparameters and `facts`
    the loader needs (a damage model's calibrated decision threshold)."""
    from safetensors.torch import save_file

    # One key: safetensors stores metadata in a hash map whose order varies between runs, and
    # equal weights must give an equal file (and sha256).
    info = {"task": task, "architecture": arch, "hyperparameters": hp, **(facts or {})}
    meta = {"daguerre": json.dumps(info, sort_keys=True)}
    tmp = out.with_name(out.name + ".tmp")
    save_file(_cpu_state_dict(model), str(tmp), metadata=meta)
    os.replace(tmp, out)
    return sha256_file(out)


def _card(
    res: TrainResult,
    task: str,
    arch: Architecture,
    hp: dict[str, int],
    r: Recipe,
    dirs: list[Path],
    data: _Data,
    train_files: list[Path],
    val_files: list[Path],
    seed: int,
    dev: torch.device,
    n_params: int,
) -> dict[str, Any]:
    scale = hp.get("scale", 1)
    protocol = {
        "denoise": "Gaussian sigma 25 (levels), unclipped input, seed 0, RGB PSNR, centre crops",
        "upscale": f"x{scale} antialiased bicubic LR (8-bit), RGB PSNR, no border cut, "
        "centre crops",
        "damage": "training damage chain, seed 0, pixel F1 at p > 0.5, centre crops",
        "inpaint": "inpainting damage chain, seed 0, PSNR over masked pixels (baseline: "
        "OpenCV Telea r=3), centre crops",
        "colorize": "colour centre crops turned to BT.601 grey (8-bit), annealed mean "
        f"T={colorize_arch.DEFAULT_TEMPERATURE}, RGB PSNR (baseline: the grey crop)",
    }[task]
    metrics = {
        f"val_{res.metric}": res.val_score,
        f"val_baseline_{res.metric}": None
        if res.val_baseline is None
        else round(res.val_baseline, 3),
        "val_protocol": protocol,
        "val_images": len(val_files),
    }
    return {
        "card_version": CARD_VERSION,
        "task": task,
        "architecture": arch.name,
        "hyperparameters": hp,
        "parameters": n_params,
        "data_dirs": [str(d) for d in dirs],
        "train_images": len(data.images),
        "skipped_small_images": len(data.skipped),
        "steps": res.steps,
        "minutes": res.minutes,
        "patches_per_s": res.patches_per_s,
        **metrics,
        "seed": seed,
        "recipe": asdict(r),
        "device": str(dev),
        "torch": torch.__version__,
        "threads": r.threads or os.cpu_count(),
        "weights_file": res.weights.name,
        "weights_sha256": res.weights_sha256,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "history": res.history,
        # Fields of a registry.ModelDescriptor for these weights (the id/version/licence to fill).
        "descriptor": {
            "task": task,
            "architecture": arch.name,
            "scale": scale,
            "in_channels": hp.get("in_channels", 3),  # colorize: RGB (or grey) in, RGB out
            "out_channels": 1 if task == "damage" else hp.get("in_channels", 3),
            "size_requirements": {"minimum": 0, "multiple_of": arch.multiple_of(hp)},
            "tiling": "supported",
            "receptive_overlap": arch.receptive_radius(hp),
            "supports_half": True,
            "supports_bfloat16": True,
            "weights_file": res.weights.name,
            "weights_sha256": res.weights_sha256,
            "hyperparameters": hp,
            "takes_noise_level": arch.takes_noise_level,
            "training": {
                "data": [d.name for d in dirs],
                "recipe": asdict(r),
                "steps": res.steps,
                "minutes": res.minutes,
                "metrics": metrics,
            },
        },
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: `python -m daguerre.models.training TASK OUT --data DIR ... --minutes M`."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("task", choices=TRAINABLE_TASKS)
    p.add_argument("out", type=Path, help="weights file to write (.safetensors)")
    p.add_argument("--data", type=Path, action="append", required=True, help="image folder")
    p.add_argument("--minutes", type=float, required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--init", type=Path, default=None, help="warm-start from these weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe option, e.g. --set batch_size=32 --set scale=4 --set realistic=true",
    )
    a = p.parse_args(argv)
    try:
        recipe = parse_recipe_options(a.set)
    except ValueError as exc:
        p.error(str(exc))
    res = train(
        a.task,
        a.data,
        a.out,
        a.minutes,
        device=a.device,
        resume=not a.no_resume,
        seed=a.seed,
        val_fraction=a.val_fraction,
        progress=not a.no_progress,
        init_from=a.init,
        **recipe,
    )
    print(
        json.dumps(
            {
                k: str(v) if isinstance(v, Path) else v
                for k, v in asdict(res).items()
                if k != "history"
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
