"""Fresco for diffusers' FluxImg2ImgPipeline (FLUX.1 image to image).

Stock encodes the image, noises it to the first sigma its ``strength`` keeps (``scale_noise``) and runs the last steps
of its schedule. Under Fresco the same steps are the plan's: the first stage starts from the image at that stage's
resolution (the mean of the latent pixels each coarse token covers) noised by the coordinate-bound field to the
stage's first sigma, so a one-stage plan is the stock call bit for bit. A config that fixes its steps (every preset)
runs them as the strength-kept tail of the shortest stock schedule that keeps that many.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import FluxImg2ImgPipeline
from diffusers.utils.torch_utils import randn_tensor

from fresco_plugin.config import MAX_STEPS
from fresco_plugin.layout import TokenGeometry, pack
from fresco_plugin.schedule import StagePlan

from ._diffusers_runner import CallArguments
from .diffusers_flux import FluxFrescoRunner

__all__ = ["FluxImg2ImgFrescoRunner"]


def kept_steps(steps: int, strength: float) -> int:
    """How many of a ``steps``-step schedule stock runs at ``strength`` (its ``get_timesteps``)."""
    return steps - int(max(steps - min(steps * strength, steps), 0))


class FluxImg2ImgFrescoRunner(FluxFrescoRunner):
    """Runs ``FluxImg2ImgPipeline.__call__``'s job with Fresco's stages over the steps ``strength`` keeps."""

    pipeline_class = FluxImg2ImgPipeline

    def check(self, call: CallArguments) -> CallArguments:
        if call.latents is not None:
            raise ValueError("latents= is FluxImg2ImgPipeline's already-noised start; Fresco builds the start from "
                             "image= and the generator's noise: pass generator= instead (or call remove_fresco(pipe))")
        call = super().check(call)
        if self.config.stage_steps is None:
            if kept_steps(call.num_inference_steps, call.strength) < 1:  # stock's refusal, before any encoding
                raise ValueError(f"strength={call.strength} keeps no step of num_inference_steps="
                                 f"{call.num_inference_steps}; raise strength or num_inference_steps")
        elif kept_steps(MAX_STEPS, call.strength) < sum(self.config.stage_steps):
            raise ValueError(f"strength={call.strength} keeps fewer than this config's {sum(self.config.stage_steps)} "
                             f"steps of any schedule up to {MAX_STEPS} steps; raise strength")
        if isinstance(call.generator, list) and len(call.generator) != self.batch_size(call):
            raise ValueError(f"You have passed a list of generators of length {len(call.generator)}, but requested an "
                             f"effective batch size of {self.batch_size(call)}. Make sure the batch size matches the "
                             "length of the generators.")
        return call

    def checked_before_size(self, call: CallArguments) -> tuple[Any, ...]:
        return (call.strength,)

    def plan(self, call: CallArguments) -> list[StagePlan]:
        if self.config.stage_steps is not None:
            return super().plan(call)
        return super().plan(call.resolved(num_inference_steps=kept_steps(call.num_inference_steps, call.strength)))

    def base_sigmas(self, steps: int, call: CallArguments) -> np.ndarray:
        """The tail ``strength`` keeps of stock's schedule: of the call's ``num_inference_steps`` when the plan runs
        every step that keeps; for a plan that follows the call with fewer steps (``target_speedup``), the last
        ``steps`` of a schedule as much longer, so it starts where the stock call starts; for a config that fixes its
        steps, of the shortest schedule that keeps that many."""
        total, kept = call.num_inference_steps, kept_steps(call.num_inference_steps, call.strength)
        if steps == kept:
            return super().base_sigmas(total, call)[total - kept:]
        if self.config.stage_steps is None:
            total = max(steps, round(steps * total / kept))
            return super().base_sigmas(total, call)[total - steps:]
        total = next(n for n in range(steps, MAX_STEPS + 1) if kept_steps(n, call.strength) >= steps)
        return super().base_sigmas(total, call)[total - kept_steps(total, call.strength):]

    def clean_start(self, call: CallArguments, count: int, geometry: TokenGeometry, text: dict[str, Any],
                    device: torch.device) -> torch.Tensor:
        """The image's latent pixels, encoded as stock's ``prepare_latents`` encodes them (a sample of the VAE's
        posterior from the call's generator, then one copy per output)."""
        pipe = self.pipe
        image = pipe.image_processor.preprocess(call.image, height=call.height, width=call.width)
        image = image.to(device=device, dtype=text["prompt_embeds"].dtype)
        if image.shape[1] != pipe.latent_channels:
            image = pipe._encode_vae_image(image=image, generator=call.generator)
        if count % image.shape[0]:
            raise ValueError(f"Cannot duplicate `image` of batch size {image.shape[0]} to {count} text prompts.")
        return image.repeat(count // image.shape[0], 1, 1, 1)

    def stock_noise(self, call: CallArguments, count: int, geometry: TokenGeometry, dtype: torch.dtype,
                    device: torch.device) -> torch.Tensor:
        shape = (count, geometry.channels, geometry.rows * geometry.patch, geometry.cols * geometry.patch)
        return pack(randn_tensor(shape, generator=call.generator, device=device, dtype=dtype), geometry.patch)
