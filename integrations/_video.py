"""What the video adapters share: 3-D token grids whose positions the transformer builds from the 5-D latents' grid
(a :class:`~._positions.PositionHook` on its ``rope`` module), the stock float32 initial latents, and the decode."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fresco_plugin.layout import TokenGeometry, unpack
from fresco_plugin.noise import FreshNoise, NoiseField

from ._diffusers_runner import CallArguments
from ._positions import GridPositionsRunner

__all__ = ["VideoFrescoRunner"]


class VideoFrescoRunner(GridPositionsRunner):
    """A runner for a video pipeline whose transformer takes ``(B, C, F, H, W)`` latents and has a ``rope`` module.

    Subclasses set ``positions_at`` (the model's rotary embedding at arbitrary positions) and ``decode_latents`` (the
    stock VAE decode of unnormalised latents).
    """

    output_field: ClassVar[str] = "frames"
    per_prompt_argument: ClassVar[str] = "num_videos_per_prompt"

    def frame_size(self, call: CallArguments) -> tuple[int, int]:
        """The video's height and width in pixels (the call's; an image-to-video pipeline derives them)."""
        return call.height, call.width

    def geometry(self, call: CallArguments) -> TokenGeometry:
        pipe = self.pipe
        (height, width), num_frames = self.frame_size(call), call.num_frames
        patch = pipe.transformer.config.patch_size
        patch = patch[-1] if isinstance(patch, (tuple, list)) else patch
        spatial, temporal = pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal
        name = type(pipe).__name__.removesuffix("Pipeline")
        unit = spatial * patch
        if min(int(height), int(width)) < unit or int(height) % unit or int(width) % unit:
            raise ValueError(f"height={height}, width={width}: {name} needs positive multiples of {unit} "
                             f"({spatial}x VAE, {patch}x{patch} patches)")
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames={num_frames!r}: give a whole number >= 1")
        return TokenGeometry(pipe.transformer.config.in_channels, patch, int(height) // spatial // patch,
                             int(width) // spatial // patch, frames=(num_frames - 1) // temporal + 1)

    def initial_noise(self, call: CallArguments, count: int, geometry: TokenGeometry, text: dict[str, Any],
                      device: torch.device) -> tuple[NoiseField, FreshNoise | None]:
        """The noise field from the stock pipeline's float32 5-D initial latents (or the user's, or the hash)."""
        pipe = self.pipe
        channels = pipe.transformer.config.in_channels
        return self.noise(
            call, count, geometry,
            (count, channels, geometry.num_frames, geometry.rows * geometry.patch, geometry.cols * geometry.patch),
            lambda: pipe.prepare_latents(count, channels, *self.frame_size(call), call.num_frames, torch.float32,
                                         device, call.generator),
            torch.float32, device,
        )

    def decode(self, latents: torch.Tensor, geometry: TokenGeometry, call: CallArguments) -> Any:
        latents = unpack(latents, geometry.rows, geometry.cols, geometry.patch, frames=geometry.num_frames)
        if call.output_type == "latent":
            return latents
        return self.pipe.video_processor.postprocess_video(self.decode_latents(latents), output_type=call.output_type)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The stock VAE decode of full-resolution 5-D latents."""
        raise NotImplementedError
