"""The coordinate-bound noise field.

Every Fresco noise value is a pure function of (image seed, full-resolution latent coordinate, channel), so a token
sees the same noise at every scale and at every switch. The field is stored once per generation at full resolution
(``(batch, channels, rows, cols)`` latent pixels); coarser levels are its orthonormal Haar low-pass
(``sum of the 2x2 children / 2``), which keeps unit variance, stays white, and nests exactly: level ``l + 1`` is the
pooling of level ``l``. A token promoted to a finer level therefore finds, at its children's coordinates, noise whose
pooling is exactly the noise it carried before.

Two sources fill the full-resolution field:
- ``"generator"``: the pipeline's own initial noise (what the stock pipeline would draw from the user's generator, or
  the user's ``latents=``). Fresco then starts from the same noise as the stock pipeline with the same seed.
- ``"hash"``: a counter-based hash (SplitMix64 + Box-Muller, float64 math, then cast) of (seed, coordinate, channel),
  computed on the CPU: identical on every device and for any batch layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .layout import TokenGeometry, TokenLayout, pack

__all__ = ["NoiseField", "FreshNoise", "hash_normal", "seeds_from_generators"]

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """A 64-bit constant as the signed int64 torch stores."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GAMMA = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_SECOND_DRAW = _signed(0xD1B54A32D192ED03)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    # torch's >> on int64 is arithmetic; SplitMix64 needs the logical shift.
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    z = x + _GAMMA
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def hash_normal(seed: int, *coordinates: torch.Tensor) -> torch.Tensor:
    """Standard normal values, one per broadcast coordinate tuple, as float64 on the CPU.

    The value depends only on ``seed`` and the integer coordinates, so any subset or reordering of coordinates
    reproduces the same values.
    """
    key = _splitmix64(torch.tensor(_signed(seed), dtype=torch.int64))
    for coordinate in coordinates:
        key = _splitmix64(key ^ coordinate.to(torch.int64))
    first = _splitmix64(key)
    second = _splitmix64(key ^ _SECOND_DRAW)
    scale = 2.0**-53
    u1 = (_shift_right(first, 11).to(torch.float64) + 1.0) * scale  # (0, 1]: log never sees 0
    u2 = _shift_right(second, 11).to(torch.float64) * scale
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


def seeds_from_generators(
    generator: torch.Generator | Sequence[torch.Generator] | None, batch_size: int
) -> list[int]:
    """One 62-bit seed per image, drawn from the user's generator(s) (one per image when a list is given)."""
    if isinstance(generator, Sequence):
        if len(generator) != batch_size:
            raise ValueError(
                f"got {len(generator)} generators for a batch of {batch_size} images; pass one generator per image "
                "(prompts x num_images_per_prompt) or a single generator"
            )
        return [_draw_seed(g) for g in generator]
    return [_draw_seed(generator) for _ in range(batch_size)]


def _draw_seed(generator: torch.Generator | None) -> int:
    device = generator.device if generator is not None else torch.device("cpu")
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())


