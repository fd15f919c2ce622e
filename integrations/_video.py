"""What the video adapters share: a rotary-embedding hook for arbitrary token positions, and a denoiser that sends
uniform stages to the transformer as a latent grid and mixed coarse/fine sets as a one-row strip of tokens.

A video transformer's patch embedding acts on each token alone, so a strip embeds every token exactly as the grid
would; only the rotary embedding depends on where tokens sit, and the hook supplies it for their real positions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from fresco_plugin.layout import pack, unpack
from fresco_plugin.sampler import Step

from ._diffusers_runner import TransformerDenoiser

__all__ = ["RopeAtPositions", "StripDenoiser", "install_rope_hook", "remove_rope_hook"]

_ROPE_HOOK = "fresco_rope_at_positions"
RopeFunction = Callable[[torch.nn.Module, torch.Tensor], Any]


class RopeAtPositions(ModelHook):
    """While ``positions`` is set, the rope module answers ``rope_fn(module, positions)`` instead of computing the
    embedding of its input's grid."""

    def __init__(self, rope_fn: RopeFunction) -> None:
        super().__init__()
        self.rope_fn = rope_fn
        self.positions: torch.Tensor | None = None

    def new_forward(self, module: torch.nn.Module, hidden_states: torch.Tensor) -> Any:
        if self.positions is None:
            return self.fn_ref.original_forward(hidden_states)
        return self.rope_fn(module, self.positions.to(hidden_states.device))


def install_rope_hook(transformer: torch.nn.Module, rope_fn: RopeFunction) -> RopeAtPositions:
    hook = RopeAtPositions(rope_fn)
    HookRegistry.check_if_exists_or_initialize(transformer.rope).register_hook(hook, _ROPE_HOOK)
    return hook


def remove_rope_hook(transformer: torch.nn.Module) -> None:
    HookRegistry.check_if_exists_or_initialize(transformer.rope).remove_hook(_ROPE_HOOK)


class StripDenoiser(TransformerDenoiser):
    """Grid for whole raster-ordered grids (the stock path), strip plus rope-at-positions otherwise.

    Subclasses implement ``call_transformer(hidden, text, step, rows)`` on 5-D latents.
    """

    rope_hook: RopeAtPositions
    patch: int
    _grid_cache: tuple[torch.Tensor, tuple[int, int, int] | None] | None = None

    def forward(self, text: dict[str, Any], latents: torch.Tensor, positions: torch.Tensor, step: Step,
                rows: slice) -> torch.Tensor:
        grid = self._grid(positions)
        if grid is not None:
            frames, height, width = grid
            hidden = unpack(latents, height, width, self.patch, frames=frames)
        else:
            hidden = unpack(latents, 1, latents.shape[1], self.patch, frames=1)  # a one-row strip of tokens
            self.rope_hook.positions = positions
        try:
            output = self.call_transformer(hidden, text, step, rows)
        finally:
            self.rope_hook.positions = None
        return pack(output, self.patch)

    def call_transformer(self, hidden: torch.Tensor, text: dict[str, Any], step: Step, rows: slice) -> torch.Tensor:
        raise NotImplementedError

    def _grid(self, positions: torch.Tensor) -> tuple[int, int, int] | None:
        """(frames, rows, cols) when ``positions`` is a whole integer grid in raster order, else None."""
        if self._grid_cache is not None and self._grid_cache[0] is positions:
            return self._grid_cache[1]
        frames, rows, cols = (int(v) for v in positions.amax(dim=0).long() + 1)
        grid = None
        if frames * rows * cols == positions.shape[0]:
            axes = [torch.arange(n, device=positions.device, dtype=positions.dtype) for n in (frames, rows, cols)]
            whole = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
            grid = (frames, rows, cols) if torch.equal(whole, positions) else None
        self._grid_cache = (positions, grid)
        return grid
