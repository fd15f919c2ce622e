"""Fresco for diffusers' WanPipeline (Wan2.1 and Wan2.2 text-to-video), the same way as HunyuanVideo.

Uniform stages reach the stock transformer as a latent grid; mixed coarse/fine sets travel as a one-row strip while a
hook on ``transformer.rope`` answers with Wan's rotary embedding at the tokens' real positions. Wan runs classifier-
free guidance (two forwards per step when ``guidance_scale > 1``). Wan2.2's two experts run as stock runs them: the
step's timestep picks ``transformer`` (at or above ``boundary_ratio * num_train_timesteps``) or ``transformer_2``
(with ``guidance_scale_2``), so each expert sees the noise levels it was trained for whatever the stage;
``expand_timesteps`` (Wan2.2 TI2V) gives every token of a forward the step's timestep, as stock does for text-to-video.
Fresco runs the Euler flow step, so the pipeline needs a ``FlowMatchEulerDiscreteScheduler`` (Wan's repositories ship
UniPC; swap it with the model's ``flow_shift``).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import WanPipeline
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from diffusers.utils.torch_utils import get_module_execution_device

from fresco_plugin.config import FrescoConfig
from fresco_plugin.layout import TokenGeometry
from fresco_plugin.sampler import Step

from ._diffusers_runner import CallArguments, rows_for, warn_caller
from ._positions import PositionHook, StripDenoiser, engine_split_degree
from ._video import VideoFrescoRunner

__all__ = ["WanFrescoRunner", "wan_rope_at_positions"]

_WAN_ROPE_THETA = 10000.0  # WanRotaryPosEmbed's default; WanTransformer3DModel never changes it


def wan_rope_at_positions(rope: torch.nn.Module, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Wan's rotary embedding ``(1, N, 1, D)`` at ``positions`` ``(N, 3)``, computed as ``WanRotaryPosEmbed``
    precomputes its table for integer positions."""
    dtype = torch.float32 if torch.backends.mps.is_available() else torch.float64
    parts = [get_1d_rotary_pos_embed(dim, positions[:, axis].to(dtype), _WAN_ROPE_THETA, use_real=True,
                                     repeat_interleave_real=True, freqs_dtype=dtype)
             for axis, dim in enumerate((rope.t_dim, rope.h_dim, rope.w_dim))]
    cos = torch.cat([p[0] for p in parts], dim=1).to(rope.freqs_cos.dtype)
    sin = torch.cat([p[1] for p in parts], dim=1).to(rope.freqs_sin.dtype)
    return cos.view(1, -1, 1, cos.shape[-1]), sin.view(1, -1, 1, sin.shape[-1])


