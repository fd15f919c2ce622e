"""What the video adapters share: a rotary-embedding hook for arbitrary token positions, and a denoiser that sends
uniform stages to the transformer as a latent grid and mixed coarse/fine sets as a one-row strip of tokens.

A video transformer's patch embedding acts on each token alone, so a strip embeds every token exactly as the grid
would; only the rotary embedding depends on where tokens sit, and the hook supplies it for their real positions.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from fresco_plugin.config import FrescoConfig
from fresco_plugin.layout import TokenGeometry, pack, unpack
from fresco_plugin.sampler import Step

from ._diffusers_runner import CallArguments, DiffusersFrescoRunner, TransformerDenoiser

__all__ = ["RopeAtPositions", "StripDenoiser", "VideoFrescoRunner"]

RopeFunction = Callable[[torch.nn.Module, torch.Tensor], Any]


class RopeAtPositions:
    """A forward hook on the transformer's rope module: while ``positions`` is set, the module's answer is replaced
    by ``rope_fn(module, positions)`` (the embedding at the tokens' real positions, not at its input's grid).

    A plain torch forward hook held in the module's own hook table: a deep copy of the pipeline copies it along with
    its runner, and several pipelines sharing one transformer each keep their own (only the calling one is set).
    """

    def __init__(self, rope_fn: RopeFunction, owner: Any) -> None:
        self.rope_fn = rope_fn
        self.positions: torch.Tensor | None = None
        self._owner = weakref.ref(owner)

    @property
    def stale(self) -> bool:
        """Its runner is gone (garbage-collected, or this hook came back from a pickle without it)."""
        return self._owner is None or self._owner() is None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "positions": None, "_owner": None}

    def __call__(self, module: torch.nn.Module, args: tuple, output: Any) -> Any:
        if self.positions is None:
            return None
        return self.rope_fn(module, self.positions.to(args[0].device))


def _detach_hook(module: torch.nn.Module, hook: RopeAtPositions) -> None:
    for key, registered in list(module._forward_hooks.items()):
        if registered is hook:
            del module._forward_hooks[key]


class VideoFrescoRunner(DiffusersFrescoRunner):
    """A runner for a video pipeline whose transformer takes ``(B, C, F, H, W)`` latents and has a ``rope`` module.

    Subclasses set ``rope_fn`` (the model's rotary embedding at arbitrary positions) and the stock decode.
    """

    rope_fn: staticmethod

    def __init__(self, pipe: Any, config: FrescoConfig):
        super().__init__(pipe, config)
        self.rope_hook = RopeAtPositions(type(self).rope_fn, self)
        rope = pipe.transformer.rope
        for hook in list(rope._forward_hooks.values()):
            if isinstance(hook, RopeAtPositions) and hook.stale:
                _detach_hook(rope, hook)
        rope.register_forward_hook(self.rope_hook)
        # a pipeline dropped without remove_fresco takes its hook with it, even while its transformer lives on
        weakref.finalize(self, _detach_hook, pipe.transformer.rope, self.rope_hook)

    def close(self, fresco_class: type) -> None:
        _detach_hook(self.pipe.transformer.rope, self.rope_hook)
        super().close(fresco_class)

    def video_geometry(self, height: int, width: int, num_frames: int, patch: int) -> TokenGeometry:
        pipe = self.pipe
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

    def video_noise(self, call: CallArguments, videos: int, geometry: TokenGeometry, height: int, width: int,
                    num_frames: int, device: torch.device) -> tuple[Any, Any]:
        """The noise field from the stock pipeline's float32 5-D initial latents (or the user's, or the hash)."""
        pipe = self.pipe
        channels = pipe.transformer.config.in_channels
        return self.noise(
            call, videos, geometry,
            (videos, channels, geometry.num_frames, geometry.rows * geometry.patch, geometry.cols * geometry.patch),
            lambda: pipe.prepare_latents(videos, channels, height, width, num_frames, torch.float32, device,
                                         call.generator),
            torch.float32, device,
        )

    def finish(self, latents: torch.Tensor, geometry: TokenGeometry, call: CallArguments,
               decode: Callable[[torch.Tensor], torch.Tensor], output: type) -> Any:
        """Full-resolution tokens -> the stock call's return value (latents, or the decoded video)."""
        latents = unpack(latents, geometry.rows, geometry.cols, geometry.patch, frames=geometry.num_frames)
        if call.output_type == "latent":
            video = latents
        else:
            video = self.pipe.video_processor.postprocess_video(decode(latents), output_type=call.output_type)
        self.pipe.maybe_free_model_hooks()
        return (video,) if not call.return_dict else output(frames=video)


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
