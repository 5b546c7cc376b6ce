"""Small super-resolution net that works at low resolution (ESPCN/SRVGG-like).

A stack of 3x3 convolutions with PReLU at LR resolution, a tail producing C * scale^2
channels, pixel-shuffle to HR, plus a bicubic upsampling of the input as a skip: the net only
learns the detail that bicubic misses, which is what made short CPU training work here.

Hyperparameters are read back from state-dict shapes (`hyperparameters_from_state_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

ARCH_NAME = "daguerre-srnet"
DEFAULT_HYPERPARAMETERS: dict[str, int] = {
    "in_channels": 3,
    "channels": 56,
    "layers": 9,
    "scale": 2,
}


class SRNet(nn.Module):
    """Upscaler. `layers` counts every convolution (head + body + tail).

    forward(x): (N, C, H, W) float in [0, 1] -> (N, C, H*scale, W*scale), not clamped.
    """

    def __init__(
        self, in_channels: int = 3, channels: int = 56, layers: int = 9, scale: int = 2
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError("in_channels must be 1 or 3")
        if scale not in (2, 3, 4):
            raise ValueError("scale must be 2, 3 or 4")
        if layers < 3:
            raise ValueError("layers must be >= 3")
        self.in_channels, self.channels, self.layers, self.scale = (
            in_channels,
            channels,
            layers,
            scale,
        )
        convs = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        convs += [nn.Conv2d(channels, channels, 3, padding=1) for _ in range(layers - 2)]
        self.convs = nn.ModuleList(convs)
        self.acts = nn.ModuleList(nn.PReLU(channels, init=0.1) for _ in convs)
        self.tail = nn.Conv2d(channels, in_channels * scale * scale, 3, padding=1)
        # Start near the bicubic skip: a small tail keeps early training stable.
        nn.init.normal_(self.tail.weight, std=1e-3)
        nn.init.zeros_(self.tail.bias)

    @property
    def hyperparameters(self) -> dict[str, int]:
        return {
            "in_channels": self.in_channels,
            "channels": self.channels,
            "layers": self.layers,
            "scale": self.scale,
        }

    def forward(self, x: Tensor) -> Tensor:
        feats = x
        for conv, act in zip(self.convs, self.acts, strict=True):
            feats = act(conv(feats))
        detail = F.pixel_shuffle(self.tail(feats), self.scale)
        base = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return base + detail


def detect(state_dict: Mapping[str, Tensor]) -> bool:
    """Cheap check that a state dict belongs to this architecture."""
    try:
        first, tail = state_dict["convs.0.weight"], state_dict["tail.weight"]
    except KeyError:
        return False
    if "acts.0.weight" not in state_dict or first.dim() != 4 or tail.dim() != 4:
        return False
    ratio = tail.shape[0] / max(1, first.shape[1])
    return ratio in (4.0, 9.0, 16.0)


def hyperparameters_from_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, int]:
    """Constructor arguments read from tensor shapes."""
    first, tail = state_dict["convs.0.weight"], state_dict["tail.weight"]
    n = 0
    while f"convs.{n}.weight" in state_dict:
        n += 1
    in_channels = int(first.shape[1])
    return {
        "in_channels": in_channels,
        "channels": int(first.shape[0]),
        "layers": n + 1,
        "scale": math.isqrt(int(tail.shape[0]) // in_channels),
    }


def load(state_dict: Mapping[str, Tensor]) -> SRNet:
    """Build the net from a state dict (strict: every tensor must match)."""
    model = SRNet(**hyperparameters_from_state_dict(state_dict))
    model.load_state_dict(dict(state_dict), strict=True)
    return model
