"""Safe weight loading and the one wrapper (`LoadedModel`) every model runs behind.

Weights are read once into memory, hashed, verified and loaded from those same bytes, so the
file cannot change between check and use. `.safetensors` loads through safetensors; pickles
(`.pth`, `.pt`, `.ckpt`) only through `torch.load(weights_only=True)`, whose restricted
unpickler refuses anything but tensors and plain containers. Never a bare `torch.load`.

Our own models are built from the registry's descriptors; bring-your-own weights go through
spandrel's architecture detection (or ours, for weights trained by `daguerre.models.training`),
are checked against the task they are meant for, and end up in the same `LoadedModel`.

Colorizers (DDColor) and face models (CodeFormer) come from `spandrel-extra-arches`, whose
architectures carry restrictive, often non-commercial licences (CodeFormer: S-Lab License 1.0);
the weights have their own terms (GFPGAN's, CodeFormer's and DDColor's included). Users bring
those weights themselves, and with them the duty to respect those terms.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from daguerre.imaging.noise import estimate_noise_sigma

from .arch import Architecture, detect_architecture, get_architecture
from .inference import pick_device, self_ensemble
from .registry import SHIPPED, TASKS, ModelDescriptor, SizeRequirements, get_descriptor

if TYPE_CHECKING:
    from spandrel import ArchRegistry, ImageModelDescriptor, MaskedImageModelDescriptor

_HEX64 = re.compile(r"[0-9a-f]{64}")

# spandrel purposes that may serve each of our tasks (damage has none there).
_SPANDREL_PURPOSES: dict[str, tuple[str, ...]] = {
    "denoise": ("Restoration",),
    "upscale": ("SR",),
    "inpaint": ("Inpainting",),
    "colorize": ("Restoration",),
    "face": ("FaceSR",),
}
# Tasks served only by the spandrel architectures whose calling conventions we have checked
# (a "Restoration" model is not a colorizer; spandrel's RestoreFormer is left out unverified).
_SPANDREL_ONLY: dict[str, tuple[str, ...]] = {
    "colorize": ("DDColor",),
    "face": ("GFPGAN", "CodeFormer"),
}
# ... and those architectures serve nothing else: told apart by id before they are built, so
# a wrong-task file is refused without building (and initialising) a large model first.
_SPANDREL_TASK_OF = {arch: task for task, archs in _SPANDREL_ONLY.items() for arch in archs}
# The spandrel-extra-arches architectures we add to spandrel's own (in a private registry).
_SPANDREL_EXTRA_ARCHES = ("DDColor", "CodeFormer")
# Face models (GFPGAN v1.2-1.4, CodeFormer) restore one aligned face crop of exactly this size
# (their layer shapes are built for it); the face stage reads it off `size_requirements`.
FACE_SIZE = 512
# Tasks whose output lines up pixel for pixel with the input, so flipped/turned passes can be
# averaged (`self_ensemble`).
ENSEMBLE_TASKS = ("denoise", "upscale", "inpaint")
# CodeFormer's fidelity weight w: 0 trusts its codebook most, 1 the input face most; 0.5 is the
# default of its own inference script.
CODEFORMER_FIDELITY = 0.5
# DDColor sees the grey image resized to this square and predicts a*b* there (its reference
# inference script defaults to 512; spandrel's call uses the 256 of training). Only the chroma
# is sized back: lightness stays the full-resolution input's.
DDCOLOR_SIZE = 512
# spandrel architectures that take a noise-level map as an extra last input channel; spandrel
# itself feeds a fixed 15/255, we feed the caller's (or the estimated) sigma.
_SPANDREL_NOISE_MAP_ARCHS = ("DRUNet", "DnCNN")
# Pure convolutional spandrel architectures, safe (and faster on CPU) in channels_last; others
# (transformers) may `.view` their activations, which needs contiguous NCHW.
_SPANDREL_CHANNELS_LAST = ("DnCNN", "Compact", "ESRGAN", "DRUNet")
# Tiling policy (tiling, context px) where spandrel's is not ours. LaMa keeps spandrel's default
# SUPPORTED, but its Fourier convolutions see the whole input, so no context makes a tile's fill
# equal the untiled one: tiles are as large as the tiler allows ("discouraged": twice the usual
# side, still split on out-of-memory) and a hole gets 256 px of surroundings beyond its tile
# (LaMa's training crop). Not "internal": a whole scan at once needs tens of GB.
_SPANDREL_TILING: dict[str, tuple[str, int]] = {"LaMa": ("discouraged", 256)}


class WeightsError(ValueError):
    """Weights that must not be used: wrong hash, unsafe or unreadable file, wrong model."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_hex(sha: str) -> str:
    sha = sha.strip().lower()
    if not _HEX64.fullmatch(sha):
        raise WeightsError(f"expected sha256 must be 64 hex digits, got {sha!r}")
    return sha


