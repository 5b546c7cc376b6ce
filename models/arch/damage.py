"""Small U-Net that marks damage (scratches, dust, stains, tears, folds) pixel by pixel.

Three levels (full, half and quarter resolution) of residual blocks, strided convolutions down,
bilinear upsampling and skip concatenations up, one logit per pixel out. Thin scratches and
dust are one or two pixels wide, so the full-resolution level keeps its own features; the
coarser levels see enough context to tell a scratch from a wire or a hair in the picture.

`context_levels` adds coarser levels below the quarter-resolution one (1/8, 1/16, ...), each a
strided convolution and a residual block whose result is upsampled and added back through a
1x1 convolution that starts at zero: the net then computes exactly what it did without them
(a warm start from 3-level weights is exact) and learns to use the wider view - stains and
folds are larger than the 48 px the three levels see.

forward(x) returns logits; `probability` (and the loader's forward) applies the sigmoid.
Hyperparameters are read back from state-dict shapes (`hyperparameters_from_state_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

ARCH_NAME = "daguerre-damage-unet"
DEFAULT_HYPERPARAMETERS: dict[str, int] = {"in_channels": 3, "channels": 24, "context_levels": 0}
# Input sides must be a multiple of this (two stride-2 levels), times 2 per context level.
MULTIPLE_OF = 4
# Receptive radius in input px: 3 + 6 (full res), 2 * 5 (half), 4 * 5 (quarter), rounded up.
RECEPTIVE_RADIUS = 48


def multiple_of(hp: Mapping[str, Any]) -> int:
    """What input sides must be a multiple of, for these hyperparameters."""
    return MULTIPLE_OF * 2 ** int(hp.get("context_levels", 0))


def receptive_radius(hp: Mapping[str, Any]) -> int:
    """Receptive radius in input px: context level k (stride s = 2 ** (k + 2)) adds its strided
    convolution (s / 2), two 3x3 convolutions (2 s) and the bilinear upsampling (s)."""
    levels = int(hp.get("context_levels", 0))
    return RECEPTIVE_RADIUS + sum(2 ** (k + 2) * 7 // 2 for k in range(1, levels + 1))


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class _ContextLevel(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.block = _Residual(channels)
        self.lift = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.lift.weight)  # adds nothing until trained
        nn.init.zeros_(self.lift.bias)


class DamageUNet(nn.Module):
    """Damage segmenter. Widths: `channels` at full, 1.5x at half, 2x at quarter resolution.

    forward(x): (N, C, H, W) float in [0, 1], H and W multiples of `multiple_of` (4, times 2
    per context level) -> (N, 1, H, W) logits.
    """

    def __init__(self, in_channels: int = 3, channels: int = 24, context_levels: int = 0) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError("in_channels must be 1 or 3")
        if not 0 <= context_levels <= 3:
            raise ValueError("context_levels must be 0 to 3")
        c0, c1, c2 = channels, channels * 3 // 2, channels * 2
        self.in_channels, self.channels = in_channels, channels
        self.context_levels = context_levels
        self.multiple_of = multiple_of(self.hyperparameters)
        self.head = nn.Conv2d(in_channels, c0, 3, padding=1)
        self.enc0 = _Residual(c0)
        self.down1 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.enc1 = _Residual(c1)
        self.down2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.mid = nn.Sequential(_Residual(c2), _Residual(c2))
        self.context = nn.ModuleList(_ContextLevel(c2) for _ in range(context_levels))
        self.up1 = nn.Conv2d(c2, c1, 1)
        self.fuse1 = nn.Conv2d(2 * c1, c1, 3, padding=1)
        self.dec1 = _Residual(c1)
        self.up0 = nn.Conv2d(c1, c0, 1)
        self.fuse0 = nn.Conv2d(2 * c0, c0, 3, padding=1)
        self.dec0 = _Residual(c0)
        self.tail = nn.Conv2d(c0, 1, 3, padding=1)
        # Damage is rare: start by predicting "clean" (sigmoid(-3) = 5%) for a calm first epoch.
        nn.init.constant_(self.tail.bias, -3.0)

    @property
    def hyperparameters(self) -> dict[str, int]:
        return {
            "in_channels": self.in_channels,
            "channels": self.channels,
            "context_levels": self.context_levels,
        }

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % self.multiple_of or w % self.multiple_of:
            raise ValueError(f"input sides must be multiples of {self.multiple_of}, got {h}x{w}")
        f0 = self.enc0(torch.relu(self.head(x)))
        f1 = self.enc1(torch.relu(self.down1(f0)))
        f2 = self._with_context(self.mid(torch.relu(self.down2(f1))), 0)
        u1 = self.up1(F.interpolate(f2, scale_factor=2, mode="bilinear", align_corners=False))
        d1 = self.dec1(torch.relu(self.fuse1(torch.cat([u1, f1], dim=1))))
        u0 = self.up0(F.interpolate(d1, scale_factor=2, mode="bilinear", align_corners=False))
        d0 = self.dec0(torch.relu(self.fuse0(torch.cat([u0, f0], dim=1))))
        return self.tail(d0)

    def _with_context(self, features: Tensor, level: int) -> Tensor:
        """`features` plus what context levels `level`... see below them, upsampled."""
        if level == len(self.context):
            return features
        ctx = self.context[level]
        coarse = self._with_context(ctx.block(torch.relu(ctx.down(features))), level + 1)
        up = F.interpolate(ctx.lift(coarse), scale_factor=2, mode="bilinear", align_corners=False)
        return features + up

    def probability(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.forward(x))


def detect(state_dict: Mapping[str, Tensor]) -> bool:
    """Cheap check that a state dict belongs to this architecture."""
    needed = ("head.weight", "down2.weight", "fuse0.weight", "tail.weight")
    if any(k not in state_dict for k in needed) or "down3.weight" in state_dict:
        return False  # down3: the inpainting U-Net's fourth level
    tail = state_dict["tail.weight"]
    return tail.dim() == 4 and tail.shape[0] == 1


def hyperparameters_from_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, int]:
    """Constructor arguments read from tensor shapes."""
    head = state_dict["head.weight"]
    levels = 0
    while f"context.{levels}.down.weight" in state_dict:
        levels += 1
    return {
        "in_channels": int(head.shape[1]),
        "channels": int(head.shape[0]),
        "context_levels": levels,
    }


def load(state_dict: Mapping[str, Tensor]) -> DamageUNet:
    """Build the net from a state dict (strict: every tensor must match)."""
    model = DamageUNet(**hyperparameters_from_state_dict(state_dict))
    model.load_state_dict(dict(state_dict), strict=True)
    return model