class NoiseField:
    """Full-resolution noise plus its Haar-pooled coarser levels, in latent-pixel layout ``(B, C, [F,] H, W)``.

    Pooling is spatial only (2x2 per frame). The full-resolution tensor may be larger than the generation's grid
    (padded so that every coarse level is whole); tokens read it by their own coordinates either way. ``gain`` scales
    each 2x2 mean: 2 is the orthonormal Haar low-pass, which keeps noise at unit variance; 1 is the plain mean, what a
    clean latent (an image to edit) is worth at a coarse token.
    """

    def __init__(self, full_resolution: torch.Tensor, gain: float = 2.0):
        if full_resolution.ndim not in (4, 5):
            raise ValueError(
                f"the noise field is (batch, channels, [frames,] rows, cols); got shape {tuple(full_resolution.shape)}"
            )
        self._levels = [full_resolution]
        self.gain = gain

    @classmethod
    def from_hash(
        cls,
        seeds: Sequence[int],
        channels: int,
        rows: int,
        cols: int,
        *,
        frames: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> NoiseField:
        """The hash field over latent pixels ``rows x cols`` (and ``frames``, for video)."""
        channel = torch.arange(channels).view(channels, 1, 1, 1)
        frame = torch.arange(frames or 1).view(1, -1, 1, 1)
        row = torch.arange(rows).view(1, 1, rows, 1)
        col = torch.arange(cols).view(1, 1, 1, cols)
        images = torch.stack([hash_normal(seed, frame, row, col, channel) for seed in seeds])
        if frames is None:
            images = images.squeeze(2)
        return cls(images.to(device=device, dtype=dtype))

    @classmethod
    def padded(cls, noise: torch.Tensor, rows: int, cols: int, seeds: Sequence[int]) -> NoiseField:
        """The field of ``noise`` (the pipeline's own), extended to ``rows x cols`` latent pixels with hash noise."""
        height, width = noise.shape[-2:]
        if (height, width) == (rows, cols):
            return cls(noise)
        frames = noise.shape[2] if noise.ndim == 5 else None
        extended = cls.from_hash(seeds, noise.shape[1], rows, cols, frames=frames, dtype=noise.dtype,
                                 device=noise.device)._levels[0].clone()
        extended[..., :height, :width] = noise
        return cls(extended)

    def level(self, level: int) -> torch.Tensor:
        """The field at ``level`` (0 = full resolution), each step coarser the 2x2 mean times ``gain``."""
        while len(self._levels) <= level:
            finer = self._levels[-1]
            if finer.shape[-2] % 2 or finer.shape[-1] % 2:
                raise ValueError(f"a {tuple(finer.shape[-2:])} latent grid cannot be pooled to level {level}")
            work = torch.promote_types(finer.dtype, torch.float32)  # pool low-precision fields in fp32
            pool = F.avg_pool3d(finer.to(work), (1, 2, 2)) if finer.ndim == 5 else F.avg_pool2d(finer.to(work), 2)
            self._levels.append((pool * self.gain).to(finer.dtype))
        return self._levels[level]

    def tokens(self, layout: TokenLayout, geometry: TokenGeometry, levels: Sequence[int] | None = None) -> torch.Tensor:
        """The field at every token of ``layout``, packed ``(B, N, D)``: each token reads its own coordinates.

        ``levels``, any set holding every token's level, spares reading the layout's levels back from the device.
        """
        base = self._levels[0]
        out = base.new_zeros(*layout.level.shape, geometry.token_dim)  # stays empty for a layout without tokens
        for index, level in enumerate(layout.level.unique().tolist() if levels is None else sorted(set(levels))):
            values = self.level(level)
            rows, cols = values.shape[-2] // geometry.patch, values.shape[-1] // geometry.patch
            packed = pack(values, geometry.patch)
            here = layout.level == level
            flat = torch.where(here, (layout.frame * rows + layout.row) * cols + layout.col, 0)
            gathered = packed.gather(1, flat.unsqueeze(-1).expand(-1, -1, packed.shape[-1]))
            out = gathered if index == 0 else torch.where(here.unsqueeze(-1), gathered, out)
        return out

    def select(self, indices: Sequence[int]) -> NoiseField:
        """The field of a sub-batch (used when images are sampled one by one)."""
        return NoiseField(self._levels[0][list(indices)], self.gain)


class FreshNoise:
    """Independent noise for the comparison rules (Bottleneck-style fresh noise, RALU, DCT rewind).

    One CPU generator per image, seeded from the image seed, so an image's draws do not depend on its batch
    neighbours.
    """

    def __init__(self, seeds: Sequence[int]):
        self._generators = [torch.Generator().manual_seed(seed ^ 0x5DEECE66D) for seed in seeds]

    def sample(self, shape: Sequence[int], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``len(seeds)`` independent standard normal tensors of ``shape``, stacked on dim 0."""
        draws = [torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in self._generators]
        return torch.stack(draws).to(device=device, dtype=dtype)

    def select(self, indices: Sequence[int]) -> FreshNoise:
        subset = FreshNoise([])
        subset._generators = [self._generators[i] for i in indices]
        return subset