def _is_safetensors(data: bytes) -> bool:
    # safetensors: 8-byte little-endian header length, then a JSON header starting with "{".
    if len(data) < 10:
        return False
    (n,) = struct.unpack("<Q", data[:8])
    return 2 <= n <= len(data) - 8 and data[8:9] == b"{"


def _trainer_metadata(data: bytes) -> dict[str, Any]:
    """What `daguerre train` wrote into a safetensors file's metadata ({} for anything else)."""
    if not _is_safetensors(data):
        return {}
    (n,) = struct.unpack("<Q", data[:8])
    try:
        meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
        info = json.loads(meta.get("daguerre", "{}"))
    except (ValueError, AttributeError):
        return {}
    return info if isinstance(info, dict) else {}


def _load_bytes(data: bytes, name: str) -> dict[str, Tensor]:
    if _is_safetensors(data):
        from safetensors.torch import load as load_safetensors

        try:
            raw: Any = load_safetensors(data)
        except Exception as exc:
            raise WeightsError(f"{name}: not a readable safetensors file ({exc})") from exc
    else:
        try:
            raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise WeightsError(
                f"{name}: refused: the pickle holds objects other than tensors and plain "
                f"containers (it could run code when loaded). Convert it to .safetensors with a "
                f"trusted tool or re-save its state_dict. Detail: {first}"
            ) from exc
        except Exception as exc:
            raise WeightsError(
                f"{name}: not a loadable weights file (safetensors or torch state-dict pickle; "
                f"TorchScript archives are not supported): {type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(raw, Mapping):
        raise WeightsError(f"{name}: expected a state dict (a mapping), got {type(raw).__name__}")
    from spandrel import canonicalize_state_dict

    # Unwrap the usual containers ("params_ema", "state_dict", "module." prefixes ...).
    canonical = canonicalize_state_dict(dict(raw))
    tensors = {str(k): v for k, v in canonical.items() if isinstance(v, Tensor)}
    if not tensors:
        raise WeightsError(f"{name}: no tensors found in the state dict")
    return tensors


def _verified(data: bytes, expected_sha256: str | None, name: str) -> str:
    actual = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and actual != _check_hex(expected_sha256):
        raise WeightsError(
            f"{name}: sha256 mismatch: expected {_check_hex(expected_sha256)}, file has {actual}. "
            "The weights are not the ones you asked for; refusing to load them."
        )
    return actual


def load_state_dict(
    path_or_bytes: str | Path | bytes, *, expected_sha256: str | None
) -> dict[str, Tensor]:
    """Verify (when `expected_sha256` is given) and load a state dict onto the CPU.

    Format is recognised from the content: safetensors, else a torch pickle loaded with
    `weights_only=True`. Raises WeightsError on a hash mismatch, an unsafe pickle (nothing in
    it is executed) or an unreadable file.
    """
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        data, name = bytes(path_or_bytes), "<bytes>"
    else:
        name = str(path_or_bytes)
        try:
            data = Path(path_or_bytes).expanduser().read_bytes()
        except OSError as exc:
            raise WeightsError(f"cannot read weights {name}: {exc}") from exc
    _verified(data, expected_sha256, name)
    return _load_bytes(data, name)


@dataclass(frozen=True)
class ModelSpec:
    """A user's model: task, local path or s3:// URI, optional expected sha256."""

    task: str
    source: str
    sha256: str | None = None


def parse_model_spec(text: str) -> ModelSpec:
    """Parse `"denoise=PATH_OR_S3_URI#sha256=HEX"` (the `#sha256=` part is optional)."""
    task, sep, rest = text.partition("=")
    task = task.strip()
    if not sep or not rest.strip():
        raise ValueError(f"model spec {text!r} is not TASK=PATH_OR_S3_URI[#sha256=HEX]")
    if task not in TASKS:
        raise ValueError(f"model spec {text!r}: unknown task {task!r} ({', '.join(TASKS)})")
    source, marker, sha = rest.strip().rpartition("#sha256=")
    if not marker:
        source, sha = rest.strip(), ""
    if not source:
        raise ValueError(f"model spec {text!r} has no path or URI")
    try:
        checked = _check_hex(sha) if sha else None
    except WeightsError as exc:
        raise ValueError(f"model spec {text!r}: {exc}") from exc
    return ModelSpec(task=task, source=source, sha256=checked)


# A forward: padded (N, C, H, W) fp32 on the model's device, sigma in [0, 1] units or None,
# mask (N, 1, H, W) or None -> (N, C_out, H*s, W*s).
Forward = Callable[[Tensor, float | None, Tensor | None], Tensor]


class LoadedModel:
    """A ready-to-run model (ours or the user's) and the facts an audit records about it.

    `fixed_size` is set for models that work at one square size only (face models:
    `FACE_SIZE`): `run()` then resizes the image to it and the result back instead of padding.
    """

    def __init__(
        self,
        *,
        module: nn.Module,
        forward: Forward,
        model_id: str,
        task: str,
        architecture: str,
        version: str,
        scale: int,
        in_channels: int,
        out_channels: int,
        weights_sha256: str,
        size_requirements: SizeRequirements,
        tiling: str,
        receptive_overlap: int,
        takes_noise_level: bool,
        device: torch.device,
        needs_mask: bool = False,
        source: str | None = None,
        fixed_size: int | None = None,
        decision_threshold: float | None = None,
        grow_threshold: float | None = None,
    ) -> None:
        self.module = module
        self._forward = forward
        self.model_id = model_id
        self.task = task
        self.architecture = architecture
        self.version = version
        self.scale = scale
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.weights_sha256 = weights_sha256
        self.size_requirements = size_requirements
        self.tiling = tiling
        self.receptive_overlap = receptive_overlap
        self.takes_noise_level = takes_noise_level
        self.device = device
        self.needs_mask = needs_mask
        self.source = source
        self.fixed_size = fixed_size
        # damage models: the probability above which a pixel is damage, calibrated in training
        self.decision_threshold = decision_threshold
        self.grow_threshold = grow_threshold  # and the level its regions grow to (hysteresis)

    def __repr__(self) -> str:
        return (
            f"LoadedModel({self.model_id!r}, task={self.task}, arch={self.architecture}, "
            f"scale={self.scale}, in={self.in_channels}, device={self.device})"
        )

    def run(
        self,
        pixels: np.ndarray,
        *,
        noise_sigma: float | None = None,
        mask: np.ndarray | None = None,
        ensemble: int = 1,
    ) -> np.ndarray:
        """Run on one image. (H, W, C) float [0, 1], C in {1, 3} -> (H*s, W*s, C) float32 [0, 1].

        `noise_sigma` is in 8-bit levels (25 means N(0, (25/255)^2)); models that take a noise
        level estimate it from the image when it is None. `mask` (H, W) bool is required by
        inpainting models (True = fill). Grey input on a 3-channel model is replicated and the
        output averaged; colour input on a 1-channel model runs channel by channel.
        Colorizers are the exception: grey or colour in, always (H, W, 3) colour out.
        Face models take an aligned face crop, normally (FACE_SIZE, FACE_SIZE, C); other sizes
        are resized to it and back. `ensemble` > 1 averages that many flipped/turned passes
        (`self_ensemble`; denoise, upscale and inpaint models only).
        """
        if pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
            raise ValueError(f"expected (H, W, C) with C in (1, 3), got shape {pixels.shape}")
        if self.needs_mask and mask is None:
            raise ValueError(f"{self.model_id} is an inpainting model: pass mask=")
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        h, w, c = pixels.shape
        sigma: float | None = None
        if self.takes_noise_level:
            levels = estimate_noise_sigma(pixels) if noise_sigma is None else float(noise_sigma)
            sigma = max(0.0, levels) / 255.0

        x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)  # (1, C, H, W)
        grey_as_rgb = False
        if c == 1 and self.in_channels == 3:
            x = x.expand(1, 3, h, w)
        elif c == 3 and self.in_channels == 1:
            # A grey image stored as RGB runs once; other colour ones channel by channel.
            grey_as_rgb = bool(torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2]))
            x = x[:, :1] if grey_as_rgb else x.permute(1, 0, 2, 3)  # a batch of grey images
        elif c != self.in_channels:
            raise ValueError(f"{self.model_id} takes {self.in_channels} channels, image has {c}")
        m = None
        if mask is not None:
            if mask.shape != (h, w):
                raise ValueError(f"mask shape {mask.shape} != image {(h, w)}")
            m = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
            m = m.expand(x.shape[0], 1, h, w)

        fixed = self.fixed_size
        if fixed is not None:
            if m is not None:
                raise ValueError(f"{self.model_id} works at a fixed size and takes no mask")
            x = _resize(x, fixed, fixed)
        else:
            ph, pw = self.size_requirements.padded(h, w)
            x = _pad(x, ph - h, pw - w)
            if m is not None:
                m = _pad(m, ph - h, pw - w)
                m = m.to(self.device).contiguous(memory_format=torch.channels_last)
        x = x.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if ensemble == 1:
                y = self._forward(x, sigma, m)
            elif self.task in ENSEMBLE_TASKS and fixed is None:
                y = self_ensemble(lambda t, tm: self._forward(t, sigma, tm), x, m, ensemble)
            else:
                raise ValueError(f"{self.model_id} ({self.task}) does not take an ensemble")
            s = self.scale
            if fixed is not None:
                y = _resize(y.float(), h * s, w * s)
            y = y[..., : h * s, : w * s].float().clamp(0, 1).cpu()

        if c == 1 and self.in_channels == 3 and self.task != "colorize":
            y = y.mean(dim=1, keepdim=True)
        elif c == 3 and self.in_channels == 1:
            y = y.expand(1, 3, *y.shape[-2:]) if grey_as_rgb else y.permute(1, 0, 2, 3)
        return np.ascontiguousarray(y[0].permute(1, 2, 0).numpy(), dtype=np.float32)


