"""Fresco for diffusers' Flux2Pipeline (FLUX.2-dev) and Flux2KleinPipeline (FLUX.2-klein).

FLUX.2 packs latents into 2x2 tokens in FLUX.1's channel order and reads positions straight from ``img_ids`` (four
axes: frame, row, column, layer), so FLUX.1's runner serves for the grid, the noise and the stages. What differs:
no pooled text vector, the latents are batch-normalised in packed space (undone at decode), the dynamic shift
depends on the step count as well as the token count (``compute_empirical_mu``), and reference images (``image=``)
ride along after the generated tokens at their own frame of the positions, as in Kontext: each stage sees what a stock
call at that stage's size sees. Klein runs true CFG with an empty negative prompt instead of guidance embeddings.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import Flux2KleinPipeline, Flux2Pipeline
from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu
from diffusers.pipelines.flux2.pipeline_output import Flux2PipelineOutput
from diffusers.utils.torch_utils import get_module_execution_device

from fresco_plugin.layout import TokenGeometry
from fresco_plugin.sampler import Step

from ._diffusers_runner import CallArguments, TransformerDenoiser, rows_for
from .diffusers_flux import FluxFrescoRunner

__all__ = ["Flux2FrescoRunner", "Flux2KleinFrescoRunner"]

_REFERENCE_AREA = 1024 * 1024  # stock shrinks a larger reference picture to this many pixels


class Flux2FrescoRunner(FluxFrescoRunner):
    """Runs ``Flux2Pipeline.__call__``'s job with Fresco's stages; reference images stay whole."""

    pipeline_class = Flux2Pipeline
    output_class = Flux2PipelineOutput
    pads_masked = False
    embedded_guidance = True  # FLUX.2-dev is guidance-distilled: the scale is an input, one branch
    packed_latent_output = True  # output_type="latent" gives the packed tokens (Klein: the VAE's latents)

    def check(self, call: CallArguments) -> CallArguments:
        pipe = self.pipe
        self.check_inputs(call)
        images = self.reference_pictures(call)
        height = call.height or (images[0].shape[-2] if images else pipe.default_sample_size * pipe.vae_scale_factor)
        width = call.width or (images[0].shape[-1] if images else pipe.default_sample_size * pipe.vae_scale_factor)
        multiple = pipe.vae_scale_factor * 2  # stock floors the sizes to whole packed latents
        return call.resolved(height=int(height) // multiple * multiple, width=int(width) // multiple * multiple)

    def check_inputs(self, call: CallArguments) -> None:
        self.pipe.check_inputs(prompt=call.prompt, height=call.height, width=call.width,
                               prompt_embeds=call.prompt_embeds,
                               callback_on_step_end_tensor_inputs=call.callback_on_step_end_tensor_inputs)

    def reference_pictures(self, call: CallArguments) -> list[torch.Tensor]:
        """The reference images as stock preprocesses them (shrunk to 1024x1024 pixels of area if larger, cropped to
        whole packed latents); once per call, since ``check`` needs their size and ``encode`` their latents."""
        return call.memoized("reference_pictures", lambda: self._preprocessed(call.image))

    def _preprocessed(self, image: Any) -> list[torch.Tensor]:
        pipe = self.pipe
        pictures = []
        for picture in [] if image is None else image if isinstance(image, list) else [image]:
            pipe.image_processor.check_image_input(picture)
            width, height = picture.size
            if width * height > _REFERENCE_AREA:
                picture = pipe.image_processor._resize_to_target_area(picture, _REFERENCE_AREA)
                width, height = picture.size
            multiple = pipe.vae_scale_factor * 2
            width, height = width // multiple * multiple, height // multiple * multiple
            pictures.append(pipe.image_processor.preprocess(picture, height=height, width=width, resize_mode="crop"))
        return pictures

    def call_state(self, call: CallArguments) -> dict[str, Any]:
        return {"guidance_scale": call.guidance_scale, "attention_kwargs": call.attention_kwargs}

    def encode(self, call: CallArguments, device: torch.device) -> tuple[dict[str, Any], dict[str, Any] | None]:
        pipe = self.pipe
        text = self.encode_text(call, self.prompt(call, device), call.prompt_embeds, device)
        negative = self.encode_negative(call, device)
        pictures = self.reference_pictures(call)
        if pictures:  # both guidance branches see the same references
            reference, reference_ids = pipe.prepare_image_latents(
                images=pictures, batch_size=self.batch_size(call), generator=call.generator, device=device,
                dtype=pipe.vae.dtype)
            for conditioning in (text, negative):
                if conditioning is not None:
                    conditioning.update(reference=reference, reference_ids=reference_ids)
        return text, negative

    def prompt(self, call: CallArguments, device: torch.device) -> Any:
        """The prompt to encode: the caller's, or stock's upsampled rewrite of it."""
        if not call.caption_upsample_temperature:
            return call.prompt
        return self.pipe.upsample_prompt(call.prompt, images=call.image, temperature=call.caption_upsample_temperature,
                                         device=device)

    def encode_text(self, call: CallArguments, prompt: Any, embeds: torch.Tensor | None,
                    device: torch.device) -> dict[str, Any]:
        return dict(zip(("prompt_embeds", "text_ids"), self.pipe.encode_prompt(
            prompt=prompt, prompt_embeds=embeds, device=device, num_images_per_prompt=call.num_images_per_prompt,
            max_sequence_length=call.max_sequence_length, text_encoder_out_layers=call.text_encoder_out_layers)))

    def encode_negative(self, call: CallArguments, device: torch.device) -> dict[str, Any] | None:
        """The unconditional branch's conditioning; FLUX.2-dev has none."""
        return None

    def stock_noise(self, call: CallArguments, count: int, geometry: TokenGeometry, dtype: torch.dtype,
                    device: torch.device) -> torch.Tensor:
        return self.pipe.prepare_latents(count, geometry.channels, call.height, call.width, dtype, device,
                                         call.generator)[0]

    def base_sigmas(self, steps: int, call: CallArguments) -> np.ndarray | None:
        if self.pipe.scheduler.config.get("use_flow_sigmas", False):
            return None  # stock passes no sigmas then
        return np.linspace(1.0, 1 / steps, steps)

    def mu(self, tokens: int, steps: int) -> float:
        return compute_empirical_mu(image_seq_len=tokens, num_steps=steps)

    def denoiser(self, call: CallArguments, text: dict[str, Any], negative: dict[str, Any] | None, count: int,
                 geometry: TokenGeometry, device: torch.device) -> TransformerDenoiser:
        denoiser = _Flux2Denoiser(self.pipe, text, negative, call.guidance_scale)
        if self.embedded_guidance:  # stock passes the scale whether or not the transformer embeds it
            denoiser.guidance = torch.full([1], call.guidance_scale, device=device, dtype=torch.float32).expand(count)
        return denoiser

    def decode(self, latents: torch.Tensor, geometry: TokenGeometry, call: CallArguments) -> Any:
        if call.output_type == "latent" and self.packed_latent_output:
            return latents
        pipe = self.pipe
        # raster-ordered tokens -> (B, C*4, H/2, W/2), as stock's _unpack_latents_with_ids gives for its own ids
        latents = latents.transpose(1, 2).reshape(latents.shape[0], -1, geometry.rows, geometry.cols)
        mean = pipe.vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps)
        latents = pipe._unpatchify_latents(latents * std.to(latents.device, latents.dtype) + mean)
        if call.output_type == "latent":
            return latents
        image = pipe.vae.decode(latents.to(get_module_execution_device(pipe.vae)), return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type=call.output_type)


