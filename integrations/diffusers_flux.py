"""Fresco for diffusers' FluxPipeline (FLUX.1-dev, FLUX.1-schnell and their fine-tunes).

The runner replaces only the denoising loop, since FLUX's loop fixes the token count, ``img_ids`` and ``mu`` once per
call; everything else is the pipeline's own (inputs, prompt encoding, initial noise, progress bar, callbacks, decode).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput

try:  # newer diffusers decode on the VAE's execution device (offloading); 0.34, which ParaAttention needs, does not
    from diffusers.utils.torch_utils import get_module_execution_device
except ImportError:
    get_module_execution_device = None

from fresco_plugin.layout import TokenGeometry, unpack
from fresco_plugin.noise import FreshNoise, NoiseField
from fresco_plugin.sampler import Step

from ._context_parallel import ulysses_padding_mask
from ._diffusers_runner import CallArguments, DiffusersFrescoRunner, TransformerDenoiser, rows_for

__all__ = ["FluxFrescoRunner"]

_IP_ADAPTER_ARGUMENTS = ("ip_adapter_image", "ip_adapter_image_embeds", "negative_ip_adapter_image",
                         "negative_ip_adapter_image_embeds")


class FluxFrescoRunner(DiffusersFrescoRunner):
    """Runs ``FluxPipeline.__call__``'s job with Fresco's stages. FLUX reads positions from ``img_ids``, so Fresco's
    positions go straight in (no position hook)."""

    pipeline_class = FluxPipeline
    output_class = FluxPipelineOutput
    pads_masked = True

    def check(self, call: CallArguments) -> CallArguments:
        pipe = self.pipe
        for name in _IP_ADAPTER_ARGUMENTS:
            if getattr(call, name) is not None:
                raise ValueError(f"Fresco does not support IP-Adapter yet ({name}); call remove_fresco(pipe) to use it")
        call = call.resolved(height=call.height or pipe.default_sample_size * pipe.vae_scale_factor,
                             width=call.width or pipe.default_sample_size * pipe.vae_scale_factor)
        pipe.check_inputs(
            call.prompt, call.prompt_2, *self.checked_before_size(call), call.height, call.width,
            negative_prompt=call.negative_prompt, negative_prompt_2=call.negative_prompt_2,
            prompt_embeds=call.prompt_embeds, negative_prompt_embeds=call.negative_prompt_embeds,
            pooled_prompt_embeds=call.pooled_prompt_embeds,
            negative_pooled_prompt_embeds=call.negative_pooled_prompt_embeds,
            callback_on_step_end_tensor_inputs=call.callback_on_step_end_tensor_inputs,
            max_sequence_length=call.max_sequence_length,
        )
        return call

    def checked_before_size(self, call: CallArguments) -> tuple[Any, ...]:
        """What the pipeline's ``check_inputs`` takes between ``prompt_2`` and ``height`` (Img2Img: ``strength``)."""
        return ()

    def geometry(self, call: CallArguments) -> TokenGeometry:
        pipe, height, width = self.pipe, call.height, call.width
        unit = pipe.vae_scale_factor * 2
        geometry = TokenGeometry(pipe.transformer.config.in_channels // 4, 2, int(height) // unit, int(width) // unit)
        coarsest = max(self.config.stage_levels)
        factor = 1 << coarsest
        if min(geometry.rows, geometry.cols) < factor or not geometry.divides(coarsest):
            multiple = unit * factor
            raise ValueError(
                f"height={height}, width={width} give a {geometry.rows}x{geometry.cols} token grid, which does not "
                f"divide into whole tokens at stage scale 1/{factor}; use a height and width that are multiples of "
                f"{multiple} (for example {max(multiple, height // multiple * multiple)}x"
                f"{max(multiple, width // multiple * multiple)}), or drop that stage from FrescoConfig.stage_scales"
            )
        return geometry

    def call_state(self, call: CallArguments) -> dict[str, Any]:
        return {"guidance_scale": call.guidance_scale, "joint_attention_kwargs": call.joint_attention_kwargs or {}}

    def encode(self, call: CallArguments, device: torch.device) -> tuple[dict[str, Any], dict[str, Any] | None]:
        pipe = self.pipe
        true_cfg = call.true_cfg_scale > 1 and self.has_negative(call, "negative_pooled_prompt_embeds")
        if true_cfg and call.prompt_embeds is not None and call.negative_prompt_embeds is not None:
            if call.prompt_embeds.shape != call.negative_prompt_embeds.shape:  # stock checks inline, same words
                raise ValueError(
                    "`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed directly, but"
                    f" got: `prompt_embeds` {call.prompt_embeds.shape} != `negative_prompt_embeds`"
                    f" {call.negative_prompt_embeds.shape}."
                )
        lora_scale = pipe._joint_attention_kwargs.get("scale", None)

        def encode(prompt, prompt_2, embeds, pooled):
            return dict(zip(("prompt_embeds", "pooled", "text_ids"), pipe.encode_prompt(
                prompt=prompt, prompt_2=prompt_2, prompt_embeds=embeds, pooled_prompt_embeds=pooled, device=device,
                num_images_per_prompt=call.num_images_per_prompt, max_sequence_length=call.max_sequence_length,
                lora_scale=lora_scale,
            )))

        text = encode(call.prompt, call.prompt_2, call.prompt_embeds, call.pooled_prompt_embeds)
        negative = None
        if true_cfg:
            negative = encode(call.negative_prompt, call.negative_prompt_2, call.negative_prompt_embeds,
                              call.negative_pooled_prompt_embeds)
        return text, negative

    def initial_noise(self, call: CallArguments, count: int, geometry: TokenGeometry, text: dict[str, Any],
                      device: torch.device) -> tuple[NoiseField, FreshNoise | None]:
        dtype = text["prompt_embeds"].dtype
        return self.noise(call, count, geometry, (count, geometry.num_tokens, geometry.token_dim),
                          lambda: self.stock_noise(call, count, geometry, dtype, device), dtype, device)

    def stock_noise(self, call: CallArguments, count: int, geometry: TokenGeometry, dtype: torch.dtype,
                    device: torch.device) -> torch.Tensor:
        """The stock call's initial noise (packed), from the pipeline's own ``prepare_latents``."""
        return self.pipe.prepare_latents(count, geometry.channels, call.height, call.width, dtype, device,
                                         call.generator)[0]

    def latent_pixels(self, latents: torch.Tensor, geometry: TokenGeometry) -> torch.Tensor:
        return unpack(latents, geometry.rows, geometry.cols, geometry.patch)

    def base_sigmas(self, steps: int, call: CallArguments) -> np.ndarray:
        return np.linspace(1.0, 1 / steps, steps)

    def mu(self, tokens: int, steps: int) -> float:
        config = self.pipe.scheduler.config
        return calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                               config.get("base_shift", 0.5), config.get("max_shift", 1.15))

    def denoiser(self, call: CallArguments, text: dict[str, Any], negative: dict[str, Any] | None, count: int,
                 geometry: TokenGeometry, device: torch.device) -> TransformerDenoiser:
        denoiser = _FluxDenoiser(self.pipe, text, negative, call.true_cfg_scale)
        if self.pipe.transformer.config.guidance_embeds:
            denoiser.guidance = torch.full([1], call.guidance_scale, device=device, dtype=torch.float32).expand(count)
        return denoiser

    def decode(self, latents: torch.Tensor, geometry: TokenGeometry, call: CallArguments) -> Any:
        if call.output_type == "latent":
            return latents
        pipe = self.pipe
        latents = pipe._unpack_latents(latents, call.height, call.width, pipe.vae_scale_factor)
        latents = (latents / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
        if get_module_execution_device is not None:
            latents = latents.to(get_module_execution_device(pipe.vae))
        image = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type=call.output_type)


