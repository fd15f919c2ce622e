"""Fresco for diffusers' HunyuanVideoPipeline: spatial progressive resolution on 3-D token grids.

Stages lower the spatial resolution of every latent frame (time stays whole). A uniform stage goes through the stock
transformer as a latent grid, so its rotary embedding is the stock one. A mixed set of coarse and fine tokens cannot be
a grid: the runner lays the tokens out as a one-row strip (the patch embedding is per token, so the strip embeds each
token exactly as the grid would) and a hook on ``transformer.rope`` supplies the rotary embedding at the tokens' real
(fractional) positions, computed the way the stock embedding computes it on a grid (a test checks they agree).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from diffusers import HunyuanVideoPipeline
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.pipelines.hunyuan_video.pipeline_output import HunyuanVideoPipelineOutput

from fresco_plugin.config import FrescoConfig
from fresco_plugin.layout import TokenGeometry
from fresco_plugin.sampler import Step

from ._diffusers_runner import CallArguments, rows_for
from ._positions import StripDenoiser
from ._video import VideoFrescoRunner
from .para_attention import para_attention_mesh

__all__ = ["HunyuanVideoFrescoRunner", "rope_at_positions"]


def rope_at_positions(rope: torch.nn.Module, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HunyuanVideo's rotary embedding for tokens at ``positions`` ``(N, 3)`` (frame, row, col; may be fractional),
    computed as ``HunyuanVideoRotaryPosEmbed`` does for the integer positions of a grid."""
    freqs = [get_1d_rotary_pos_embed(rope.rope_dim[axis], positions[:, axis].to(torch.float32), rope.theta,
                                     use_real=True) for axis in range(3)]
    return torch.cat([f[0] for f in freqs], dim=1), torch.cat([f[1] for f in freqs], dim=1)


def _refuse_para_attention_parallelism(transformer: Any) -> None:
    if para_attention_mesh(transformer) is not None:
        raise ValueError(
            "ParaAttention's HunyuanVideo context parallelism (para-attn 0.3.38) passes time_text_embed its arguments "
            "in an order diffusers changed before 0.34, the only version it runs with, so it fails even without "
            "Fresco; parallelize with fresco_plugin.integrations.hunyuan_video_parallel."
            "enable_hunyuan_video_parallelism (diffusers' context parallelism) instead"
        )


class HunyuanVideoFrescoRunner(VideoFrescoRunner):
    """Runs ``HunyuanVideoPipeline.__call__``'s job with Fresco's stages."""

    pipeline_class = HunyuanVideoPipeline
    output_class = HunyuanVideoPipelineOutput
    pads_masked = True  # under our context-parallel plan (hunyuan_video_parallel), which can mask pad tokens
    positions_at = staticmethod(rope_at_positions)

    def __init__(self, pipe: Any, config: FrescoConfig):
        transformer = pipe.transformer
        if transformer.config.patch_size_t != 1:
            raise ValueError(
                f"this HunyuanVideo transformer packs {transformer.config.patch_size_t} frames per token; Fresco "
                "changes spatial resolution only and needs patch_size_t == 1"
            )
        _refuse_para_attention_parallelism(transformer)
        super().__init__(pipe, config)

    def check(self, call: CallArguments) -> CallArguments:
        _refuse_para_attention_parallelism(self.pipe.transformer)  # parallelized after apply_fresco
        self.pipe.check_inputs(call.prompt, call.prompt_2, call.height, call.width, call.prompt_embeds,
                               call.callback_on_step_end_tensor_inputs, call.prompt_template)
        return call

    def call_state(self, call: CallArguments) -> dict[str, Any]:
        return {"guidance_scale": call.guidance_scale, "attention_kwargs": call.attention_kwargs}

    def encode(self, call: CallArguments, device: torch.device) -> tuple[dict[str, Any], dict[str, Any] | None]:
        dtype = self.pipe.transformer.dtype

        def encode(prompt, prompt_2, embeds, pooled, mask):
            embeds, pooled, mask = self.pipe.encode_prompt(
                prompt=prompt, prompt_2=prompt_2, prompt_template=call.prompt_template,
                num_videos_per_prompt=call.num_videos_per_prompt, prompt_embeds=embeds, pooled_prompt_embeds=pooled,
                prompt_attention_mask=mask, device=device, max_sequence_length=call.max_sequence_length,
            )
            return {"prompt_embeds": embeds.to(dtype), "pooled": pooled.to(dtype), "mask": mask.to(dtype)}

        text = encode(call.prompt, call.prompt_2, call.prompt_embeds, call.pooled_prompt_embeds,
                      call.prompt_attention_mask)
        negative = None
        if call.true_cfg_scale > 1 and self.has_negative(call, "negative_pooled_prompt_embeds"):
            negative = encode(call.negative_prompt, call.negative_prompt_2, call.negative_prompt_embeds,
                              call.negative_pooled_prompt_embeds, call.negative_prompt_attention_mask)
        return text, negative

    def base_sigmas(self, steps: int, call: CallArguments) -> np.ndarray:
        return np.linspace(1.0, 0.0, steps + 1)[:-1]

    def denoiser(self, call: CallArguments, text: dict[str, Any], negative: dict[str, Any] | None, count: int,
                 geometry: TokenGeometry, device: torch.device) -> StripDenoiser:
        denoiser = _HunyuanVideoDenoiser(self.pipe, text, negative, call.true_cfg_scale)
        denoiser.guidance = torch.tensor([call.guidance_scale] * count, dtype=self.pipe.transformer.dtype,
                                         device=device) * 1000.0
        denoiser.attention_kwargs = call.attention_kwargs
        return self.placed(denoiser, geometry)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]


class _HunyuanVideoDenoiser(StripDenoiser):
    guidance: torch.Tensor
    attention_kwargs: dict[str, Any] | None

    def call_transformer(self, hidden: torch.Tensor, text: dict[str, Any], step: Step, rows: slice) -> torch.Tensor:
        transformer = self.pipe.transformer
        padding = contextlib.nullcontext()
        if self.padded_tokens:
            from .hunyuan_video_parallel import masked_padding  # diffusers' context parallelism: 0.42 and later

            padding = masked_padding(transformer, self.padded_tokens)
        with padding:
            return self._forward(transformer, hidden, text, step, rows)

    def _forward(self, transformer: Any, hidden: torch.Tensor, text: dict[str, Any], step: Step,
                 rows: slice) -> torch.Tensor:
        return transformer(
            hidden_states=hidden.to(transformer.dtype),
            timestep=step.timestep.expand(hidden.shape[0]).to(torch.float32),
            encoder_hidden_states=rows_for(text["prompt_embeds"], rows),
            encoder_attention_mask=rows_for(text["mask"], rows),
            pooled_projections=rows_for(text["pooled"], rows),
            guidance=rows_for(self.guidance, rows),
            attention_kwargs=self.attention_kwargs,
            return_dict=False,
        )[0]
