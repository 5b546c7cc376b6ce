"""U-Net that predicts colour for a grey picture as a distribution over quantized CIELAB chroma.

Zhang, Isola and Efros (2016) style: the input is lightness only (CIELAB L / 100); the output is,
at every pixel, logits over Q chroma bins (the a*, b* grid cells of side `grid` whose centres
are inside the sRGB gamut at some lightness). A plain regression of a*/b* learns the brownish
average of all plausible colours; a distribution decoded by its annealed mean (softmax of
logits / T, T about 0.38) keeps saturated colours where the net is sure of them.

The bin centres are a registered buffer, so the weights file carries the exact bins it was
trained with. `colorize` is the whole inference: sRGB -> L -> logits -> a*b* -> sRGB, with the
input's L kept exactly (chroma is shrunk towards grey where it would leave the sRGB gamut, so
clipping never changes lightness).

Four levels (full, 1/2, 1/4, 1/8 resolution). Colour is mostly a matter of context (what the
object is), so the width sits in the coarse levels (dilated residual blocks at 1/8); the
full-resolution level is narrow and only aligns chroma to edges.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

ARCH_NAME = "daguerre-colorize-unet"
DEFAULT_HYPERPARAMETERS: dict[str, int] = {"channels": 32, "grid": 10}
MULTIPLE_OF = 8
# Receptive radius in input px, rounded up: the gradient support of one output pixel reaches
# 134 px (the dilated 1/8 level dominates it); tests/test_colorize.py checks the bound.
RECEPTIVE_RADIUS = 144
# Annealed-mean temperature of Zhang et al.: between the mean (1, desaturated) and the mode
# (-> 0, saturated but blotchy).
DEFAULT_TEMPERATURE = 0.38
# sRGB's a*, b* stay within about +-108: coarser grids than this make no sense.
AB_RANGE = 110

# sRGB (D65) <-> XYZ, the constants OpenCV's cvtColor uses.
_RGB_TO_XYZ = torch.tensor(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ],
    dtype=torch.float64,
)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ)
_WHITE = (0.950456, 1.0, 1.088754)
_EPS = 0.008856  # (6/29)^3
_KAPPA = 7.787  # slope of the linear part of f(t)


def _mix(matrix: Tensor, x: Tensor) -> Tensor:
    """(3, 3) matrix times the channel axis of (N, 3, H, W)."""
    return torch.einsum("ij,njhw->nihw", matrix.to(x.device, x.dtype), x)


def _white(x: Tensor) -> Tensor:
    return torch.tensor(_WHITE, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB (N, 3, H, W) float in [0, 1] -> CIELAB (N, 3, H, W): L in [0, 100], a*, b* (D65).

    Matches OpenCV's float `cv2.COLOR_RGB2Lab` (same matrix and white point) within 1e-3.
    """
    c = rgb.clamp(0.0, 1.0)
    linear = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    t = _mix(_RGB_TO_XYZ, linear) / _white(rgb)
    f = torch.where(t > _EPS, t.clamp_min(_EPS) ** (1.0 / 3.0), _KAPPA * t + 16.0 / 116.0)
    fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    return torch.cat([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """CIELAB (N, 3, H, W) -> sRGB (N, 3, H, W), NOT clipped: values outside [0, 1] mean the
    colour is outside the sRGB gamut (see `lab_to_rgb_in_gamut`)."""
    fy = (lab[:, 0:1] + 16.0) / 116.0
    f = torch.cat([fy + lab[:, 1:2] / 500.0, fy, fy - lab[:, 2:3] / 200.0], dim=1)
    t = torch.where(f > 6.0 / 29.0, f**3, (f - 16.0 / 116.0) / _KAPPA)
    linear = _mix(_XYZ_TO_RGB, t * _white(lab))
    # The power branch sees a clamped value: torch.where evaluates both branches.
    gamma = 1.055 * linear.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055
    return torch.where(linear <= 0.0031308, 12.92 * linear, gamma)


def _in_gamut(rgb: Tensor, tol: float) -> Tensor:
    return ((rgb >= -tol) & (rgb <= 1.0 + tol)).all(dim=1, keepdim=True)


def lab_to_rgb_in_gamut(lab: Tensor, steps: int = 10, tol: float = 1e-4) -> Tensor:
    """CIELAB (N, 3, H, W), L in [0, 100] -> sRGB (N, 3, H, W) in [0, 1] with the same L.

    Where (L, a*, b*) is outside the sRGB gamut, the chroma is scaled by the largest factor in
    [0, 1] (bisection, `steps` halvings) that brings it inside, keeping L and the hue: clipping
    RGB instead would change the lightness of saturated pixels.
    """
    rgb = lab_to_rgb(lab)
    ok = _in_gamut(rgb, tol)
    if bool(ok.all()):
        return rgb.clamp(0.0, 1.0)
    lightness, ab = lab[:, :1], lab[:, 1:]
    lo = torch.zeros_like(lightness)  # grey: always in gamut
    hi = torch.ones_like(lightness)
    for _ in range(steps):
        mid = (lo + hi) / 2
        good = _in_gamut(lab_to_rgb(torch.cat([lightness, ab * mid], dim=1)), tol)
        lo, hi = torch.where(good, mid, lo), torch.where(good, hi, mid)
    scale = torch.where(ok, torch.ones_like(lo), lo)
    return lab_to_rgb(torch.cat([lightness, ab * scale], dim=1)).clamp(0.0, 1.0)


def ab_bin_centres(grid: int = 10) -> Tensor:
    """(Q, 2) float32 a*, b* centres of the `grid`-spaced cells that some sRGB colour falls in
    (Zhang et al.'s "in-gamut" bins; grid 10 gives 261). Sorted by (a, b).

    Found by quantizing the a*b* of a 65^3 lattice of the sRGB cube (corners included).
    """
    if grid < 2 or grid > AB_RANGE:
        raise ValueError(f"grid must be in [2, {AB_RANGE}], got {grid}")
    v = torch.linspace(0.0, 1.0, 65, dtype=torch.float64)
    r, g, b = torch.meshgrid(v, v, v, indexing="ij")
    rgb = torch.stack([r.flatten(), g.flatten(), b.flatten()]).view(1, 3, -1, 1)
    cells = torch.round(rgb_to_lab(rgb)[0, 1:, :, 0] / grid).to(torch.int64)
    return (torch.unique(cells, dim=1).T * grid).to(torch.float32).contiguous()


def nearest_bins(ab: Tensor, centres: Tensor, k: int = 1, chunk: int = 1 << 16) -> Tensor:
    """Squared distances and indices of the `k` nearest centres to each point.

    ab (M, 2), centres (Q, 2) -> (distances (M, k), indices (M, k) long), nearest first.
    Processed in chunks of `chunk` points so M x Q never materialises at once.
    """
    dists, idxs = [], []
    c = centres.to(ab.dtype)
    for i in range(0, ab.shape[0], chunk):
        d = torch.cdist(ab[i : i + chunk], c).square()
        top = torch.topk(d, k, dim=1, largest=False)
        dists.append(top.values)
        idxs.append(top.indices)
    if not dists:
        return ab.new_zeros(0, k), torch.zeros(0, k, dtype=torch.long, device=ab.device)
    return torch.cat(dists), torch.cat(idxs)


def soft_encode(
    ab: Tensor, centres: Tensor, k: int = 5, sigma: float = 5.0
) -> tuple[Tensor, Tensor]:
    """Zhang et al.'s soft encoding of a*b* (N, 2, H, W) over the `k` nearest bins.

    -> (indices (N, k, H, W) long, weights (N, k, H, W) float summing to 1 over k), Gaussian
    in the distance with `sigma` (a*b* units); index 0 along k is the nearest bin.
    """
    n, _, h, w = ab.shape
    flat = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    d2, idx = nearest_bins(flat, centres, k)
    weight = torch.softmax(-d2 / (2.0 * sigma * sigma), dim=1)
    idx = idx.view(n, h, w, k).permute(0, 3, 1, 2).contiguous()
    weight = weight.view(n, h, w, k).permute(0, 3, 1, 2).contiguous()
    return idx, weight


class SoftEncoder:
    """`soft_encode` through a lookup table on a 1-unit a*b* lattice: the targets of a training
    batch cost a gather instead of a (pixels x Q) distance matrix.

    a*, b* are rounded to integers first (8-bit sRGB moves a*b* in steps of about 0.5 anyway),
    so the weights differ from the exact encoding by a fraction of a percent.
    """

    def __init__(
        self, centres: Tensor, k: int = 5, sigma: float = 5.0, limit: int = AB_RANGE + 20
    ) -> None:
        self.limit, self.side = limit, 2 * limit + 1
        v = torch.arange(-limit, limit + 1, dtype=torch.float32)
        a, b = torch.meshgrid(v, v, indexing="ij")
        lattice = torch.stack([a, b]).unsqueeze(0)  # (1, 2, side, side)
        idx, weight = soft_encode(lattice, centres.detach().float().cpu(), k, sigma)
        self.idx = idx[0].reshape(k, -1).to(centres.device)  # (k, side * side)
        self.weight = weight[0].reshape(k, -1).to(centres.device)

    def __call__(self, ab: Tensor) -> tuple[Tensor, Tensor]:
        """a*b* (N, 2, H, W) -> (indices (N, k, H, W) long, weights (N, k, H, W)), as
        `soft_encode` (index 0 along k is the nearest bin)."""
        q = torch.round(ab.detach()).clamp(-self.limit, self.limit).long() + self.limit
        flat = (q[:, 0] * self.side + q[:, 1]).flatten()  # (N * H * W,)
        n, _, h, w = ab.shape
        k = self.idx.shape[0]
        idx = self.idx[:, flat].view(k, n, h, w).transpose(0, 1)
        weight = self.weight[:, flat].view(k, n, h, w).transpose(0, 1)
        return idx.contiguous(), weight.contiguous()


def decode(logits: Tensor, centres: Tensor, temperature: float = DEFAULT_TEMPERATURE) -> Tensor:
    """Annealed mean: logits (N, Q, H, W) -> a*b* (N, 2, H, W) = sum_q softmax(logits / T)_q c_q.

    T = 1 is the mean of the predicted distribution, T -> 0 its mode.
    """
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    # Bins last: contiguous for the channels_last logits the nets make, and a plain matmul.
    p = torch.softmax(logits.float().permute(0, 2, 3, 1) / temperature, dim=-1)
    return (p @ centres.to(p.dtype)).permute(0, 3, 1, 2)


class _Residual(nn.Module):
    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


def _up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _widths(channels: int) -> tuple[int, int, int, int]:
    return channels // 2, channels, channels * 2, channels * 3


class ColorizeUNet(nn.Module):
    """Colorizer. Widths channels/2, channels, 2x, 3x at full, 1/2, 1/4, 1/8 resolution.

    forward(l): (N, 1, H, W) CIELAB L / 100 in [0, 1], H and W multiples of 8 ->
    (N, Q, H, W) logits over the chroma bins `ab_bins` (Q, 2).
    `colorize(rgb)`: (N, 3, H, W) sRGB in [0, 1] -> (N, 3, H, W) sRGB in [0, 1], same L.
    `centres` (bins of a state dict) overrides the ones computed from `grid`.
    """

    ab_bins: Tensor

    def __init__(self, channels: int = 32, grid: int = 10, centres: Tensor | None = None) -> None:
        super().__init__()
        if channels < 4 or channels % 2:
            raise ValueError("channels must be even and at least 4")
        bins = ab_bin_centres(grid) if centres is None else centres.detach().float().clone()
        if bins.dim() != 2 or bins.shape[1] != 2 or bins.shape[0] < 2:
            raise ValueError(f"bin centres must be (Q, 2), got {tuple(bins.shape)}")
        self.register_buffer("ab_bins", bins)
        self.channels, self.grid = channels, grid
        c0, c1, c2, c3 = _widths(channels)
        self.head = nn.Conv2d(1, c0, 3, padding=1)
        self.enc0 = _Residual(c0)
        self.down1 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.enc1 = _Residual(c1)
        self.down2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.enc2 = _Residual(c2)
        self.down3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)
        # Dilations widen the context where it is cheap (1/64 of the pixels).
        self.mid = nn.Sequential(_Residual(c3, 1), _Residual(c3, 2), _Residual(c3, 4))
        self.up2 = nn.Conv2d(c3, c2, 1)
        self.fuse2 = nn.Conv2d(2 * c2, c2, 3, padding=1)
        self.dec2 = _Residual(c2)
        self.up1 = nn.Conv2d(c2, c1, 1)
        self.fuse1 = nn.Conv2d(2 * c1, c1, 3, padding=1)
        self.dec1 = _Residual(c1)
        self.up0 = nn.Conv2d(c1, c0, 1)
        self.fuse0 = nn.Conv2d(2 * c0, c0, 3, padding=1)
        self.dec0 = _Residual(c0)
        # 1x1: each pixel's logits depend only on its own features, so decoding can go in strips.
        self.tail = nn.Conv2d(c0, bins.shape[0], 1)

    @property
    def hyperparameters(self) -> dict[str, int]:
        return {"channels": self.channels, "grid": self.grid}

    @property
    def bins(self) -> int:
        return int(self.ab_bins.shape[0])

    def features(self, lightness: Tensor) -> Tensor:
        """(N, 1, H, W) L / 100 -> (N, channels/2, H, W) full-resolution features."""
        h, w = lightness.shape[-2:]
        if h % MULTIPLE_OF or w % MULTIPLE_OF:
            raise ValueError(f"input sides must be multiples of {MULTIPLE_OF}, got {h}x{w}")
        f0 = self.enc0(torch.relu(self.head(lightness - 0.5)))
        f1 = self.enc1(torch.relu(self.down1(f0)))
        f2 = self.enc2(torch.relu(self.down2(f1)))
        f3 = self.mid(torch.relu(self.down3(f2)))
        d2 = self.dec2(torch.relu(self.fuse2(torch.cat([self.up2(_up(f3)), f2], dim=1))))
        d1 = self.dec1(torch.relu(self.fuse1(torch.cat([self.up1(_up(d2)), f1], dim=1))))
        return self.dec0(torch.relu(self.fuse0(torch.cat([self.up0(_up(d1)), f0], dim=1))))

    def forward(self, lightness: Tensor) -> Tensor:
        return self.tail(self.features(lightness))

    def decode(self, logits: Tensor, temperature: float = DEFAULT_TEMPERATURE) -> Tensor:
        """Logits (N, Q, H, W) -> a*b* (N, 2, H, W), annealed mean over this net's bins."""
        return decode(logits, self.ab_bins, temperature)

    def colorize(
        self, rgb: Tensor, temperature: float = DEFAULT_TEMPERATURE, budget: int = 1 << 23
    ) -> Tensor:
        """(N, 3, H, W) sRGB in [0, 1] (grey or not) -> (N, 3, H, W) sRGB in [0, 1] with the
        input's CIELAB L and predicted a*b*. H, W multiples of 8.

        Logits are made and decoded in strips of rows holding about `budget` values, so a
        1024 px view never holds its full (Q, H, W) logits (a Gigabyte) at once.
        """
        lightness = rgb_to_lab(rgb.float())[:, :1]
        feats = self.features(lightness / 100.0)
        n, _, h, w = feats.shape
        rows = max(1, budget // max(1, n * self.bins * w))
        ab = torch.cat(
            [
                self.decode(self.tail(feats[:, :, r : r + rows]), temperature)
                for r in range(0, h, rows)
            ],
            dim=2,
        )
        return lab_to_rgb_in_gamut(torch.cat([lightness, ab], dim=1))


def detect(state_dict: Mapping[str, Tensor]) -> bool:
    """Cheap check that a state dict belongs to this architecture."""
    needed = ("ab_bins", "head.weight", "down3.weight", "tail.weight")
    if any(k not in state_dict for k in needed):
        return False
    bins, head, tail = state_dict["ab_bins"], state_dict["head.weight"], state_dict["tail.weight"]
    return (
        bins.dim() == 2
        and bins.shape[1] == 2
        and head.dim() == 4
        and head.shape[1] == 1
        and tail.dim() == 4
        and tail.shape[0] == bins.shape[0]
    )


def _grid_of(bins: Tensor) -> int:
    a = torch.unique(bins[:, 0].double())
    return int(round(float((a[1:] - a[:-1]).min()))) if a.numel() > 1 else 0


def hyperparameters_from_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, int]:
    """Constructor arguments read from tensor shapes (and the bins' spacing)."""
    return {
        "channels": int(state_dict["enc1.conv1.weight"].shape[0]),
        "grid": _grid_of(state_dict["ab_bins"]),
    }


def load(state_dict: Mapping[str, Tensor]) -> ColorizeUNet:
    """Build the net from a state dict (strict: every tensor must match), with its own bins."""
    hp = hyperparameters_from_state_dict(state_dict)
    model = ColorizeUNet(**hp, centres=state_dict["ab_bins"])
    model.load_state_dict(dict(state_dict), strict=True)
    return model
