"""Fresco for diffusers' HunyuanVideo15Pipeline (HunyuanVideo-1.5 text to video).

HunyuanVideo's pattern (spatial stages on 3-D grids; a mixed coarse / fine set goes as a one-row strip while a hook on
``transformer.rope`` answers at the tokens' real positions, with the same rotary formula) on 1.5's pipeline. What
differs: the transformer reads the latents with a conditioning latent and a mask appended on the channels (zeros for
text to video, as stock builds them), and guidance is the pipeline's own guider, asked at every step exactly as stock
asks it (its state, which branches it wants, its combination), so a guider with a step range or a rescale works
unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from diffusers import HunyuanVideo15Pipeline
from diffusers.pipelines.hunyuan_video1_5.pipeline_output import HunyuanVideo15PipelineOutput

from fresco_plugin.config import FrescoConfig
from fresco_plugin.layout import TokenGeometry
from fresco_plugin.noise import FreshNoise, NoiseField
from fresco_plugin.sampler import Step

from ._context_parallel import context_parallel_of
from ._diffusers_runner import CallArguments, rows_for
from ._positions import StripDenoiser
from ._video import VideoFrescoRunner
from .diffusers_hunyuan_video import rope_at_positions

__all__ = ["HunyuanVideo15FrescoRunner"]

# the transformer's text inputs, each a (conditional, unconditional) pair the guider splits into its branches
_CONDITIONING = ("encoder_hidden_states", "encoder_attention_mask", "encoder_hidden_states_2",
                 "encoder_attention_mask_2")


class HunyuanVideo15FrescoRunner(VideoFrescoRunner):
    """Runs ``HunyuanVideo15Pipeline.__call__``'s job with Fresco's stages."""

    pipeline_class = HunyuanVideo15Pipeline
    output_class = HunyuanVideo15PipelineOutput
    positions_at = staticmethod(rope_at_positions)  # 1.5's rope computes the same formula on its grid

    def __init__(self, pipe: Any, config: FrescoConfig):
        if pipe.transformer.config.patch_size_t != 1:
            raise ValueError(
                f"this HunyuanVideo-1.5 transformer packs {pipe.transformer.config.patch_size_t} frames per token; "
                "Fresco changes spatial resolution only and needs patch_size_t == 1"
            )
        super().__init__(pipe, config)

    def check(self, call: CallArguments) -> CallArguments:
        pipe = self.pipe
        if context_parallel_of(pipe.transformer) is not None:  # diffusers has no plan for it; a custom one is unchecked
            raise ValueError("Fresco does not run HunyuanVideo15Pipeline under context parallelism yet; disable "
                             "parallelism or call remove_fresco(pipe)")
        pipe.check_inputs(
            prompt=call.prompt, height=call.height, width=call.width, negative_prompt=call.negative_prompt,
            prompt_embeds=call.prompt_embeds, negative_prompt_embeds=call.negative_prompt_embeds,
            prompt_embeds_mask=call.prompt_embeds_mask, negative_prompt_embeds_mask=call.negative_prompt_embeds_mask,
            prompt_embeds_2=call.prompt_embeds_2, prompt_embeds_mask_2=call.prompt_embeds_mask_2,
            negative_prompt_embeds_2=call.negative_prompt_embeds_2,
            negative_prompt_embeds_mask_2=call.negative_prompt_embeds_mask_2,
        )
        if call.height is None and call.width is None:
            height, width = pipe.video_processor.calculate_default_height_width(
                pipe.default_aspect_ratio[1], pipe.default_aspect_ratio[0], pipe.target_size)
            call = call.resolved(height=height, width=width)
        return call

    def call_state(self, call: CallArguments) -> dict[str, Any]:
        return {"attention_kwargs": call.attention_kwargs}

    def geometry(self, call: CallArguments) -> TokenGeometry:
        # the transformer's in_channels count the appended conditioning latent and mask too
        return replace(super().geometry(call), channels=self.pipe.num_channels_latents)

    def initial_noise(self, call: CallArguments, count: int, geometry: TokenGeometry, text: dict[str, Any],
                      device: torch.device) -> tuple[NoiseField, FreshNoise | None]:
        pipe = self.pipe
        dtype = pipe.transformer.dtype  # stock draws its noise in the transformer's dtype
        return self.noise(
            call, count, geometry,
            (count, geometry.channels, geometry.num_frames, geometry.rows * geometry.patch,
             geometry.cols * geometry.patch),
            lambda: pipe.prepare_latents(count, geometry.channels, call.height, call.width, call.num_frames, dtype,
                                         device, call.generator),
            dtype, device,
        )

    def encode(self, call: CallArguments, device: torch.device) -> tuple[dict[str, Any], dict[str, Any] | None]:
        pipe = self.pipe
        prompts = call.prompt_embeds.shape[0] if call.prompt is None else (
            1 if isinstance(call.prompt, str) else len(call.prompt))

        def encode(prompt, embeds, mask, embeds_2, mask_2):
            return dict(zip(_CONDITIONING, pipe.encode_prompt(
                prompt=prompt, device=device, dtype=pipe.transformer.dtype, batch_size=prompts,
                num_videos_per_prompt=call.num_videos_per_prompt, prompt_embeds=embeds, prompt_embeds_mask=mask,
                prompt_embeds_2=embeds_2, prompt_embeds_mask_2=mask_2)))

        text = encode(call.prompt, call.prompt_embeds, call.prompt_embeds_mask, call.prompt_embeds_2,
                      call.prompt_embeds_mask_2)
        given = (call.negative_prompt_embeds, call.negative_prompt_embeds_mask, call.negative_prompt_embeds_2,
                 call.negative_prompt_embeds_mask_2)
        # stock's own test, at the same moment: the guider's state is still the previous call's, so a guider with a
        # step range may skip the encoding and later run its unconditional branch on the caller's tensors as given
        if pipe.guider._enabled and pipe.guider.num_conditions > 1:
            return text, encode(call.negative_prompt, *given)
        return text, dict(zip(_CONDITIONING, given)) if any(v is not None for v in given) else None

    def base_sigmas(self, steps: int, call: CallArguments) -> np.ndarray:
        return np.linspace(1.0, 0.0, steps + 1)[:-1]

    def denoiser(self, call: CallArguments, text: dict[str, Any], negative: dict[str, Any] | None, count: int,
                 geometry: TokenGeometry, device: torch.device) -> StripDenoiser:
        denoiser = _HunyuanVideo15Denoiser(self.pipe, text, negative, 1.0)
        denoiser.attention_kwargs = call.attention_kwargs
        return self.placed(denoiser, geometry)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]


class _HunyuanVideo15Denoiser(StripDenoiser):
    attention_kwargs: dict[str, Any] | None

    def __call__(self, latents: torch.Tensor, positions: torch.Tensor, step: Step) -> torch.Tensor:
        self.start_step(latents, step)
        pipe = self.pipe
        guider = pipe.guider
        guider.set_state(step=step.index, num_inference_steps=pipe._num_timesteps, timestep=step.timestep)
        negative = self.negative or {}
        states = guider.prepare_inputs({name: (self.text[name], negative.get(name)) for name in _CONDITIONING})
        for state in states:
            guider.prepare_models(pipe.transformer)
            conditioning = {name: getattr(state, name) for name in _CONDITIONING}
            state.noise_pred = self._branch(getattr(state, guider._identifier_key), conditioning, latents, positions,
                                            step)
            guider.cleanup_models(pipe.transformer)
        return guider(states)[0]

    def call_transformer(self, hidden: torch.Tensor, text: dict[str, Any], step: Step, rows: slice) -> torch.Tensor:
        transformer = self.pipe.transformer
        hidden = hidden.to(transformer.dtype)
        # stock's text-to-video conditioning: a zero conditioning latent and a zero mask on the channels, and zero
        # image embeddings
        condition = torch.zeros_like(hidden)
        mask = hidden.new_zeros(hidden.shape[0], 1, *hidden.shape[2:])
        image_embeds = hidden.new_zeros(hidden.shape[0], self.pipe.vision_num_semantic_tokens,
                                        self.pipe.vision_states_dim)
        return transformer(
            hidden_states=torch.cat([hidden, condition, mask], dim=1),
            image_embeds=image_embeds,
            timestep=step.timestep.expand(hidden.shape[0]).to(hidden.dtype),
            attention_kwargs=self.attention_kwargs,
            return_dict=False,
            **{name: rows_for(value, rows) for name, value in text.items()},
        )[0]
