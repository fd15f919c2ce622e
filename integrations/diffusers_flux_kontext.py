"""Fresco for diffusers' FluxKontextPipeline (FLUX.1-Kontext image editing).

Kontext appends the reference image's tokens (frame 1 of the positions) after the edited image's in every forward
and keeps only the edited tokens' prediction. Under Fresco the edited image is sketched and promoted as in text to
image, while the reference rides along whole, at full resolution and at the positions stock gives it: each stage
sees what a stock Kontext call at that stage's resolution sees. Everything else is FLUX's adapter.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FluxKontextPipeline
from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS
from diffusers.pipelines.flux.pipeline_flux_kontext import logger as kontext_logger

from fresco_plugin.layout import TokenGeometry

from ._diffusers_runner import CallArguments
from .diffusers_flux import FluxFrescoRunner

__all__ = ["FluxKontextFrescoRunner"]


class FluxKontextFrescoRunner(FluxFrescoRunner):
    """Runs ``FluxKontextPipeline.__call__``'s job with Fresco's stages; the reference image stays whole."""

    pipeline_class = FluxKontextPipeline
    pads_masked = False

    def check(self, call: CallArguments) -> CallArguments:
        pipe = self.pipe
        # stock's sizes: the requested aspect ratio at max_area pixels, floored to whole packed latents
        height = call.height or pipe.default_sample_size * pipe.vae_scale_factor
        width = call.width or pipe.default_sample_size * pipe.vae_scale_factor
        aspect_ratio = width / height
        multiple = pipe.vae_scale_factor * 2
        resized_width = round((call.max_area * aspect_ratio) ** 0.5) // multiple * multiple
        resized_height = round((call.max_area / aspect_ratio) ** 0.5) // multiple * multiple
        if min(resized_height, resized_width) < multiple:  # stock would return an empty picture
            raise ValueError(f"max_area={call.max_area} at height={height}, width={width} leaves a "
                             f"{resized_height}x{resized_width} picture; give a max_area of at least "
                             f"{multiple}x{multiple} pixels at that aspect ratio (stock's default is 1024**2)")
        if (resized_height, resized_width) != (height, width):
            kontext_logger.warning(f"Generation `height` and `width` have been adjusted to {resized_height} and "
                                   f"{resized_width} to fit the model requirements.")
        return super().check(call.resolved(height=resized_height, width=resized_width))

    def geometry(self, call: CallArguments) -> TokenGeometry:
        try:
            return super().geometry(call)
        except ValueError as error:  # the sizes were stock's resize of the caller's to max_area: say so
            raise ValueError(f"{error}. FluxKontextPipeline resizes the picture to max_area={call.max_area} pixels at "
                             "the requested aspect ratio: choose max_area (or the aspect ratio) so that its sides "
                             "come out as such multiples") from None

    def encode(self, call: CallArguments, device: torch.device) -> tuple[dict[str, Any], dict[str, Any] | None]:
        text, negative = super().encode(call, device)
        reference, reference_ids = self.reference(call, text["prompt_embeds"].dtype, device)
        if reference is not None:  # both guidance branches see the same reference
            for conditioning in (text, negative):
                if conditioning is not None:
                    conditioning.update(reference=reference, reference_ids=reference_ids)
        return text, negative

    def reference(self, call: CallArguments, dtype: torch.dtype,
                  device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The reference image's packed latents (one row per output) and positions, as stock prepares them: resized to
        the nearest preferred Kontext resolution (unless ``_auto_resize=False``), then encoded by the pipeline's own
        ``prepare_latents`` (the VAE's mode: no noise drawn)."""
        pipe, image = self.pipe, call.image
        if image is None:
            return None, None
        if not (isinstance(image, torch.Tensor) and image.size(1) == pipe.latent_channels):
            first = image[0] if isinstance(image, list) else image
            image_height, image_width = pipe.image_processor.get_default_height_width(first)
            aspect_ratio = image_width / image_height
            if call.argument("_auto_resize"):
                _, image_width, image_height = min(
                    (abs(aspect_ratio - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
            multiple = pipe.vae_scale_factor * 2
            image_width, image_height = image_width // multiple * multiple, image_height // multiple * multiple
            image = pipe.image_processor.resize(image, image_height, image_width)
            image = pipe.image_processor.preprocess(image, image_height, image_width)
        channels = pipe.transformer.config.in_channels // 4
        placeholder = torch.empty(0)  # the edited image's noise comes from initial_noise, in stock's order
        _, reference, _, reference_ids = pipe.prepare_latents(image, self.batch_size(call), channels, call.height,
                                                              call.width, dtype, device, call.generator, placeholder)
        return reference, reference_ids

    def stock_noise(self, call: CallArguments, count: int, geometry: TokenGeometry, dtype: torch.dtype,
                    device: torch.device) -> torch.Tensor:
        return self.pipe.prepare_latents(None, count, geometry.channels, call.height, call.width, dtype, device,
                                         call.generator)[0]
