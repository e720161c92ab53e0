"""A Glow-like multi-scale flow for images (Kingma & Dhariwal 2018, sized for CPUs).

Per level: squeeze (C, H, W) -> (4C, H/2, W/2), then ``steps`` x [ActNorm,
invertible 1x1 convolution, affine coupling with a small CNN]; between levels half
the channels are factored out (RealNVP-style, standard-normal prior). The latent of
an image is the concatenation of everything factored out, one row of ``D = C H W``
values, so the matrix-normal dependence models apply to images unchanged (rows =
images, columns = latent dimensions).

:class:`GlowFlow` is a :class:`flowpheno.flows.LatentFlow`: ``flow(x)`` takes rows of
``D`` values in [0, 1] (dequantised pixels) and returns ``(z, log|det J|)``;
``inverse`` maps latents back to images; ``initialize`` sets ActNorm from data.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from flowpheno.flows.base import LatentFlow, seeded_init


def squeeze(x: Tensor) -> Tensor:
    """``(N, C, H, W) -> (N, 4C, H/2, W/2)``: each 2 x 2 patch becomes 4 channels."""
    n, c, h, w = x.shape
    x = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(n, c * 4, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    """The inverse of :func:`squeeze`: ``(N, 4C, H, W) -> (N, C, 2H, 2W)``."""
    n, c, h, w = x.shape
    x = x.view(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c // 4, h * 2, w * 2)


class ActNorm2d(nn.Module):
    """Per-channel affine map ``y = (x + b) exp(a)`` on ``(N, C, H, W)``, initialised so the first
    batch has zero mean, unit variance; log-det ``H W sum a`` per image."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        self.shift.copy_(-x.mean(dim=(0, 2, 3), keepdim=True))
        self.log_scale.copy_(-torch.log(x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = (x + self.shift) * torch.exp(self.log_scale)
        return y, self.log_scale.sum() * x.shape[2] * x.shape[3] * x.new_ones(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.shift


class InvertibleConv1x1(nn.Module):
    """A learned channel mixing ``y = W x`` per pixel (``W``: ``(C, C)``, a random orthogonal start
    from ``generator``); log-det ``H W log |det W|`` per image."""

    def __init__(self, channels: int, generator: torch.Generator) -> None:
        super().__init__()
        weight, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator))
        self.weight = nn.Parameter(weight)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = torch.einsum("ij,njhw->nihw", self.weight, x)
        log_det = torch.linalg.slogdet(self.weight)[1] * x.shape[2] * x.shape[3]
        return y, log_det * x.new_ones(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return torch.einsum("ij,njhw->nihw", torch.linalg.inv(self.weight), y)


class AffineCoupling2d(nn.Module):
    """Half the channels set a shift and a bounded scale (``e^-2`` to ``e^2``) for the other half through
    a small CNN (``hidden`` channels); zero-initialised output, so it starts as the identity."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.half = channels // 2
        self.net = nn.Sequential(
            nn.Conv2d(self.half, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.SiLU(),
            nn.Conv2d(hidden, 2 * (channels - self.half), 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _shift_scale(self, x_a: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = self.net(x_a).chunk(2, dim=1)
        log_scale = 2.0 * torch.tanh(raw / 2.0)  # scale in [e^-2, e^2]
        return shift, log_scale

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_a, x_b = x[:, : self.half], x[:, self.half :]
        shift, log_scale = self._shift_scale(x_a)
        y_b = (x_b + shift) * torch.exp(log_scale)
        return torch.cat([x_a, y_b], dim=1), log_scale.flatten(1).sum(dim=1)

    def inverse(self, y: Tensor) -> Tensor:
        y_a, y_b = y[:, : self.half], y[:, self.half :]
        shift, log_scale = self._shift_scale(y_a)
        return torch.cat([y_a, y_b * torch.exp(-log_scale) - shift], dim=1)


class GlowFlow(LatentFlow):
    """Multi-scale flow from image rows in ``[0, 1]^D`` to latent rows in ``R^D``, ``D = C H W``.

    Args:
        shape: ``(C, H, W)`` of one image; ``H`` and ``W`` divisible by ``2^levels``.
        levels: squeeze levels; half the channels are factored out between levels.
        steps: (ActNorm, 1x1 convolution, affine coupling) steps per level.
        hidden: channels of each coupling's CNN.
        seed: draws the 1x1 convolutions' orthogonal starts and the CNNs' initial weights
            (:func:`flowpheno.flows.base.seeded_init`: the global random state is neither used nor changed).

    Raises:
        ValueError: ``H`` or ``W`` is not divisible by ``2^levels``.
    """

    def __init__(
        self, shape: tuple[int, int, int], levels: int = 2, steps: int = 4, hidden: int = 64, seed: int = 0
    ) -> None:
        super().__init__()
        channels, height, width = shape
        if height % 2**levels or width % 2**levels:
            raise ValueError(f"image size {height}x{width} must be divisible by 2^levels = {2**levels}")
        self.config: dict[str, Any] = {
            "kind": "glow",
            "shape": list(shape),
            "levels": levels,
            "steps": steps,
            "hidden": hidden,
            "seed": seed,
        }
        self.shape = shape
        generator = torch.Generator().manual_seed(seed)
        self.levels = nn.ModuleList()
        c = channels
        with seeded_init(seed):
            for level in range(levels):
                c *= 4
                layers = nn.ModuleList()
                for _ in range(steps):
                    layers.extend([ActNorm2d(c), InvertibleConv1x1(c, generator), AffineCoupling2d(c, hidden)])
                self.levels.append(layers)
                if level < levels - 1:
                    c -= c // 2  # half factored out

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Latent rows ``(N, D)`` and ``log |det J|`` (``(N,)``, nats) for image rows ``x``: ``(N, D)`` in [0, 1]."""
        h = x.view(x.shape[0], *self.shape) - 0.5
        log_det = x.new_zeros(x.shape[0])
        factored = []
        for index, layers in enumerate(self.levels):
            h = squeeze(h)
            for layer in layers:
                h, step_log_det = layer(h)
                log_det = log_det + step_log_det
            if index < len(self.levels) - 1:
                out = h.shape[1] // 2
                factored.append(h[:, :out].flatten(1))
                h = h[:, out:]
        factored.append(h.flatten(1))
        return torch.cat(factored, dim=1), log_det

    def inverse(self, z: Tensor) -> Tensor:
        """Image rows ``(N, D)`` for latent rows ``z``: ``(N, D)``."""
        shapes = self._level_shapes()
        offsets, position = [], 0
        for _channels, hh, ww, out in shapes:
            size = out * hh * ww
            offsets.append((position, size))
            position += size
        h = None
        for index in reversed(range(len(self.levels))):
            _channels, hh, ww, out = shapes[index]
            start, size = offsets[index]
            part = z[:, start : start + size].view(z.shape[0], out, hh, ww)
            h = part if h is None else torch.cat([part, h], dim=1)
            for layer in reversed(self.levels[index]):
                h = layer.inverse(h)
            h = unsqueeze(h)
        assert h is not None
        return (h + 0.5).flatten(1)

    def _level_shapes(self) -> list[tuple[int, int, int, int]]:
        """Per level: (channels, height, width, channels written to the latent there)."""
        c, hh, ww = self.shape
        shapes = []
        for index in range(len(self.levels)):
            c, hh, ww = c * 4, hh // 2, ww // 2
            out = c // 2 if index < len(self.levels) - 1 else c
            shapes.append((c, hh, ww, out))
            c -= out if index < len(self.levels) - 1 else 0
        return shapes

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent ActNorm initialisation on (up to 512 of) the rows ``x``."""
        h = x[:512].view(-1, *self.shape) - 0.5
        for index, layers in enumerate(self.levels):
            h = squeeze(h)
            for layer in layers:
                if isinstance(layer, ActNorm2d):
                    layer.initialize(h)
                h, _ = layer(h)
            if index < len(self.levels) - 1:
                h = h[:, h.shape[1] // 2 :]


def bits_per_dim(nll_nats: float, dims: int) -> float:
    """Bits per dimension of 8-bit data from the NLL (nats per image) of pixels/256 + U(0, 1/256)."""
    return (nll_nats + dims * math.log(256)) / (dims * math.log(2))