class _FluxDenoiser(TransformerDenoiser):
    guidance: torch.Tensor | None = None

    def forward(self, text: dict[str, Any], latents: torch.Tensor, positions: torch.Tensor, step: Step,
                rows: slice) -> torch.Tensor:
        timestep = step.timestep.expand(latents.shape[0]).to(latents.dtype)
        # img_ids rows are [0, row, col]: the positions' frame axis is 0 for images; float32 keeps fractional
        # positions exact in a bf16 pipeline
        image_ids = positions.to(torch.float32)
        attention_kwargs = self.pipe.joint_attention_kwargs
        tokens = latents.shape[1]
        reference = text.get("reference")
        if reference is not None:  # Kontext: the reference image's tokens after the edited ones, at their own ids
            latents = torch.cat([latents, rows_for(reference, rows)], dim=1)
            image_ids = torch.cat([image_ids, text["reference_ids"].to(torch.float32)])
        pad = -tokens % self.pad_multiple
        if pad:  # an uneven stage under Ulysses: pad tokens every key ignores, dropped from the output
            if "attention_mask" in (attention_kwargs or {}):
                raise ValueError("Fresco pads this stage's image sequence for context parallelism with its own "
                                 "attention mask; drop attention_mask from joint_attention_kwargs")
            latents = torch.cat([latents, latents.new_zeros(latents.shape[0], pad, latents.shape[2])], dim=1)
            image_ids = torch.cat([image_ids, image_ids.new_zeros(pad, image_ids.shape[1])])
            mask = ulysses_padding_mask(text["prompt_embeds"].shape[1], tokens, tokens + pad, self.pad_multiple,
                                        latents.device)
            attention_kwargs = {**(attention_kwargs or {}), "attention_mask": mask}
        return self.pipe.transformer(
            hidden_states=latents,
            timestep=timestep / 1000,
            guidance=rows_for(self.guidance, rows),
            pooled_projections=rows_for(text["pooled"], rows),
            encoder_hidden_states=rows_for(text["prompt_embeds"], rows),
            txt_ids=text["text_ids"],
            img_ids=image_ids,
            joint_attention_kwargs=attention_kwargs,
            return_dict=False,
        )[0][:, :tokens]
