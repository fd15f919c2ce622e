"""Fresco for diffusers' WanPipeline (Wan2.1 text-to-video), the same way as HunyuanVideo.

Uniform stages reach the stock transformer as a latent grid; mixed coarse/fine sets travel as a one-row strip while a
hook on ``transformer.rope`` answers with Wan's rotary embedding at the tokens' real positions. Wan runs classifier-
free guidance (two forwards per step when ``guidance_scale > 1``). Wan2.2's two-expert pipelines (``transformer_2`` /
``boundary_ratio``) and ``expand_timesteps`` are refused. Fresco runs the Euler flow step, so the pipeline needs a
``FlowMatchEulerDiscreteScheduler`` (Wan's repositories ship UniPC; swap it with the model's ``flow_shift``).
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
from ._positions import StripDenoiser
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


class WanFrescoRunner(VideoFrescoRunner):
    """Runs ``WanPipeline.__call__``'s job with Fresco's stages."""

    pipeline_class = WanPipeline
    output_class = WanPipelineOutput
    positions_at = staticmethod(wan_rope_at_positions)

    def __init__(self, pipe: Any, config: FrescoConfig):
        if pipe.transformer_2 is not None or pipe.config.boundary_ratio is not None or pipe.config.expand_timesteps:
            raise ValueError(
                "Fresco supports single-transformer Wan pipelines (Wan2.1); this one has a second transformer "
                "(boundary_ratio) or expand_timesteps (Wan2.2), which Fresco does not handle yet"
            )
        if tuple(pipe.transformer.config.patch_size)[0] != 1:
            raise ValueError("Fresco changes spatial resolution only and needs a temporal patch size of 1")
        super().__init__(pipe, config)

    def check(self, call: CallArguments) -> CallArguments:
        self.pipe.check_inputs(call.prompt, call.negative_prompt, call.height, call.width, call.prompt_embeds,
                               call.negative_prompt_embeds, call.callback_on_step_end_tensor_inputs,
                               call.guidance_scale_2)
        num_frames, temporal = call.num_frames, self.pipe.vae_scale_factor_temporal
        if isinstance(num_frames, int) and num_frames % temporal != 1:  # the stock pipeline rounds the same way
            warn_caller(f"num_frames={num_frames}: Wan makes {temporal}k + 1 frames; rounding to "
                        f"{max(num_frames // temporal * temporal + 1, 1)} as the stock pipeline does")
            num_frames = num_frames // temporal * temporal + 1
        return call.resolved(num_frames=max(num_frames, 1) if isinstance(num_frames, int) else num_frames)

    def call_state(self, call: CallArguments) -> dict[str, Any]:
        return {"guidance_scale": call.guidance_scale, "guidance_scale_2": None,
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
        denoiser = _WanDenoiser(self.pipe, text, negative, call.guidance_scale)
        denoiser.attention_kwargs = call.attention_kwargs
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

    def call_transformer(self, hidden: torch.Tensor, text: dict[str, Any], step: Step, rows: slice) -> torch.Tensor:
        return self.pipe.transformer(
            hidden_states=hidden.to(self.pipe.transformer.dtype),
            timestep=step.timestep.expand(hidden.shape[0]),
            encoder_hidden_states=rows_for(text["prompt_embeds"], rows),
            attention_kwargs=self.attention_kwargs,
            return_dict=False,
        )[0]
