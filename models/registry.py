"""The one registry of Daguerre's own models: explicit, ordered, immutable.

Nothing registers itself on import. A model ships when its descriptor is listed in `SHIPPED`
and its weights file (verified by sha256 when loaded) lies in `models/weights/`. Pipelines read
everything they need from the descriptor (task, scale, size requirements, tiling policy) and
never special-case an architecture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

Task = Literal["denoise", "upscale", "inpaint", "damage", "colorize", "face"]
Tiling = Literal["supported", "discouraged", "internal"]

TASKS: tuple[str, ...] = ("denoise", "upscale", "inpaint", "damage", "colorize", "face")
TILING_MODES: tuple[str, ...] = ("supported", "discouraged", "internal")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class SizeRequirements:
    """Input size constraints: each side >= `minimum` and a multiple of `multiple_of` (pixels)."""

    minimum: int = 0
    multiple_of: int = 1

    def __post_init__(self) -> None:
        if self.minimum < 0 or self.multiple_of < 1:
            raise ValueError(f"invalid size requirements {self}")

    def padded(self, height: int, width: int) -> tuple[int, int]:
        """The smallest (height, width) >= the given one that satisfies the requirements."""

        def up(n: int) -> int:
            n = max(n, self.minimum)
            return -(-n // self.multiple_of) * self.multiple_of

        return up(height), up(width)


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class ModelDescriptor:
    """Everything a pipeline and an audit need to know about one of our models.

    `hyperparameters` are the keyword arguments of the architecture's constructor;
    `training` records how the weights were made (data, recipe, steps, minutes, metrics).
    """

    id: str
    task: Task
    architecture: str
    version: str
    scale: int
    in_channels: int
    out_channels: int
    size_requirements: SizeRequirements
    tiling: Tiling
    receptive_overlap: int
    supports_half: bool
    supports_bfloat16: bool
    weights_file: str | None
    weights_sha256: str | None
    licence: str
    training: Mapping[str, Any] = field(default_factory=dict, hash=False)
    hyperparameters: Mapping[str, Any] = field(default_factory=dict, hash=False)
    takes_noise_level: bool = False
    # damage models: the probability above which a pixel is damage (None: 0.5), calibrated on
    # validation images so that undamaged photos are left almost unmarked
    decision_threshold: float | None = None
    # and the level a region above it is grown to (hysteresis; None: plain thresholding)
    grow_threshold: float | None = None
    # Shipped, but never a task's default: it runs only when asked for by id
    # (`--model damage=daguerre-damage-s`), e.g. while it misses its quality targets.
    opt_in: bool = False

    def __post_init__(self) -> None:
        # Freeze the two mappings so a descriptor cannot be changed through them either.
        object.__setattr__(self, "training", _frozen(self.training))
        object.__setattr__(self, "hyperparameters", _frozen(self.hyperparameters))
        problems = descriptor_problems(self)
        if problems:
            raise ValueError(f"invalid model descriptor {self.id!r}: {'; '.join(problems)}")

    @property
    def weights_path(self) -> Path | None:
        """Absolute path of the weights file, or None when the descriptor has none."""
        return None if self.weights_file is None else WEIGHTS_DIR / self.weights_file


def descriptor_problems(d: ModelDescriptor) -> list[str]:
    """Consistency checks of one descriptor; an empty list means it is valid."""
    problems: list[str] = []
    if d.task not in TASKS:
        problems.append(f"unknown task {d.task!r}")
    if d.scale not in (1, 2, 4):
        problems.append(f"scale {d.scale} not in (1, 2, 4)")
    if d.task != "upscale" and d.task != "face" and d.scale != 1:
        problems.append(f"task {d.task} must have scale 1")
    if d.task == "upscale" and d.scale == 1:
        problems.append("an upscale model must have scale 2 or 4")
    if d.in_channels < 1 or d.out_channels < 1:
        problems.append("channel counts must be positive")
    if d.tiling not in TILING_MODES:
        problems.append(f"tiling {d.tiling!r} not in {TILING_MODES}")
    if d.receptive_overlap < 0:
        problems.append("receptive_overlap must be >= 0")
    if d.decision_threshold is not None and (
        d.task != "damage" or not 0.0 < d.decision_threshold < 1.0
    ):
        problems.append("decision_threshold is a damage model's probability in (0, 1)")
    if d.grow_threshold is not None and (
        d.decision_threshold is None or not 0.0 < d.grow_threshold < d.decision_threshold
    ):
        problems.append("grow_threshold is a probability below the decision_threshold")
    if (d.weights_file is None) != (d.weights_sha256 is None):
        problems.append("weights_file and weights_sha256 go together")
    if d.weights_sha256 is not None and (
        len(d.weights_sha256) != 64 or any(c not in "0123456789abcdef" for c in d.weights_sha256)
    ):
        problems.append("weights_sha256 must be 64 lower-case hex digits")
    if d.weights_file is not None and ("/" in d.weights_file or "\\" in d.weights_file):
        problems.append("weights_file is a bare file name under models/weights")
    return problems


def _ours(
    model_id: str,
    task: Task,
    architecture: str,
    sha256: str,
    *,
    data: Sequence[str],
    trained_on: str,
    training: Mapping[str, Any],
    hyperparameters: Mapping[str, Any],
    receptive_overlap: int,
    in_channels: int = 3,
    out_channels: int | None = None,
    scale: int = 1,
    multiple_of: int = 1,
    tiling: Tiling = "supported",
    **facts: Any,
) -> ModelDescriptor:
    """A model trained here: weights `{id}.safetensors` and card `{id}.json` in models/weights/,
    Apache-2.0, fp32 only (half precision was not measured; fp32 + channels_last is the fast
    path everywhere). `data` are the training folders, `trained_on` names them for the licence;
    `facts` are the remaining descriptor fields (noise-level input, threshold, opt-in)."""
    return ModelDescriptor(
        id=model_id,
        task=task,
        architecture=architecture,
        version="1",
        scale=scale,
        in_channels=in_channels,
        out_channels=in_channels if out_channels is None else out_channels,
        size_requirements=SizeRequirements(minimum=0, multiple_of=multiple_of),
        tiling=tiling,
        receptive_overlap=receptive_overlap,
        supports_half=False,
        supports_bfloat16=False,
        weights_file=f"{model_id}.safetensors",
        weights_sha256=sha256,
        licence=f"Apache-2.0 (weights trained here on {trained_on})",
        training={"card": f"{model_id}.json", "data": list(data), **training},
        hyperparameters=hyperparameters,
        **facts,
    )


def _denoiser(
    model_id: str,
    in_channels: int,
    sha256: str,
    training: Mapping[str, Any],
    layers: int = 12,
    opt_in: bool = False,
) -> ModelDescriptor:
    """A daguerre-ffdnet denoiser (`layers` convolutions of 64 channels at half resolution,
    steered by a noise-level map) for `in_channels` (3 colour, 1 grey)."""
    return _ours(
        model_id,
        "denoise",
        "daguerre-ffdnet",
        sha256,
        data=["train/BSDS500-train", "train/BSDS500-test-split", "train/Train400"],
        trained_on="BSDS500 train/test-split and Train400",
        training=training,
        hyperparameters={"in_channels": in_channels, "channels": 64, "layers": layers},
        receptive_overlap=2 * layers + 2,  # 2 full-resolution pixels per half-resolution conv
        in_channels=in_channels,
        multiple_of=2,
        takes_noise_level=True,
        opt_in=opt_in,
    )


DENOISERS: tuple[ModelDescriptor, ...] = (
    # Colour masters (the default): -s below grown to 16 layers exactly (`deepened`), then
    # trained on with L2. Better than -s at every sigma; a third slower, still faster than
    # non-local means on colour images (BENCHMARKS.md, session 10).
    _denoiser(
        "daguerre-denoise-m",
        3,
        "d28ec2b31ab4cbe89e4ee44bf7742abfa9fa57a03ebff94163ba9156ca14393b",
        {
            "recipe": "warm start: daguerre-denoise-s deepened to 16 layers (identity pairs); "
            "blind Gaussian sigma 0-55 + Poisson/film grain/JPEG mixes, 25% grey replicated, "
            "noise-level map, L2, Adam 2e-4 cosine, batch 16 x 64 px, CPU fp32, 1 thread",
            "steps": 13066,
            "minutes": 125.0,
            "metrics": {"val_psnr_sigma25": 30.319, "val_noisy_psnr": 20.331},
        },
        layers=16,
    ),
    # The first colour default (12 layers): opt-in now, for speed; the grey nets grew from it.
    _denoiser(
        "daguerre-denoise-s",
        3,
        "ee117496773d9d826c556c62768181f10bdfc8c51b670fc62a0433742b338201",
        {
            "recipe": "blind Gaussian sigma 0-55 + Poisson/film grain/JPEG mixes, 25% grey "
            "replicated, noise-level map, L1, Adam 5e-4 cosine, batch 16 x 64 px, CPU fp32",
            "steps": 24616,
            "minutes": 110.0,
            "metrics": {"val_psnr_sigma25": 30.214, "val_noisy_psnr": 20.331},
        },
        opt_in=True,
    ),
    # One-band masters: the -s grey net below grown to 16 layers exactly (`deepened`), then
    # trained on grey only. Better than -s at every sigma, given the true or the estimated
    # noise level (+0.11 to +0.23 dB, BENCHMARKS.md); opt-in for its cost, a third slower.
    _denoiser(
        "daguerre-denoise-grey-m",
        1,
        "3ab266bbf01360927ea4854cbf28584342856b4662e2b80b5df4f2576e932c2a",
        {
            "recipe": "warm start: daguerre-denoise-grey-s deepened to 16 layers (identity "
            "pairs); grey patches only, blind Gaussian sigma 0-55 + Poisson/film grain/JPEG "
            "mixes, noise-level map, L2, batch 16 x 64 px, CPU fp32, 1 thread; 125 minutes at "
            "Adam 2e-4 cosine, then 105 more from those weights at 1.5e-4 cosine",
            "steps": 8149 + 10179,
            "minutes": 125.0 + 105.0,
            "metrics": {"val_psnr_sigma25_grey": 28.069, "val_noisy_psnr": 20.304},
        },
        layers=16,
        opt_in=True,
    ),
    # One-band masters (grey TIFF/PNG scans, most of an archive's prints and negatives): the
    # colour net turned into a grey one exactly (`grey_from_colour`), then trained on grey only.
    _denoiser(
        "daguerre-denoise-grey-s",
        1,
        "d6155ddcc019322d4c73b92331916382300cc9d92ae66472096c7b1c32092a3b",
        {
            "recipe": "warm start: daguerre-denoise-s made grey (grey_from_colour); grey "
            "patches only, blind Gaussian sigma 0-55 + Poisson/film grain/JPEG mixes, "
            "noise-level map, L1, Adam 2e-4 cosine, batch 16 x 64 px, CPU fp32, 1 thread",
            "steps": 8120,
            "minutes": 108.0,
            "metrics": {"val_psnr_sigma25_grey": 27.904, "val_noisy_psnr": 20.304},
        },
    ),
)


def _upscaler(
    model_id: str, scale: int, sha256: str, training: Mapping[str, Any]
) -> ModelDescriptor:
    """A daguerre-srnet upscaler (9 convolutions of 56 channels at LR resolution + bicubic skip)."""
    return _ours(
        model_id,
        "upscale",
        "daguerre-srnet",
        sha256,
        data=_SR_DATA,
        trained_on="T91 and BSDS500 train/test-split",
        training=training,
        hyperparameters={"in_channels": 3, "channels": 56, "layers": 9, "scale": scale},
        receptive_overlap=11,
        scale=scale,
    )


_SR_DATA = ["train/T91", "train/BSDS500-train", "train/BSDS500-test-split"]
# The bicubic-protocol upscalers: comparable with published tables (BENCHMARKS.md).
UPSCALERS_BICUBIC: tuple[ModelDescriptor, ...] = (
    _upscaler(
        "daguerre-upscale-x2-bicubic",
        2,
        "5d87d5a329cfe3f440f002dcd18e86ca35bd73793c1e1472607f99c8a6a1525c",
        {
            "recipe": "HR patches 128 px, LR by antialiased bicubic (8-bit), L1, Adam 5e-4 "
            "cosine with a warm restart, batch 16 x 64 px LR, CPU fp32; resumed from a "
            "20-minute run on T91 alone",
            "steps": 4967,
            "minutes": 60.0,
            "metrics": {"val_psnr_rgb": 28.59, "val_bicubic_psnr_rgb": 26.908},
        },
    ),
    _upscaler(
        "daguerre-upscale-x4-bicubic",
        4,
        "e4ee15490bec8d75c2ed0d666aeb18a38cf4abfda89dc9b741c591d6400b5527",
        {
            "recipe": "warm-started from the x2 run's body; HR patches 192 px, LR by "
            "antialiased bicubic (8-bit), L1, Adam 5e-4 cosine, batch 16 x 48 px LR, CPU fp32",
            "steps": 3189,
            "minutes": 45.0,
            "metrics": {"val_psnr_rgb": 24.328, "val_bicubic_psnr_rgb": 23.372},
        },
    ),
)
# The defaults: the bicubic-protocol weights fine-tuned on realistic degradations (random blur,
# resize kernel, noise, JPEG), better on scan-like inputs, and still above Lanczos on clean ones.
UPSCALERS: tuple[ModelDescriptor, ...] = (
    _upscaler(
        "daguerre-upscale-x2",
        2,
        "d1ba043d43859269de04ee003cf5b1324466ead50c3b4aedeeb86ba812c3b9e9",
        {
            "recipe": "fine-tuned from daguerre-upscale-x2-bicubic: realistic LR (blur, "
            "bicubic/bilinear/area, Gaussian noise 1-15, JPEG 40-95), L1, Adam 2e-4 cosine, "
            "batch 16 x 64 px LR, CPU fp32",
            "steps": 816,
            "minutes": 20.0,
            "metrics": {"val_psnr_rgb_bicubic_lr": 27.432, "val_bicubic_psnr_rgb": 26.908},
        },
    ),
    _upscaler(
        "daguerre-upscale-x4",
        4,
        "6f1c45150f927a8ecc09bd12c633c8454c3f05beb0ea46b28527ea43263fb5db",
        {
            "recipe": "fine-tuned from daguerre-upscale-x4-bicubic: realistic LR (blur, "
            "bicubic/bilinear/area, Gaussian noise 1-15, JPEG 40-95), L1, Adam 2e-4 cosine, "
            "batch 16 x 48 px LR, CPU fp32",
            "steps": 1442,
            "minutes": 20.0,
            "metrics": {"val_psnr_rgb_bicubic_lr": 23.907, "val_bicubic_psnr_rgb": 23.372},
        },
    ),
)

INPAINTERS: tuple[ModelDescriptor, ...] = (
    _ours(
        "daguerre-inpaint-s",
        "inpaint",
        "daguerre-inpaint-unet",
        "93b347bd63087ea15b3018558f60abfa3ec8fefececff6a7c3270f67d2e2a20c",
        data=["train/BSDS500-train", "train/BSDS500-test-split", "train/T91", "train/Train400"],
        trained_on="BSDS500 train/test-split, T91 and Train400",
        training={
            "recipe": "scratches, dust, stains, tears and folds of daguerre.imaging.degrade over "
            "aged clean patches; mask in, only masked pixels predicted; masked L1, Adam 5e-4 "
            "cosine, batch 8 x 96 px, CPU fp32, 1 thread",
            "steps": 13211,
            "minutes": 110.4,
            "metrics": {"val_masked_psnr": 18.57, "val_telea_masked_psnr": 16.853},
        },
        hyperparameters={"in_channels": 3, "channels": 24},
        receptive_overlap=96,
        multiple_of=8,
    ),
)

COLORIZERS: tuple[ModelDescriptor, ...] = (
    _ours(
        "daguerre-colorize-s",
        "colorize",
        "daguerre-colorize-unet",
        "393a386cc202e85f2b250f156240162aab65c1d6e0975de4fa07bfdb4e48ecfe",
        data=["train/BSDS500-train", "train/BSDS500-test-split", "train/T91"],
        trained_on="BSDS500 train/test-split and T91",
        training={
            "recipe": "CIELAB L in, 261 a*b* bins out (annealed mean), soft-encoded cross-entropy "
            "with class rebalancing; 70 min from scratch (rebalance 0.5, near-grey patches "
            "skipped), then 30 min fine-tuned (rebalance 0.8, grey patches kept, lr 2e-4); "
            "batch 16 x 128 px, CPU fp32, 1 thread",
            "steps": 1364,
            "minutes": 100.0,
            "metrics": {"val_psnr": 19.545, "val_grey_psnr": 18.596},
        },
        hyperparameters={"channels": 32, "grid": 10},
        receptive_overlap=144,
        multiple_of=8,
        # The colorize stage runs it once on a view of the whole image (colour needs the scene).
        tiling="internal",
    ),
)

# Opt-in (`--model damage=daguerre-damage-s`): it finds real creases the classical detector
# misses and leaves undamaged photos well under the 0.3% limit, but is still far from F1 0.90 on
# held-out damage (BENCHMARKS.md), so the classical detector stays the default.
DAMAGE_DETECTORS: tuple[ModelDescriptor, ...] = (
    _ours(
        "daguerre-damage-s",
        "damage",
        "daguerre-damage-unet",
        "aee63c42446626639ea11dbb8961c35d89647635849c0182c0ad32a6f55ac6a3",
        data=["train/BSDS500-train", "train/BSDS500-test-split"],
        trained_on="BSDS500 train/test-split",
        training={
            "recipe": "135 min on the session-3 chain, then 128 min warm-started on "
            "damage_training_config (widths and dust sizes on both sides of the held-out "
            "band, shifted colours, damage drawn on a crop twice the patch); BCE + soft dice, "
            "Adam 5e-4 cosine, batch 12 x 96 px, CPU fp32, 1 thread. Decision rule "
            "re-calibrated in session 6 over the validation photos and T91 (111 undamaged "
            "photos, 0.3% budget): hysteresis, threshold 0.9992 grown to 0.5",
            "steps": 6097,
            "minutes": 128.0,
            "metrics": {
                "val_f1_at_0.5": 0.367,
                "decision_threshold": 0.9992,
                "grow_threshold": 0.5,
                "val_f1_of_rule": 0.427,
            },
        },
        hyperparameters={"in_channels": 3, "channels": 24},
        receptive_overlap=48,
        out_channels=1,
        multiple_of=4,
        decision_threshold=0.9992,
        grow_threshold=0.5,
        opt_in=True,
    ),
)

# Ordered: the first shipped descriptor of a task (and scale) is its default. Trained models are
# added here with their weights in models/weights/; an entry whose file is absent must not be
# listed (a test checks every file and sha256).
SHIPPED: tuple[ModelDescriptor, ...] = (
    *DENOISERS,
    *UPSCALERS,
    *UPSCALERS_BICUBIC,
    *INPAINTERS,
    *COLORIZERS,
    *DAMAGE_DETECTORS,
)


def get_descriptor(model_id: str) -> ModelDescriptor:
    """The shipped descriptor with this id. Raises KeyError naming the known ids."""
    for d in SHIPPED:
        if d.id == model_id:
            return d
    known = ", ".join(d.id for d in SHIPPED) or "none"
    raise KeyError(f"no shipped model {model_id!r} (shipped: {known})")


def default_for(
    task: str, scale: int | None = None, in_channels: int | None = None
) -> ModelDescriptor | None:
    """The default shipped model of a task (at this scale, for inputs of this many channels, if
    given), or None if there is none. Opt-in models are never defaults."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    return next(
        (
            d
            for d in SHIPPED
            if d.task == task
            and not d.opt_in
            and (scale is None or d.scale == scale)
            and (in_channels is None or d.in_channels == in_channels)
        ),
        None,
    )


def shipped_scales(task: str) -> tuple[int, ...]:
    """The scales for which a default model of this task ships, ascending."""
    return tuple(sorted({d.scale for d in SHIPPED if d.task == task and not d.opt_in}))