def _pad(x: Tensor, ph: int, pw: int) -> Tensor:
    """Pad bottom/right by reflection (replicate when the image is too small to reflect)."""
    if ph == 0 and pw == 0:
        return x
    h, w = x.shape[-2:]
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _resize(x: Tensor, h: int, w: int) -> Tensor:
    """Antialiased bicubic resize of (N, C, H, W) to (N, C, h, w); a no-op at the same size."""
    if tuple(x.shape[-2:]) == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)


def _prepare(module: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    module = module.to(device=device, dtype=torch.float32).eval()
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _ours(
    arch: Architecture,
    state_dict: Mapping[str, Tensor],
    *,
    sha: str,
    device: torch.device,
    descriptor: ModelDescriptor | None,
    source: str | None,
    trained_with: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """`trained_with`: what our trainer wrote into a user's weights file (`_trainer_metadata`)."""
    trained_with = trained_with or {}
    hp = arch.hyperparameters_from_state_dict(state_dict)
    if descriptor is not None:
        wanted = {k: descriptor.hyperparameters[k] for k in hp if k in descriptor.hyperparameters}
        if any(hp[k] != v for k, v in wanted.items()):
            raise WeightsError(
                f"{descriptor.id}: weights have hyperparameters {hp}, descriptor says {wanted}"
            )
    try:
        module = _prepare(arch.load(state_dict), device, channels_last=True)
    except (RuntimeError, ValueError) as exc:
        raise WeightsError(f"weights do not fit architecture {arch.name}: {exc}") from exc

    if arch.takes_noise_level:

        def forward(x: Tensor, sigma: float | None, mask: Tensor | None) -> Tensor:
            level = torch.full((x.shape[0],), sigma or 0.0, device=x.device)
            return module(x, level)
    elif arch.task == "damage":

        def forward(x: Tensor, sigma: float | None, mask: Tensor | None) -> Tensor:
            return torch.sigmoid(module(x))  # damage probability per pixel
    elif arch.task == "inpaint":

        def forward(x: Tensor, sigma: float | None, mask: Tensor | None) -> Tensor:
            assert mask is not None
            return module(x, mask)
    elif arch.task == "colorize":

        def forward(x: Tensor, sigma: float | None, mask: Tensor | None) -> Tensor:
            # sRGB -> L -> chroma-bin logits -> annealed-mean a*b* -> sRGB with the input's L
            return module.colorize(x)
    else:

        def forward(x: Tensor, sigma: float | None, mask: Tensor | None) -> Tensor:
            return module(x)

    radius = arch.receptive_radius(hp)
    if descriptor is not None:
        d = descriptor
        return LoadedModel(
            module=module,
            forward=forward,
            model_id=d.id,
            task=d.task,
            architecture=d.architecture,
            version=d.version,
            scale=d.scale,
            in_channels=d.in_channels,
            out_channels=d.out_channels,
            weights_sha256=sha,
            size_requirements=d.size_requirements,
            tiling=d.tiling,
            receptive_overlap=d.receptive_overlap,
            takes_noise_level=d.takes_noise_level,
            device=device,
            needs_mask=arch.task == "inpaint",
            decision_threshold=d.decision_threshold,
            grow_threshold=d.grow_threshold,
        )
    return LoadedModel(
        module=module,
        forward=forward,
        model_id=f"user:{arch.name}",
        task=arch.task,
        architecture=arch.name,
        version="user",
        scale=arch.scale(hp),
        # colorizers take RGB (grey replicated) and return RGB; their net sees only L
        in_channels=hp.get("in_channels", 3),
        out_channels=1 if arch.task == "damage" else hp.get("in_channels", 3),
        weights_sha256=sha,
        size_requirements=SizeRequirements(multiple_of=arch.multiple_of(hp)),
        tiling="supported",
        receptive_overlap=radius,
        takes_noise_level=arch.takes_noise_level,
        device=device,
        needs_mask=arch.task == "inpaint",
        source=source,
        decision_threshold=trained_with.get("decision_threshold"),
        grow_threshold=trained_with.get("grow_threshold"),
    )


def _read_source(source: str) -> bytes:
    """Bytes of a local path, file:// or s3:// URI. Other schemes are refused (no network)."""
    from daguerre.storage import StorageError, read_uri

    try:
        return read_uri(source)
    except StorageError as exc:
        raise WeightsError(f"cannot read weights {source}: {exc}") from exc


def load_user_model(
    task: str,
    source: str,
    expected_sha256: str | None = None,
    device: str | torch.device = "auto",
    *,
    scale: int | None = None,
) -> LoadedModel:
    """Load bring-your-own weights for `task` from a local path or s3:// URI.

    The bytes are verified against `expected_sha256` when given (the actual hash is recorded in
    any case). Our own trained architectures are recognised first, then spandrel's. Raises
    WeightsError when the weights are unsafe, unknown, or made for another task, scale
    (when `scale` is given) or channel count.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    dev = pick_device(device) if isinstance(device, str) else device
    shipped = next((d for d in SHIPPED if d.id == source), None)
    if shipped is not None:  # a shipped model that is not the default, chosen by its id
        if shipped.task != task:
            raise WeightsError(f"{source} is a {shipped.task} model, not a {task} model")
        if expected_sha256 is not None and expected_sha256 != shipped.weights_sha256:
            raise WeightsError(f"{source}: sha256 {shipped.weights_sha256}, not {expected_sha256}")
        model = load_model(shipped, device=dev)
        if scale is not None and model.scale != scale:
            raise WeightsError(f"{source}: a x{model.scale} model, x{scale} was asked for")
        return model
    data = _read_source(source)
    sha = _verified(data, expected_sha256, source)
    state_dict = _load_bytes(data, source)

    ours = detect_architecture(state_dict)
    if ours is not None:
        if ours.task != task:
            raise WeightsError(f"{source}: a {ours.task} model ({ours.name}), not a {task} model")
        model = _ours(
            ours,
            state_dict,
            sha=sha,
            device=dev,
            descriptor=None,
            source=source,
            trained_with=_trainer_metadata(data),
        )
    else:
        model = _spandrel(task, state_dict, sha=sha, device=dev, source=source)
    if scale is not None and model.scale != scale:
        raise WeightsError(f"{source}: a x{model.scale} model, x{scale} was asked for")
    return model


@cache
def _spandrel_registry() -> ArchRegistry:
    """spandrel's architectures plus `_SPANDREL_EXTRA_ARCHES`, in a private copy built once.

    spandrel's global MAIN_REGISTRY is left untouched (`copy()` is copy-on-write), so nothing
    else in the process sees architectures it did not ask for.
    """
    from spandrel import MAIN_REGISTRY

    registry = MAIN_REGISTRY.copy()
    try:
        from spandrel_extra_arches import EXTRA_REGISTRY
    except ImportError:  # a dependency, but spandrel's own architectures work without it
        return registry
    extra = [EXTRA_REGISTRY[a] for a in _SPANDREL_EXTRA_ARCHES if a in EXTRA_REGISTRY]
    registry.add(*extra, ignore_duplicates=True)  # a user's install() may have added them
    return registry


def _spandrel_arch(state_dict: Mapping[str, Tensor], source: str) -> str:
    """The id of the spandrel architecture the state dict belongs to (cheap: keys and shapes)."""
    registry = _spandrel_registry()
    try:
        support = next(
            (s for s in registry.architectures("detection") if s.detect(state_dict)), None
        )
    except Exception as exc:  # detectors index into the dict; malformed ones can trip them
        raise WeightsError(f"{source}: spandrel could not read the state dict: {exc}") from exc
    if support is None:
        missing = "" if "DDColor" in registry else " (spandrel-extra-arches is not installed)"
        raise WeightsError(f"{source}: unknown architecture (not ours, not spandrel's){missing}")
    return str(support.architecture.id)


def _spandrel(
    task: str, state_dict: dict[str, Tensor], *, sha: str, device: torch.device, source: str
) -> LoadedModel:
    from spandrel import (
        ImageModelDescriptor,
        MaskedImageModelDescriptor,
        ModelLoader,
        ModelTiling,
    )

    purposes = _SPANDREL_PURPOSES.get(task)
    if purposes is None:
        raise WeightsError(f"no bring-your-own architectures are known for task {task!r}")
    arch = _spandrel_arch(state_dict, source)
    owner = _SPANDREL_TASK_OF.get(arch)
    if owner is not None and owner != task:
        raise WeightsError(f"{source}: {arch} is a {owner} model, not usable for {task}")
    only = _SPANDREL_ONLY.get(task)
    if only is not None and arch not in only:
        raise WeightsError(
            f"{source}: {arch} weights, but no bring-your-own {task} architecture other than "
            f"{' and '.join(only)} is supported"
        )
    try:
        loader = ModelLoader(device="cpu", registry=_spandrel_registry())
        desc = loader.load_from_state_dict(state_dict)
    except Exception as exc:  # spandrel raises assorted errors on malformed dicts
        raise WeightsError(f"{source}: spandrel could not build the model: {exc}") from exc
    if desc.purpose not in purposes:
        raise WeightsError(
            f"{source}: {arch} is a {desc.purpose} model, not usable for {task} "
            f"(expected {' or '.join(purposes)})"
        )
    assert isinstance(desc, ImageModelDescriptor | MaskedImageModelDescriptor)
    if task == "colorize":
        return _spandrel_colorizer(desc, sha=sha, device=device, source=source)
    if task == "face":
        return _spandrel_face(desc, sha=sha, device=device, source=source)
    if task == "denoise" and desc.scale != 1:
        raise WeightsError(f"{source}: {arch} changes the size (x{desc.scale}); not a denoiser")
    if task == "upscale" and desc.scale < 2:
        raise WeightsError(f"{source}: {arch} has scale {desc.scale}; not an upscaler")
    if desc.input_channels not in (1, 3) or desc.output_channels != desc.input_channels:
        raise WeightsError(
            f"{source}: {arch} maps {desc.input_channels} to {desc.output_channels} channels; "
            "only 1->1 and 3->3 models are supported"
        )
    req = desc.size_requirements
    if req.square:
        raise WeightsError(f"{source}: {arch} needs square inputs, which is not supported")

    module = _prepare(desc.model, device, channels_last=arch in _SPANDREL_CHANNELS_LAST)
    noise_map = arch in _SPANDREL_NOISE_MAP_ARCHS and (
        arch != "DnCNN" or getattr(module, "mode", "") == "FDnCNN"
    )
    if isinstance(desc, MaskedImageModelDescriptor):

        def forward(x: Tensor, sigma: float | None, mask: Tensor | None) -> Tensor:
            assert mask is not None
            return desc(x, mask.round())
    elif noise_map:

        def forward(x: Tensor, sigma: float | None, mask: Tensor | None) -> Tensor:
            level = torch.full_like(x[:, :1], sigma or 0.0)
            return module(torch.cat([x, level], dim=1))
    else:

        def forward(x: Tensor, sigma: float | None, mask: Tensor | None) -> Tensor:
            return desc(x)

    tiling = {
        ModelTiling.SUPPORTED: "supported",
        ModelTiling.DISCOURAGED: "discouraged",
        ModelTiling.INTERNAL: "internal",
    }[desc.tiling]
    # spandrel does not know receptive fields; 32 px of context is the usual tiler default.
    tiling, context = _SPANDREL_TILING.get(arch, (tiling, 32))
    return LoadedModel(
        module=module,
        forward=forward,
        model_id=f"user:{arch}",
        task=task,
        architecture=arch,
        version="user",
        scale=desc.scale,
        in_channels=desc.input_channels,
        out_channels=desc.output_channels,
        weights_sha256=sha,
        size_requirements=SizeRequirements(req.minimum, req.multiple_of),
        tiling=tiling,
        receptive_overlap=context,
        takes_noise_level=noise_map,
        device=device,
        needs_mask=isinstance(desc, MaskedImageModelDescriptor),
        source=source,
    )


def _spandrel_colorizer(
    desc: ImageModelDescriptor | MaskedImageModelDescriptor,
    *,
    sha: str,
    device: torch.device,
    source: str,
) -> LoadedModel:
    """DDColor as a colorizer: (N, 3, H, W) sRGB [0, 1] (grey or not) -> sRGB with the input's
    CIELAB lightness and DDColor's a*b*.

    As in DDColor's reference inference: the image's lightness, resized to DDCOLOR_SIZE
    squared (the reference resizes the image first) and turned into grey sRGB, goes in (the
    model applies its ImageNet mean/std itself); a*b* in CIELAB units come out, are sized back
    bilinearly and put on the full-size lightness, pulled into the sRGB gamut by chroma.
    spandrel's own call differs (gamma-2.2 colour maths, 256 px, one grey channel only).
    """
    from .arch.colorize import lab_to_rgb, lab_to_rgb_in_gamut, rgb_to_lab

    channels = getattr(desc.model, "num_output_channels", None)
    if channels != 2:
        raise WeightsError(f"{source}: a DDColor predicting {channels} channels, not a*b* (2)")
    module = _prepare(desc.model, device, channels_last=False)
    size = DDCOLOR_SIZE
    # DDColor hands encoder features to its decoder through hooks stored on the module: one
    # loaded model must not run in two threads at once (Prefect runs tasks in threads).
    lock = threading.Lock()

    def forward(x: Tensor, sigma: float | None, mask: Tensor | None) -> Tensor:
        with lock:
            return _ddcolor_forward(x)

    def _ddcolor_forward(x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        lightness = rgb_to_lab(x)[:, :1]
        small = _resize(lightness, size, size).clamp(0.0, 100.0)
        no_chroma = torch.zeros_like(small).expand(-1, 2, -1, -1)
        grey = lab_to_rgb(torch.cat([small, no_chroma], dim=1)).mean(dim=1, keepdim=True)
        ab = module(grey.clamp(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()).float()
        ab = F.interpolate(ab, size=(h, w), mode="bilinear", align_corners=False)
        return lab_to_rgb_in_gamut(torch.cat([lightness, ab], dim=1))

    return LoadedModel(
        module=module,
        forward=forward,
        model_id="user:DDColor",
        task="colorize",
        architecture="DDColor",
        version="user",
        scale=1,
        # presented like our own colorizer: RGB in (grey replicated by run()), RGB out
        in_channels=3,
        out_channels=3,
        weights_sha256=sha,
        size_requirements=SizeRequirements(),
        tiling="internal",  # the whole view at once: colour needs the whole scene
        receptive_overlap=0,
        takes_noise_level=False,
        device=device,
        source=source,
    )


def _spandrel_face(
    desc: ImageModelDescriptor | MaskedImageModelDescriptor,
    *,
    sha: str,
    device: torch.device,
    source: str,
) -> LoadedModel:
    """GFPGAN or CodeFormer on one aligned (N, 3, FACE_SIZE, FACE_SIZE) crop in [0, 1].

    spandrel's call passes [0, 1] through unchanged, but both networks work in [-1, 1] (their
    own inference normalises with mean = std = 0.5 and maps the output back), so the forward
    does that. GFPGAN uses the noise maps stored with its weights instead of fresh noise (its
    own inference draws new noise each call), so a face restores the same way every time.
    """
    arch = str(desc.architecture.id)
    req = desc.size_requirements
    if (desc.scale, desc.input_channels, desc.output_channels) != (1, 3, 3) or max(
        req.minimum, req.multiple_of
    ) != FACE_SIZE:
        raise WeightsError(
            f"{source}: a {arch} with scale {desc.scale}, {desc.input_channels}->"
            f"{desc.output_channels} channels and size {req}; only x1 RGB {FACE_SIZE} px "
            "face models are supported"
        )
    module = _prepare(desc.model, device, channels_last=False)
    options: dict[str, Any] = (
        {"weight": CODEFORMER_FIDELITY}
        if arch == "CodeFormer"
        else {"return_rgb": False, "randomize_noise": False}
    )

    def forward(x: Tensor, sigma: float | None, mask: Tensor | None) -> Tensor:
        # contiguous: GFPGAN `.view`s its features, which channels_last input would break
        restored = module(x.contiguous() * 2.0 - 1.0, **options)[0]
        return (restored + 1.0) / 2.0

    return LoadedModel(
        module=module,
        forward=forward,
        model_id=f"user:{arch}",
        task="face",
        architecture=arch,
        version="user",
        scale=1,
        in_channels=3,
        out_channels=3,
        weights_sha256=sha,
        # the working size, read by the face stage; run() resizes other sizes to it
        size_requirements=SizeRequirements(FACE_SIZE, FACE_SIZE),
        tiling="internal",
        receptive_overlap=0,
        takes_noise_level=False,
        device=device,
        source=source,
        fixed_size=FACE_SIZE,
    )


def load_model(
    descriptor_or_spec: ModelDescriptor | ModelSpec | str, *, device: str | torch.device = "auto"
) -> LoadedModel:
    """Load a shipped model (descriptor or id) or a user's (`ModelSpec` or spec text).

    Shipped weights are verified against the descriptor's sha256 before use.
    """
    if isinstance(descriptor_or_spec, str):
        if "=" in descriptor_or_spec:
            descriptor_or_spec = parse_model_spec(descriptor_or_spec)
        else:
            descriptor_or_spec = get_descriptor(descriptor_or_spec)
    if isinstance(descriptor_or_spec, ModelSpec):
        s = descriptor_or_spec
        return load_user_model(s.task, s.source, s.sha256, device)

    d = descriptor_or_spec
    if d.weights_path is None or d.weights_sha256 is None:
        raise WeightsError(f"{d.id}: the descriptor names no weights file")
    arch = get_architecture(d.architecture)
    data = _read_source(str(d.weights_path))
    sha = _verified(data, d.weights_sha256, d.weights_file or d.id)
    state_dict = _load_bytes(data, d.weights_file or d.id)
    if not arch.detect(state_dict):
        raise WeightsError(f"{d.id}: weights are not a {arch.name} state dict")
    dev = pick_device(device) if isinstance(device, str) else device
    return _ours(arch, state_dict, sha=sha, device=dev, descriptor=d, source=None)


def safetensors_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON-decoded `__metadata__` of a safetensors file written by our trainer."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out
