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
from fresco_plugin.sampler import Step

from ._context_parallel import ulysses_padding_mask
from ._diffusers_runner import CallArguments, DiffusersFrescoRunner, TransformerDenoiser, rows_for

__all__ = ["FluxFrescoRunner"]

_IP_ADAPTER_ARGUMENTS = ("ip_adapter_image", "ip_adapter_image_embeds", "negative_ip_adapter_image",
                         "negative_ip_adapter_image_embeds")


class FluxFrescoRunner(DiffusersFrescoRunner):
    """Runs ``FluxPipeline.__call__``'s job with Fresco's stages."""

    pipeline_class = FluxPipeline
    pads_masked = True

    def run(self, call: CallArguments) -> Any:
        pipe = self.pipe
        for name in _IP_ADAPTER_ARGUMENTS:
            if getattr(call, name) is not None:
                raise ValueError(f"Fresco does not support IP-Adapter yet ({name}); call remove_fresco(pipe) to use it")
        height = call.height or pipe.default_sample_size * pipe.vae_scale_factor
        width = call.width or pipe.default_sample_size * pipe.vae_scale_factor
        pipe.check_inputs(
            call.prompt, call.prompt_2, height, width,
            negative_prompt=call.negative_prompt, negative_prompt_2=call.negative_prompt_2,
            prompt_embeds=call.prompt_embeds, negative_prompt_embeds=call.negative_prompt_embeds,
            pooled_prompt_embeds=call.pooled_prompt_embeds,
            negative_pooled_prompt_embeds=call.negative_pooled_prompt_embeds,
            callback_on_step_end_tensor_inputs=call.callback_on_step_end_tensor_inputs,
            max_sequence_length=call.max_sequence_length,
        )
        geometry = self._geometry(height, width)
        stages = self.plan(call)

        self.start_call(guidance_scale=call.guidance_scale, joint_attention_kwargs=call.joint_attention_kwargs or {})

        prompt = call.prompt
        batch_size = (1 if isinstance(prompt, str) else len(prompt) if prompt is not None
                      else call.prompt_embeds.shape[0])
        device = pipe._execution_device
        num_images = call.num_images_per_prompt
        lora_scale = pipe._joint_attention_kwargs.get("scale", None)
        has_negative = call.negative_prompt is not None or (
            call.negative_prompt_embeds is not None and call.negative_pooled_prompt_embeds is not None
        )
        true_cfg = call.true_cfg_scale > 1 and has_negative
        if true_cfg and call.prompt_embeds is not None and call.negative_prompt_embeds is not None:
            if call.prompt_embeds.shape != call.negative_prompt_embeds.shape:  # stock checks inline, same words
                raise ValueError(
                    "`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed directly, but"
                    f" got: `prompt_embeds` {call.prompt_embeds.shape} != `negative_prompt_embeds`"
                    f" {call.negative_prompt_embeds.shape}."
                )

        def encode(prompt, prompt_2, embeds, pooled):
            return dict(zip(("prompt_embeds", "pooled", "text_ids"), pipe.encode_prompt(
                prompt=prompt, prompt_2=prompt_2, prompt_embeds=embeds, pooled_prompt_embeds=pooled, device=device,
                num_images_per_prompt=num_images, max_sequence_length=call.max_sequence_length, lora_scale=lora_scale,
            )))

        text = encode(prompt, call.prompt_2, call.prompt_embeds, call.pooled_prompt_embeds)
        negative = None
        if true_cfg:
            negative = encode(call.negative_prompt, call.negative_prompt_2, call.negative_prompt_embeds,
                              call.negative_pooled_prompt_embeds)
        images = batch_size * num_images
        dtype = text["prompt_embeds"].dtype
        field, fresh = self.noise(
            call, images, geometry, (images, geometry.num_tokens, geometry.token_dim),
            lambda: pipe.prepare_latents(images, geometry.channels, height, width, dtype, device, call.generator)[0],
            dtype, device,
        )
        total = stages[-1].last_step
        config = pipe.scheduler.config
        mu = lambda tokens: calculate_shift(  # noqa: E731
            tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5), config.get("max_shift", 1.15),
        )
        schedules = self.schedules(stages, np.linspace(1.0, 1 / total, total), geometry, mu, device)
        guidance = None
        if pipe.transformer.config.guidance_embeds:
            guidance = torch.full([1], call.guidance_scale, device=device, dtype=torch.float32).expand(images)
        denoiser = _FluxDenoiser(pipe, text, negative, call.true_cfg_scale)
        denoiser.guidance = guidance
        latents = self.sample(denoiser, field, fresh, stages, schedules, geometry, images, call, device)

        if call.output_type == "latent":
            image = latents
        else:
            latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
            latents = (latents / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
            if get_module_execution_device is not None:
                latents = latents.to(get_module_execution_device(pipe.vae))
            image = pipe.vae.decode(latents, return_dict=False)[0]
            image = pipe.image_processor.postprocess(image, output_type=call.output_type)
        pipe.maybe_free_model_hooks()
        if not call.return_dict:
            return (image,)
        return FluxPipelineOutput(images=image)

    def latent_pixels(self, latents: torch.Tensor, geometry: TokenGeometry) -> torch.Tensor:
        return unpack(latents, geometry.rows, geometry.cols, geometry.patch)

    def _geometry(self, height: int, width: int) -> TokenGeometry:
        pipe = self.pipe
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
