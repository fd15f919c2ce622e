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

from fresco_plugin.config import FrescoConfig
from fresco_plugin.layout import TokenGeometry, pack, unpack
from fresco_plugin.sampler import Step

from ._diffusers_runner import DiffusersFrescoRunner, TransformerDenoiser

__all__ = ["RopeAtPositions", "StripDenoiser", "VideoFrescoRunner"]

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


class VideoFrescoRunner(DiffusersFrescoRunner):
    """A runner for a video pipeline whose transformer takes ``(B, C, F, H, W)`` latents and has a ``rope`` module.

    Subclasses set ``rope_fn`` (the model's rotary embedding at arbitrary positions) and the stock decode.
    """

    rope_fn: staticmethod

    def __init__(self, pipe: Any, config: FrescoConfig):
        super().__init__(pipe, config)
        self.rope_hook = RopeAtPositions(type(self).rope_fn)
        HookRegistry.check_if_exists_or_initialize(pipe.transformer.rope).register_hook(self.rope_hook, _ROPE_HOOK)

    def close(self) -> None:
        HookRegistry.check_if_exists_or_initialize(self.pipe.transformer.rope).remove_hook(_ROPE_HOOK)
        super().close()

    def video_geometry(self, height: int, width: int, num_frames: int, patch: int) -> TokenGeometry:
        pipe = self.pipe
        spatial, temporal = pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal
        name = type(pipe).__name__.removesuffix("Pipeline")
        if int(height) % (spatial * patch) or int(width) % (spatial * patch):
            raise ValueError(f"height={height}, width={width}: {name} needs multiples of {spatial * patch} "
                             f"({spatial}x VAE, {patch}x{patch} patches)")
        if (num_frames - 1) % temporal:
            raise ValueError(f"num_frames={num_frames}: {name} needs {temporal}k + 1 frames")
        return TokenGeometry(pipe.transformer.config.in_channels, patch, int(height) // spatial // patch,
                             int(width) // spatial // patch, frames=(num_frames - 1) // temporal + 1)

    def video_noise(self, a: dict[str, Any], videos: int, geometry: TokenGeometry, height: int, width: int,
                    num_frames: int, device: torch.device) -> tuple[Any, Any]:
        """The noise field from the stock pipeline's float32 5-D initial latents (or the user's, or the hash)."""
        pipe = self.pipe
        channels = pipe.transformer.config.in_channels
        return self.noise(
            a, videos, geometry,
            (videos, channels, geometry.num_frames, geometry.rows * geometry.patch, geometry.cols * geometry.patch),
            lambda: pipe.prepare_latents(videos, channels, height, width, num_frames, torch.float32, device,
                                         a["generator"]),
            torch.float32, device,
        )

    def finish(self, latents: torch.Tensor, geometry: TokenGeometry, a: dict[str, Any],
               decode: Callable[[torch.Tensor], torch.Tensor], output: type) -> Any:
        """Full-resolution tokens -> the stock call's return value (latents, or the decoded video)."""
        latents = unpack(latents, geometry.rows, geometry.cols, geometry.patch, frames=geometry.num_frames)
        if a["output_type"] == "latent":
            video = latents
        else:
            video = self.pipe.video_processor.postprocess_video(decode(latents), output_type=a["output_type"])
        self.pipe.maybe_free_model_hooks()
        return (video,) if not a["return_dict"] else output(frames=video)


class StripDenoiser(TransformerDenoiser):
    """Grid for whole raster-ordered grids (the stock path), strip plus rope-at-positions otherwise.

    Subclasses implement ``call_transformer(hidden, text, step, rows)`` on 5-D latents.
    """

    rope_hook: RopeAtPositions
    patch: int
    _grid_cache: tuple[torch.Tensor, tuple[int, int, int] | None] | None = None
    padded_tokens = 0  # pad tokens at the end of this forward's strip, which call_transformer must mask out

    def forward(self, text: dict[str, Any], latents: torch.Tensor, positions: torch.Tensor, step: Step,
                rows: slice) -> torch.Tensor:
        tokens = latents.shape[1]
        pad = -tokens % self.pad_multiple
        grid = None if pad else self._grid(positions)
        if grid is not None:
            frames, height, width = grid
            hidden = unpack(latents, height, width, self.patch, frames=frames)
        else:
            if pad:  # an uneven stage under context parallelism: a strip with pad tokens, dropped from the output
                latents = torch.cat([latents, latents.new_zeros(latents.shape[0], pad, latents.shape[2])], dim=1)
                positions = torch.cat([positions, positions[:1].expand(pad, -1)])
            hidden = unpack(latents, 1, latents.shape[1], self.patch, frames=1)  # a one-row strip of tokens
            self.rope_hook.positions = positions
        self.padded_tokens = pad
        try:
            output = self.call_transformer(hidden, text, step, rows)
        finally:
            self.rope_hook.positions = None
            self.padded_tokens = 0
        return pack(output, self.patch)[:, :tokens]

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
