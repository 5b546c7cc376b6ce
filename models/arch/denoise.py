"""FFDNet-like denoiser that runs at half resolution and predicts the noise.

Pixel-unshuffle x2 turns (C, H, W) into (4C, H/2, W/2); a noise-level map (sigma in [0, 1]
units) is appended as one more channel; a head convolution, residual pairs of 3x3 convolutions
(an identity skip around every pair: without them a 12-layer plain stack did not learn here) and
a tail convolution predict the noise, which pixel-shuffle brings back to full resolution and the
forward subtracts from the input. Working at half resolution quarters the cost per pixel.

Hyperparameters are read back from state-dict shapes (`hyperparameters_from_state_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

ARCH_NAME = "daguerre-ffdnet"
DEFAULT_HYPERPARAMETERS: dict[str, int] = {"in_channels": 3, "channels": 64, "layers": 12}


class _ResidualPair(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class FFDNetLike(nn.Module):
    """Denoiser. `layers` counts every convolution: head + 2 per residual pair + tail.

    forward(x, sigma): x (N, C, H, W) float in [0, 1] with even H and W; sigma (N,) or
    (N, 1, H, W) noise standard deviation in [0, 1] units. Returns (N, C, H, W), not clamped.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 12) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError("in_channels must be 1 or 3")
        if layers < 4 or layers % 2:
            raise ValueError("layers must be an even number >= 4 (head + pairs + tail)")
        self.in_channels = in_channels
        self.channels = channels
        self.layers = layers
        self.head = nn.Conv2d(4 * in_channels + 1, channels, 3, padding=1)
        self.blocks = nn.Sequential(*(_ResidualPair(channels) for _ in range((layers - 2) // 2)))
        self.tail = nn.Conv2d(channels, 4 * in_channels, 3, padding=1)

    @property
    def hyperparameters(self) -> dict[str, int]:
        return {"in_channels": self.in_channels, "channels": self.channels, "layers": self.layers}

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        n, _, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"height and width must be even, got {h}x{w} (use denoise_padded)")
        if sigma.dim() == 1:
            level = sigma.view(n, 1, 1, 1).expand(n, 1, h // 2, w // 2)
        else:
            level = F.avg_pool2d(sigma, 2)  # a spatially varying map, brought to half resolution
        feats = torch.cat([F.pixel_unshuffle(x, 2), level.to(x.dtype)], dim=1)
        feats = torch.relu(self.head(feats))
        noise = F.pixel_shuffle(self.tail(self.blocks(feats)), 2)
        return x - noise


def denoise_padded(model: FFDNetLike, x: Tensor, sigma: Tensor) -> Tensor:
    """`model(x, sigma)` for any H, W: reflection-pads to even sides, crops back."""
    h, w = x.shape[-2:]
    ph, pw = h % 2, w % 2
    if ph or pw:
        mode = "reflect" if min(h, w) > 1 else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
        if sigma.dim() == 4:
            sigma = F.pad(sigma, (0, pw, 0, ph), mode="replicate")
    return model(x, sigma)[..., :h, :w]


def detect(state_dict: Mapping[str, Tensor]) -> bool:
    """Cheap check that a state dict belongs to this architecture."""
    try:
        head, tail = state_dict["head.weight"], state_dict["tail.weight"]
    except KeyError:
        return False
    return (
        "blocks.0.conv1.weight" in state_dict
        and head.dim() == 4
        and tail.dim() == 4
        and (head.shape[1] - 1) % 4 == 0
        and tail.shape[0] == head.shape[1] - 1
    )


def hyperparameters_from_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, int]:
    """Constructor arguments read from tensor shapes."""
    head = state_dict["head.weight"]
    pairs = 0
    while f"blocks.{pairs}.conv1.weight" in state_dict:
        pairs += 1
    return {
        "in_channels": (int(head.shape[1]) - 1) // 4,
        "channels": int(head.shape[0]),
        "layers": 2 * pairs + 2,
    }


def grey_from_colour(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A 1-channel net's state dict that computes, on a grey image, the mean over channels of
    what the colour net computes on that image repeated into 3 channels.

    Pixel-unshuffle puts colour c at sub-pixel p into channel 4c + p: the head's weights of the
    three colours of each sub-pixel are summed (they see the same value), the noise-level
    channel is kept, and the tail's three outputs per sub-pixel are averaged. A warm start for
    a grey-only model (FFDNet, too, ships separate grey and colour nets).
    """
    hp = hyperparameters_from_state_dict(state_dict)
    if hp["in_channels"] != 3:
        raise ValueError(f"expected a colour (3-channel) net, got {hp['in_channels']} channels")
    grey = {k: v.clone() for k, v in state_dict.items()}
    head = state_dict["head.weight"]
    grey["head.weight"] = torch.cat([head[:, 0:4] + head[:, 4:8] + head[:, 8:12], head[:, 12:]], 1)
    tail_w, tail_b = state_dict["tail.weight"], state_dict["tail.bias"]
    grey["tail.weight"] = (tail_w[0:4] + tail_w[4:8] + tail_w[8:12]) / 3
    grey["tail.bias"] = (tail_b[0:4] + tail_b[4:8] + tail_b[8:12]) / 3
    return grey


def deepened(state_dict: Mapping[str, Tensor], layers: int, seed: int = 0) -> dict[str, Tensor]:
    """The state dict of a `layers`-deep net that computes exactly what `state_dict`'s net does.

    New residual pairs are spread between the old ones; each has a freshly initialised first
    convolution and an all-zero second one, so it starts as the identity (every pair's input
    has already been through a ReLU). A warm start that adds depth, for capacity a longer run
    can use, without losing what the shallower net learned.
    """
    hp = hyperparameters_from_state_dict(state_dict)
    old_pairs, new_pairs = (hp["layers"] - 2) // 2, (layers - 2) // 2
    if layers % 2 or new_pairs < old_pairs:
        raise ValueError(f"layers must be even and at least {hp['layers']}, got {layers}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = FFDNetLike(hp["in_channels"], hp["channels"], layers).state_dict()
    # Pair j of the deeper net is old pair order[j], or a new identity pair where None.
    added = new_pairs - old_pairs
    order: list[int | None] = []
    for i in range(old_pairs):
        order.append(i)
        if i < added:
            order.append(None)
    order.extend([None] * (new_pairs - len(order)))
    out = {k: v.clone() for k, v in state_dict.items() if not k.startswith("blocks.")}
    for j, old in enumerate(order):
        for name in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"):
            if old is not None:
                out[f"blocks.{j}.{name}"] = state_dict[f"blocks.{old}.{name}"].clone()
            elif name.startswith("conv1"):
                out[f"blocks.{j}.{name}"] = fresh[f"blocks.{j}.{name}"].clone()
            else:
                out[f"blocks.{j}.{name}"] = torch.zeros_like(fresh[f"blocks.{j}.{name}"])
    return out


def grown(
    state_dict: Mapping[str, Tensor], hyperparameters: Mapping[str, Any]
) -> dict[str, Tensor]:
    """`state_dict` made `hyperparameters["layers"]` deep by `deepened` when that is deeper
    (a warm start for `daguerre train --init`); otherwise the tensors as they are."""
    layers = int(hyperparameters.get("layers", 0))
    if layers > hyperparameters_from_state_dict(state_dict)["layers"]:
        return deepened(state_dict, layers)
    return dict(state_dict)


def load(state_dict: Mapping[str, Tensor]) -> FFDNetLike:
    """Build the net from a state dict (strict: every tensor must match)."""
    model = FFDNetLike(**hyperparameters_from_state_dict(state_dict))
    model.load_state_dict(dict(state_dict), strict=True)
    return model
