"""Transition rules: what happens to the latent when tokens are promoted to a finer level.

One switch, many rules. Each rule takes a :class:`Transition` (the state after the last step, its velocity, the
promoted tokens) and returns the latent in the new layout together with the sigma it now sits at. In rectified flow a
state at sigma is ``x = (1 - sigma) * x0 + sigma * eps``; every rule here returns such a state, and the test-suite
checks that identity on synthetic latents whose ``x0`` and ``eps`` are known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import torch
import torch.nn.functional as F

from .layout import TokenGeometry, TokenLayout, pack, unpack
from .noise import FreshNoise, NoiseField
from .registry import register_strategy

__all__ = ["Transition", "TransitionRule", "expand_tokens", "bilinear_children", "FrescoRule", "FreshNoiseRule",
           "RaluRule", "DctRewindRule"]


@dataclass(frozen=True)
class Transition:
    latents: torch.Tensor  # (B, N, D) state at `sigma`, old layout
    velocity: torch.Tensor  # (B, N, D) the last model velocity, old layout
    sigma: torch.Tensor  # 0-dim float32: where `latents` sits
    restart_sigma: torch.Tensor  # 0-dim float32: where the plan wants the next step to start
    layout: TokenLayout
    promote: torch.Tensor  # (B, N) bool
    geometry: TokenGeometry
    field: NoiseField
    fresh: FreshNoise | None
    expansion: str
    # what the caller knows on the host, so that the transition reads nothing back from the device: how many tokens
    # each image promotes, and a set holding every level the new layout's tokens can have
    promote_count: int | None = None
    levels: tuple[int, ...] | None = None


class TransitionRule(Protocol):
    def __call__(self, transition: Transition) -> tuple[torch.Tensor, TokenLayout, torch.Tensor]:
        """Returns (latents in the new layout, the new layout, the sigma those latents sit at)."""


# ---------------------------------------------------------------------------------------------------- expansion
def _blocks(tokens: torch.Tensor, geometry: TokenGeometry) -> torch.Tensor:
    b, k, _ = tokens.shape
    return tokens.view(b, k, geometry.channels, geometry.patch, geometry.patch)


def _children_from_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """``(B, k, C, 2p, 2p)`` -> ``(B, 4k, C*p*p)``, children ordered (0,0), (0,1), (1,0), (1,1) per parent."""
    b, k, c, two_p, _ = blocks.shape
    p = two_p // 2
    children = blocks.view(b, k, c, 2, p, 2, p).permute(0, 1, 3, 5, 2, 4, 6)
    return children.reshape(b, 4 * k, c * p * p)


@lru_cache(maxsize=8)
def _dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix (rows are frequencies)."""
    i = torch.arange(n, dtype=torch.float64)
    m = torch.cos(math.pi * (2 * i.unsqueeze(0) + 1) * i.unsqueeze(1) / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.float()


def _dct_upsample_blocks(blocks: torch.Tensor, high_band: torch.Tensor | None, gain: float) -> torch.Tensor:
    """Embed each block's orthonormal DCT in the low corner of a block twice as large, then invert.

    ``gain`` 2 keeps the signal's amplitude; ``high_band`` (same shape as the output) fills the other coefficients.
    """
    p = blocks.shape[-1]
    small, large = _dct_matrix(p).to(blocks.device), _dct_matrix(2 * p).to(blocks.device)
    coefficients = small @ blocks.float() @ small.T
    embedded = torch.zeros(*blocks.shape[:-2], 2 * p, 2 * p, device=blocks.device)
    if high_band is not None:
        embedded = large @ high_band.float() @ large.T
    embedded[..., :p, :p] = gain * coefficients
    return large.T @ embedded @ large


def expand_tokens(tokens: torch.Tensor, geometry: TokenGeometry, mode: str) -> torch.Tensor:
    """Signal expansion of ``(B, k, D)`` parents into ``(B, 4k, D)`` children (nearest or DCT interpolation)."""
    blocks = _blocks(tokens, geometry)
    if mode == "dct":
        up = _dct_upsample_blocks(blocks, None, 2.0).to(tokens.dtype)
    else:
        up = blocks.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
    return _children_from_blocks(up)


def _clean_picture(x0: torch.Tensor, layout: TokenLayout, geometry: TokenGeometry, level: int) -> torch.Tensor:
    """``(B * frames, C, H, W)``: the clean latent of every token painted at ``level``'s latent-pixel resolution.

    Coarser tokens are copied into the pixels they cover, finer ones averaged over them; padded grids are kept whole.
    """
    b, _, d = x0.shape
    frames, c, p = geometry.num_frames, geometry.channels, geometry.patch
    # full-resolution token rows and cols the layout covers (a padded grid's children reach past the real one),
    # rounded up to whole tokens at ``level``
    factor = 1 << level
    rows = -(-max(geometry.rows, int(((layout.row + 1) << layout.level).max())) // factor) * factor
    cols = -(-max(geometry.cols, int(((layout.col + 1) << layout.level).max())) // factor) * factor
    full = torch.zeros(b, c, frames, rows * p, cols * p, device=x0.device)
    images = torch.arange(b, device=x0.device)[:, None].expand_as(layout.level)
    for token_level in range(layout.coarsest_level + 1):
        at = layout.level == token_level
        if not bool(at.any()):
            continue
        grid_rows, grid_cols = rows >> token_level, cols >> token_level
        grid = torch.zeros(b, frames * grid_rows * grid_cols, d, device=x0.device)
        place = (layout.frame * grid_rows + layout.row) * grid_cols + layout.col
        grid[images[at], place[at]] = x0[at]
        painted = unpack(grid, grid_rows, grid_cols, p, frames=frames)
        full += painted.repeat_interleave(1 << token_level, -1).repeat_interleave(1 << token_level, -2)
    full = full.transpose(1, 2).reshape(b * frames, c, *full.shape[-2:])
    return F.avg_pool2d(full, factor) if level else full


def bilinear_children(x0: torch.Tensor, layout: TokenLayout, children: TokenLayout,
                      geometry: TokenGeometry) -> torch.Tensor:
    """The children's clean latent from a bilinear upsampling of the whole clean picture at their parents' level.

    Each 2x2 group of children still averages to its parent (the Haar low band is the parent's, as with ``hadamard``);
    only the detail inside the group now follows the neighbours instead of a flat copy.
    """
    b, frames, p = x0.shape[0], geometry.num_frames, geometry.patch
    if children.num_tokens == 0:  # a stage whose round already promoted every token
        return x0.new_zeros(b, 0, x0.shape[-1])
    level = int(children.level.max()) + 1
    coarse = _clean_picture(x0, layout, geometry, level)
    smooth = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
    detail = smooth - F.avg_pool2d(smooth, 2).repeat_interleave(2, -1).repeat_interleave(2, -2)
    fine = coarse.repeat_interleave(2, -1).repeat_interleave(2, -2) + detail
    rows, cols = fine.shape[-2] // p, fine.shape[-1] // p
    tokens = pack(fine.view(b, frames, *fine.shape[1:]).transpose(1, 2), p)
    place = (children.frame * rows + children.row) * cols + children.col
    return tokens.gather(1, place.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


# ---------------------------------------------------------------------------------------------------- shared parts
@dataclass(frozen=True)
class _Split:
    layout: TokenLayout  # the new layout: kept tokens first, then four children per promoted token
    parent_layout: TokenLayout
    kept: torch.Tensor  # (B, n_kept, D) state of the tokens that stay
    kept_velocity: torch.Tensor  # (B, n_kept, D)
    parents: torch.Tensor  # (B, k, D) state of the promoted tokens
    parents_velocity: torch.Tensor  # (B, k, D)
    parents_x0: torch.Tensor  # (B, k, D) their predicted clean latent x0 = x - sigma * v

    @property
    def num_kept(self) -> int:
        return self.kept.shape[1]


def _split(t: Transition) -> _Split:
    layout, kept_index, promoted_index = t.layout.promote(t.promote, t.promote_count)
    d = t.latents.shape[-1]
    gather = lambda x, idx: x.float().gather(1, idx.unsqueeze(-1).expand(-1, -1, d))  # noqa: E731
    parents = gather(t.latents, promoted_index)
    parents_velocity = gather(t.velocity, promoted_index)
    return _Split(layout, t.layout.gather(promoted_index), gather(t.latents, kept_index),
                  gather(t.velocity, kept_index), parents, parents_velocity, parents - t.sigma * parents_velocity)


def _renoise_kept(kept: torch.Tensor, velocity_kept: torch.Tensor, sigma: torch.Tensor,
                  target: torch.Tensor, noise: torch.Tensor, independent: bool) -> torch.Tensor:
    """Move kept tokens from ``sigma`` to ``target`` without touching their trajectory more than needed.

    Upward, the signal is scaled by ``(1 - target) / (1 - sigma)`` and noise is added: along the token's own field
    noise (amplitudes add), or independent fresh noise (variances add). Equal sigmas leave the tokens as they are.
    """
    # all three computed and one selected on the device: comparing the sigmas on the host would wait for the device
    backward = kept + (target - sigma) * velocity_kept  # an Euler step along the token's own velocity
    scale = (1.0 - target) / (1.0 - sigma)
    extra = torch.sqrt((target**2 - (scale * sigma) ** 2).clamp(min=0)) if independent else target - scale * sigma
    return torch.where(target == sigma, kept, torch.where(target < sigma, backward, scale * kept + extra * noise))


# ---------------------------------------------------------------------------------------------------- the rules
class FrescoRule:
    """Fresco: x0 from the velocity, Hadamard 1->4 expansion, re-noise with the coordinate-bound field.

    Promoted tokens restart at ``restart_sigma`` as ``(1 - s') * Up(x0) + s' * field(children)``. With the Haar-pooled
    field this equals the orthonormal Hadamard transform of (the parent re-noised with its own field value, three
    detail bands of the field): the children's noise is white, unit-variance and is the field at their own
    coordinates, so nothing fresh enters the trajectory. ``expansion="nearest"`` instead copies the re-noised parent
    into its children (their noise is then correlated: the paper's interpolation ablation); ``"dct"`` interpolates the
    signal with a block DCT and keeps the field noise; ``"bilinear"`` interpolates it across token borders
    (:func:`bilinear_children`) and keeps the field noise. Kept tokens move to ``s'`` along their own field noise.

    ``renoise="trajectory"`` moves every token back along the straight line its last velocity draws instead:
    ``(1 - s') * x0 + s' * eps_hat`` with the predicted noise ``eps_hat = x + (1 - sigma) * v`` (for kept tokens,
    an Euler step backwards), and the children's noise is the field's with its Haar low band replaced by the parent's
    ``eps_hat``; the detail bands stay the field's. On an exactly straight path the two agree.
    """

    independent_noise = False
    needs_fresh_noise = False  # read off the registered factory: the runner then supplies a FreshNoise source

    def __init__(self, renoise: str = "field"):
        if renoise not in ("field", "trajectory"):
            raise ValueError(f"fresco renoise={renoise!r}: use 'field' (the coordinate-bound noise) or 'trajectory' "
                             "(back along each token's own velocity)")
        self.renoise = renoise

    def noise(self, t: Transition, layout: TokenLayout) -> torch.Tensor:
        return t.field.tokens(layout, t.geometry, t.levels).float()

    def __call__(self, t: Transition) -> tuple[torch.Tensor, TokenLayout, torch.Tensor]:
        s = _split(t)
        target = t.restart_sigma
        noise = self.noise(t, s.layout)
        parent_noise = None
        if self.renoise == "trajectory":
            kept = s.kept + (target - t.sigma) * s.kept_velocity
            parent_noise = s.parents + (1.0 - t.sigma) * s.parents_velocity
            # 2x2 copies of half the change move each group's Haar low band (sum / 2) by exactly the change
            shift = (parent_noise - self.noise(t, s.parent_layout)) / 2.0
            noise = torch.cat([noise[:, : s.num_kept],
                               noise[:, s.num_kept :] + expand_tokens(shift, t.geometry, "nearest")], dim=1)
        else:
            kept = _renoise_kept(s.kept, s.kept_velocity, t.sigma, target, noise[:, : s.num_kept],
                                 self.independent_noise)
        if t.expansion == "nearest":
            if parent_noise is None:
                parent_noise = self.noise(t, s.parent_layout)
            renoised_parents = (1.0 - target) * s.parents_x0 + target * parent_noise
            children = expand_tokens(renoised_parents, t.geometry, "nearest")
        else:
            if t.expansion == "bilinear":
                new = torch.arange(s.num_kept, s.layout.num_tokens, device=t.latents.device)
                x0 = t.latents.float() - t.sigma * t.velocity.float()
                signal = bilinear_children(x0, t.layout, s.layout.gather(new.expand(t.latents.shape[0], -1)),
                                           t.geometry)
            else:
                signal = expand_tokens(s.parents_x0, t.geometry, t.expansion)
            children = (1.0 - target) * signal + target * noise[:, s.num_kept :]
        latents = torch.cat([kept, children], dim=1).to(t.latents.dtype)
        return latents, s.layout, target


class FreshNoiseRule(FrescoRule):
    """Bottleneck-style: the same stage plan and expansion, but independent fresh noise at every switch."""

    independent_noise = True
    needs_fresh_noise = True

    def __init__(self):  # no renoise choice: its noise is fresh by definition
        super().__init__()

    def noise(self, t: Transition, layout: TokenLayout) -> torch.Tensor:
        if t.fresh is None:
            raise ValueError("the fresh-noise strategy needs a FreshNoise source")
        d = t.latents.shape[-1]
        return t.fresh.sample((layout.num_tokens, d), dtype=torch.float32, device=t.latents.device)


class RaluRule:
    """RALU's noise-timestep rule: ``x <- beta * Up_nearest(x) + alpha * n'`` with 2x2-correlated ``n'``.

    With ``e = 1 - sigma``: ``beta = 1 / (Z (1 - e) + e)``, the new signal level is ``beta * e`` and ``alpha`` is the
    new sigma; ``n'`` has covariance ``I - 11^T / Z^2`` over each 2x2 group of copied latent pixels, which cancels
    the correlation the copy introduces. ``noise_ratio`` is Z (RALU fits about 6.3; Pyramid Flow's gamma = 1/3 is
    Z = 2).
    """

    needs_fresh_noise = True

    def __init__(self, noise_ratio: float = 2.0):
        if isinstance(noise_ratio, bool) or not isinstance(noise_ratio, (int, float)) or \
                not 2.0 <= noise_ratio < math.inf:
            raise ValueError(f"ralu noise_ratio={noise_ratio!r}: the correlated noise needs a finite Z >= 2")
        self.z = noise_ratio

    def __call__(self, t: Transition) -> tuple[torch.Tensor, TokenLayout, torch.Tensor]:
        if t.fresh is None:
            raise ValueError("the ralu strategy needs a FreshNoise source")
        s = _split(t)
        e = 1.0 - t.sigma
        beta = 1.0 / (self.z * (1.0 - e) + e)
        target = 1.0 - beta * e
        b, k, _ = s.parents.shape
        g = t.geometry
        white = t.fresh.sample((k, g.channels, 2 * g.patch, 2 * g.patch), dtype=torch.float32,
                               device=t.latents.device)
        groups = white.view(b, k, g.channels, g.patch, 2, g.patch, 2)
        pull = (1.0 - math.sqrt(1.0 - 4.0 / self.z**2)) / 4.0  # (I - pull 11^T)^2 = I - 11^T / Z^2
        correlated = (groups - pull * groups.sum(dim=(4, 6), keepdim=True)).view_as(white)
        copied = _blocks(s.parents, g).repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
        children = _children_from_blocks(beta * copied + target * correlated)
        kept_noise = t.fresh.sample((s.num_kept, s.kept.shape[-1]), dtype=torch.float32, device=t.latents.device)
        kept = _renoise_kept(s.kept, s.kept_velocity, t.sigma, target, kept_noise, independent=True)
        return torch.cat([kept, children], dim=1).to(t.latents.dtype), s.layout, target


class DctRewindRule:
    """SGLang's DCT rewind: DCT-upsample ``x_t`` with noise-filled high bands, scale by ``2 / (1 + sigma)``.

    The orthonormal embedding halves the signal while the noise keeps variance ``sigma^2``, so the result is an exact
    state at ``2 sigma / (1 + sigma)``; kept tokens are re-noised to that sigma with independent noise. Applied per
    promoted token block (SGLang applies it to the whole latent at once).
    """

    needs_fresh_noise = True

    def __call__(self, t: Transition) -> tuple[torch.Tensor, TokenLayout, torch.Tensor]:
        if t.fresh is None:
            raise ValueError("the dct-rewind strategy needs a FreshNoise source")
        s = _split(t)
        g = t.geometry
        b, k, _ = s.parents.shape
        sigma = t.sigma
        target = 2.0 * sigma / (1.0 + sigma)
        high = sigma * t.fresh.sample((k, g.channels, 2 * g.patch, 2 * g.patch), dtype=torch.float32,
                                      device=t.latents.device)
        up = _dct_upsample_blocks(_blocks(s.parents, g), high, 1.0) * (2.0 / (1.0 + sigma))
        children = _children_from_blocks(up)
        kept_noise = t.fresh.sample((s.num_kept, s.kept.shape[-1]), dtype=torch.float32, device=t.latents.device)
        kept = _renoise_kept(s.kept, s.kept_velocity, sigma, target, kept_noise, independent=True)
        return torch.cat([kept, children], dim=1).to(t.latents.dtype), s.layout, target


register_strategy("fresco", FrescoRule)
register_strategy("fresh-noise", FreshNoiseRule)
register_strategy("ralu", RaluRule)
register_strategy("dct-rewind", DctRewindRule)
