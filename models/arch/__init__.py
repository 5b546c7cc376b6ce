"""Daguerre's own architectures: one explicit, ordered tuple, spandrel-style.

Each entry can `detect` its state dicts cheaply, read its hyperparameters back from tensor
shapes and `load` a module from a state dict. Nothing is discovered by import side effects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from . import colorize, damage, denoise, inpaint, upscale


@dataclass(frozen=True)
class Architecture:
    """How to recognise, build and describe one of our architectures."""

    name: str
    task: str
    module_class: type[nn.Module]
    detect: Callable[[Mapping[str, Tensor]], bool]
    hyperparameters_from_state_dict: Callable[[Mapping[str, Tensor]], dict[str, int]]
    load: Callable[[Mapping[str, Tensor]], nn.Module]
    default_hyperparameters: Mapping[str, Any]
    takes_noise_level: bool
    # What input sides must be a multiple of, as a function of the hyperparameters.
    multiple_of: Callable[[Mapping[str, Any]], int]
    # Receptive radius in input pixels as a function of the hyperparameters: the context a tile
    # needs on each side for its interior to equal the untiled result.
    receptive_radius: Callable[[Mapping[str, Any]], int]
    # Warm starts across sizes: the state dict of a net of these (larger) hyperparameters that
    # computes exactly what the given state dict's net does. None: tensors copied by name only.
    grow: Callable[[Mapping[str, Tensor], Mapping[str, Any]], dict[str, Tensor]] | None = None

    def build(self, **hyperparameters: Any) -> nn.Module:
        """A randomly initialised module with the defaults overridden by `hyperparameters`."""
        return self.module_class(**{**self.default_hyperparameters, **hyperparameters})

    def scale(self, hyperparameters: Mapping[str, Any]) -> int:
        return int(hyperparameters.get("scale", 1))


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        name=denoise.ARCH_NAME,
        task="denoise",
        module_class=denoise.FFDNetLike,
        detect=denoise.detect,
        hyperparameters_from_state_dict=denoise.hyperparameters_from_state_dict,
        load=denoise.load,
        default_hyperparameters=denoise.DEFAULT_HYPERPARAMETERS,
        takes_noise_level=True,
        multiple_of=lambda hp: 2,
        # Every 3x3 convolution at half resolution widens the field by 2 full-res pixels.
        receptive_radius=lambda hp: 2 * int(hp["layers"]) + 2,
        grow=denoise.grown,
    ),
    Architecture(
        name=upscale.ARCH_NAME,
        task="upscale",
        module_class=upscale.SRNet,
        detect=upscale.detect,
        hyperparameters_from_state_dict=upscale.hyperparameters_from_state_dict,
        load=upscale.load,
        default_hyperparameters=upscale.DEFAULT_HYPERPARAMETERS,
        takes_noise_level=False,
        multiple_of=lambda hp: 1,
        receptive_radius=lambda hp: int(hp["layers"]) + 2,  # + 2: the bicubic skip
    ),
    Architecture(
        name=damage.ARCH_NAME,
        task="damage",
        module_class=damage.DamageUNet,
        detect=damage.detect,
        hyperparameters_from_state_dict=damage.hyperparameters_from_state_dict,
        load=damage.load,
        default_hyperparameters=damage.DEFAULT_HYPERPARAMETERS,
        takes_noise_level=False,
        multiple_of=damage.multiple_of,
        receptive_radius=damage.receptive_radius,
    ),
    Architecture(
        name=inpaint.ARCH_NAME,
        task="inpaint",
        module_class=inpaint.InpaintUNet,
        detect=inpaint.detect,
        hyperparameters_from_state_dict=inpaint.hyperparameters_from_state_dict,
        load=inpaint.load,
        default_hyperparameters=inpaint.DEFAULT_HYPERPARAMETERS,
        takes_noise_level=False,
        multiple_of=lambda hp: inpaint.MULTIPLE_OF,
        receptive_radius=lambda hp: inpaint.RECEPTIVE_RADIUS,
    ),
    Architecture(
        name=colorize.ARCH_NAME,
        task="colorize",
        module_class=colorize.ColorizeUNet,
        detect=colorize.detect,
        hyperparameters_from_state_dict=colorize.hyperparameters_from_state_dict,
        load=colorize.load,
        default_hyperparameters=colorize.DEFAULT_HYPERPARAMETERS,
        takes_noise_level=False,
        multiple_of=lambda hp: colorize.MULTIPLE_OF,
        receptive_radius=lambda hp: colorize.RECEPTIVE_RADIUS,
    ),
)


def get_architecture(name: str) -> Architecture:
    """The architecture called `name`. Raises KeyError naming the known ones."""
    for arch in ARCHITECTURES:
        if arch.name == name:
            return arch
    raise KeyError(
        f"unknown architecture {name!r} (known: {', '.join(a.name for a in ARCHITECTURES)})"
    )


def detect_architecture(state_dict: Mapping[str, Tensor]) -> Architecture | None:
    """The first of our architectures whose `detect` accepts the state dict, else None."""
    return next((a for a in ARCHITECTURES if a.detect(state_dict)), None)


__all__ = ["ARCHITECTURES", "Architecture", "detect_architecture", "get_architecture"]
