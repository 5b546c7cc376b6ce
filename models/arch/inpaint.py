"""U-Net that fills masked pixels (damage) from their surroundings.

Input: the image with the masked pixels blanked to mid-grey, plus the mask as one more channel.
Four levels (full, 1/2, 1/4 and 1/8 resolution) of residual blocks, strided convolutions down,
bilinear upsampling and skip concatenations up: the coarse levels reach across blotches tens of
pixels wide, the full-resolution level keeps fine texture at the edges of thin scratches.
The output keeps every unmasked pixel of the input exactly and predicts only the masked ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from .damage import _Residual

ARCH_NAME = "daguerre-inpaint-unet"
DEFAULT_HYPERPARAMETERS: dict[str, int] = {"in_channels": 3, "channels": 24}
MULTIPLE_OF = 8
# Receptive radius in input px, rounded up: the 1/8 level's convolutions dominate it.
RECEPTIVE_RADIUS = 96


def _up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class InpaintUNet(nn.Module):
    """Inpainter. Widths: `channels`, 1.5x, 2x and 2x at full, 1/2, 1/4, 1/8 resolution.

    forward(x, mask): x (N, C, H, W) float in [0, 1], mask (N, 1, H, W) in {0, 1} (1 = fill),
    H and W multiples of 8 -> (N, C, H, W): x where mask is 0, the prediction where it is 1.
    """

    def __init__(self, in_channels: int = 3, channels: int = 24) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError("in_channels must be 1 or 3")
        c0, c1, c2 = channels, channels * 3 // 2, channels * 2
        self.in_channels, self.channels = in_channels, channels
        self.head = nn.Conv2d(in_channels + 1, c0, 3, padding=1)
        self.enc0 = _Residual(c0)
        self.down1 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.enc1 = _Residual(c1)
        self.down2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.enc2 = _Residual(c2)
        self.down3 = nn.Conv2d(c2, c2, 3, stride=2, padding=1)
        self.mid = nn.Sequential(_Residual(c2), _Residual(c2))
        self.fuse2 = nn.Conv2d(2 * c2, c2, 3, padding=1)
        self.dec2 = _Residual(c2)
        self.up1 = nn.Conv2d(c2, c1, 1)
        self.fuse1 = nn.Conv2d(2 * c1, c1, 3, padding=1)
        self.dec1 = _Residual(c1)
        self.up0 = nn.Conv2d(c1, c0, 1)
        self.fuse0 = nn.Conv2d(2 * c0, c0, 3, padding=1)
        self.dec0 = _Residual(c0)
        self.tail = nn.Conv2d(c0, in_channels, 3, padding=1)

    @property
    def hyperparameters(self) -> dict[str, int]:
        return {"in_channels": self.in_channels, "channels": self.channels}

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % MULTIPLE_OF or w % MULTIPLE_OF:
            raise ValueError(f"input sides must be multiples of {MULTIPLE_OF}, got {h}x{w}")
        m = (mask > 0.5).to(x.dtype)
        blanked = x * (1 - m) + 0.5 * m
        f0 = self.enc0(torch.relu(self.head(torch.cat([blanked, m], dim=1))))
        f1 = self.enc1(torch.relu(self.down1(f0)))
        f2 = self.enc2(torch.relu(self.down2(f1)))
        f3 = self.mid(torch.relu(self.down3(f2)))
        d2 = self.dec2(torch.relu(self.fuse2(torch.cat([_up(f3), f2], dim=1))))
        d1 = self.dec1(torch.relu(self.fuse1(torch.cat([self.up1(_up(d2)), f1], dim=1))))
        d0 = self.dec0(torch.relu(self.fuse0(torch.cat([self.up0(_up(d1)), f0], dim=1))))
        fill = blanked + self.tail(d0)
        return x * (1 - m) + fill * m


def detect(state_dict: Mapping[str, Tensor]) -> bool:
    """Cheap check that a state dict belongs to this architecture."""
    needed = ("head.weight", "down3.weight", "fuse2.weight", "tail.weight")
    if any(k not in state_dict for k in needed):
        return False
    head, tail = state_dict["head.weight"], state_dict["tail.weight"]
    return head.dim() == 4 and head.shape[1] == tail.shape[0] + 1


def hyperparameters_from_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, int]:
    """Constructor arguments read from tensor shapes."""
    tail = state_dict["tail.weight"]
    return {"in_channels": int(tail.shape[0]), "channels": int(tail.shape[1])}


def load(state_dict: Mapping[str, Tensor]) -> InpaintUNet:
    """Build the net from a state dict (strict: every tensor must match)."""
    model = InpaintUNet(**hyperparameters_from_state_dict(state_dict))
    model.load_state_dict(dict(state_dict), strict=True)
    return model