class _WanPositionHook(PositionHook):
    """Wan's rope slices a table of ``rope_max_seq_len`` positions per axis for the grid it is given, so a strip longer
    than that (any mixed set of a real-size video: 1024 positions, tens of thousands of tokens) would fail before the
    hook could answer. While positions are set, the rope gets a stand-in strip that fits its table instead: the
    longest one whose token count divides the real count and still splits over a context-parallel plan's ranks."""

    def stand_in(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        tokens = self.positions.shape[0] if self.positions is not None else 0
        if tokens <= module.max_seq_len:
            return None
        degree = engine_split_degree(module)
        length = max(k for k in range(degree, module.max_seq_len + 1, degree) if tokens % k == 0)
        hidden = args[0] if args else kwargs["hidden_states"]
        _, patch_h, patch_w = module.patch_size
        return (hidden[:, :, :1, :patch_h, :patch_w * length],), {}


class WanFrescoRunner(VideoFrescoRunner):
    """Runs ``WanPipeline.__call__``'s job with Fresco's stages."""

    pipeline_class = WanPipeline
    output_class = WanPipelineOutput
    positions_at = staticmethod(wan_rope_at_positions)
    position_hook_class = _WanPositionHook

    def __init__(self, pipe: Any, config: FrescoConfig):
        if pipe.transformer is None:
            raise ValueError("Fresco needs pipe.transformer (the high-noise expert); this Wan pipeline has only "
                             "transformer_2")
        if pipe.transformer_2 is not None and pipe.config.boundary_ratio is None:
            raise ValueError("this Wan pipeline has a transformer_2 but no boundary_ratio, so stock never runs it; "
                             "set boundary_ratio or drop transformer_2")
        for transformer in (pipe.transformer, pipe.transformer_2):
            if transformer is not None and tuple(transformer.config.patch_size)[0] != 1:
                raise ValueError("Fresco changes spatial resolution only and needs a temporal patch size of 1")
        super().__init__(pipe, config)

    def check(self, call: CallArguments) -> CallArguments:
        pipe = self.pipe
        pipe.check_inputs(call.prompt, call.negative_prompt, call.height, call.width, call.prompt_embeds,
                          call.negative_prompt_embeds, call.callback_on_step_end_tensor_inputs, call.guidance_scale_2)
        num_frames, temporal = call.num_frames, pipe.vae_scale_factor_temporal
        if isinstance(num_frames, int) and num_frames % temporal != 1:  # the stock pipeline rounds the same way
            warn_caller(f"num_frames={num_frames}: Wan makes {temporal}k + 1 frames; rounding to "
                        f"{max(num_frames // temporal * temporal + 1, 1)} as the stock pipeline does")
            num_frames = num_frames // temporal * temporal + 1
        # stock rounds the size down to whole patches too, with a warning
        unit = pipe.vae_scale_factor_spatial * tuple(pipe.transformer.config.patch_size)[-1]
        height, width = call.height, call.width
        if isinstance(height, int) and isinstance(width, int) and (height % unit or width % unit):
            warn_caller(f"height={height}, width={width}: Wan needs multiples of {unit}; using "
                        f"{height // unit * unit}x{width // unit * unit} as the stock pipeline does")
            height, width = height // unit * unit, width // unit * unit
        guidance_scale_2 = call.guidance_scale_2
        if pipe.config.boundary_ratio is not None and guidance_scale_2 is None:
            guidance_scale_2 = call.guidance_scale
        return call.resolved(num_frames=max(num_frames, 1) if isinstance(num_frames, int) else num_frames,
                             height=height, width=width, guidance_scale_2=guidance_scale_2)

    def call_state(self, call: CallArguments) -> dict[str, Any]:
        return {"guidance_scale": call.guidance_scale, "guidance_scale_2": call.guidance_scale_2,
                "attention_kwargs": call.attention_kwargs}

    def encode(self, call: CallArguments, device: torch.device) -> tuple[dict[str, Any], dict[str, Any] | None]:
        cfg = self.pipe.do_classifier_free_guidance
        embeds, negative_embeds = self.pipe.encode_prompt(
            prompt=call.prompt, negative_prompt=call.negative_prompt, do_classifier_free_guidance=cfg,
            num_videos_per_prompt=call.num_videos_per_prompt, prompt_embeds=call.prompt_embeds,
            negative_prompt_embeds=call.negative_prompt_embeds, max_sequence_length=call.max_sequence_length,
            device=device,
        )
        dtype = self.pipe.transformer.dtype
        return {"prompt_embeds": embeds.to(dtype)}, ({"prompt_embeds": negative_embeds.to(dtype)} if cfg else None)

    def denoiser(self, call: CallArguments, text: dict[str, Any], negative: dict[str, Any] | None, count: int,
                 geometry: TokenGeometry, device: torch.device) -> StripDenoiser:
        pipe = self.pipe
        denoiser = _WanDenoiser(pipe, text, negative, call.guidance_scale)
        denoiser.attention_kwargs = call.attention_kwargs
        if pipe.config.boundary_ratio is not None:
            denoiser.boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
            denoiser.guidance_scale_2 = call.guidance_scale_2
        denoiser.expand_timesteps = bool(pipe.config.expand_timesteps)
        return self.placed(denoiser, geometry)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        latents = latents.to(get_module_execution_device(vae), dtype=vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        return vae.decode(latents / inverse_std + mean, return_dict=False)[0]


class _WanDenoiser(StripDenoiser):
    def callback_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"prompt_embeds": self.text["prompt_embeds"]}
        if self.negative is not None:
            tensors["negative_prompt_embeds"] = self.negative["prompt_embeds"]
        return tensors

    def take_callback_outputs(self, outputs: dict[str, Any]) -> None:
        super().take_callback_outputs(outputs)
        if self.negative is not None:
            self.negative["prompt_embeds"] = outputs.pop("negative_prompt_embeds", self.negative["prompt_embeds"])

    attention_kwargs: dict[str, Any] | None
    boundary: float | None = None  # Wan2.2: timesteps below it go to transformer_2
    guidance_scale_2: float | None = None
    expand_timesteps = False

    _expert: tuple[int, bool] | None = None  # (step index, whether it is transformer_2's)

    def _low_noise(self, step: Step) -> bool:
        """Whether ``step`` belongs to the low-noise expert; compared once per step, as stock does (a host read)."""
        if self.boundary is None:
            return False
        if self._expert is None or self._expert[0] != step.index:
            self._expert = (step.index, bool(step.timestep < self.boundary))
        return self._expert[1]

    def guidance_scale(self, step: Step) -> float:
        return self.guidance_scale_2 if self._low_noise(step) else self.cfg_scale

    def call_transformer(self, hidden: torch.Tensor, text: dict[str, Any], step: Step, rows: slice) -> torch.Tensor:
        model = self.pipe.transformer_2 if self._low_noise(step) else self.pipe.transformer
        batch, frames, height, width = hidden.shape[0], *hidden.shape[2:]
        if self.expand_timesteps:  # one timestep per token (text-to-video: the step's for every token)
            timestep = step.timestep.expand(batch, frames * (height // self.patch) * (width // self.patch))
        else:
            timestep = step.timestep.expand(batch)
        return model(
            hidden_states=hidden.to(model.dtype),
            timestep=timestep,
            encoder_hidden_states=rows_for(text["prompt_embeds"], rows),
            attention_kwargs=self.attention_kwargs,
            return_dict=False,
        )[0]