class Flux2KleinFrescoRunner(Flux2FrescoRunner):
    """Runs ``Flux2KleinPipeline.__call__``'s job: true CFG against an empty prompt when ``guidance_scale > 1`` (unless
    the checkpoint is step-distilled), no guidance embedding."""

    pipeline_class = Flux2KleinPipeline
    embedded_guidance = False
    packed_latent_output = False

    def check_inputs(self, call: CallArguments) -> None:
        self.pipe.check_inputs(prompt=call.prompt, height=call.height, width=call.width,
                               prompt_embeds=call.prompt_embeds,
                               callback_on_step_end_tensor_inputs=call.callback_on_step_end_tensor_inputs,
                               guidance_scale=call.guidance_scale)

    def prompt(self, call: CallArguments, device: torch.device) -> Any:
        return call.prompt  # Klein has no prompt upsampling

    def encode_negative(self, call: CallArguments, device: torch.device) -> dict[str, Any] | None:
        if not self.pipe.do_classifier_free_guidance:  # reads the scale start_call set, as stock's property does
            return None
        negative = [""] * len(call.prompt) if isinstance(call.prompt, list) else ""
        return self.encode_text(call, negative, call.negative_prompt_embeds, device)


class _Flux2Denoiser(TransformerDenoiser):
    guidance: torch.Tensor | None = None

    def forward(self, text: dict[str, Any], latents: torch.Tensor, positions: torch.Tensor, step: Step,
                rows: slice) -> torch.Tensor:
        timestep = step.timestep.expand(latents.shape[0]).to(latents.dtype)
        tokens = latents.shape[1]
        # img_ids rows are [frame, row, col, layer]; float32 keeps fractional positions exact in a bf16 pipeline
        image_ids = torch.cat([positions.to(torch.float32), positions.new_zeros(tokens, 1, dtype=torch.float32)], 1)
        reference = text.get("reference")
        if reference is not None:
            latents = torch.cat([latents, rows_for(reference, rows).to(latents.dtype)], dim=1)
            image_ids = torch.cat([image_ids, text["reference_ids"][0].to(torch.float32)])
        return self.pipe.transformer(
            hidden_states=latents.to(self.pipe.transformer.dtype),
            timestep=timestep / 1000,
            guidance=rows_for(self.guidance, rows),
            encoder_hidden_states=rows_for(text["prompt_embeds"], rows),
            txt_ids=text["text_ids"],
            img_ids=image_ids[None],  # batched, as stock passes them (diffusers' context-parallel plan splits them so)
            joint_attention_kwargs=self.pipe.attention_kwargs,
            return_dict=False,
        )[0][:, :tokens]
