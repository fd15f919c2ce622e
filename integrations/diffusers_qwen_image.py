"""Fresco for diffusers' QwenImagePipeline (Qwen-Image text to image).

Qwen-Image packs latents into 2x2 tokens as FLUX does (so the FLUX runner's geometry, noise and schedule serve), but
its transformer builds the rotary embedding from ``img_shapes``: image positions centred on the grid and text
positions starting past the grid's half-size. A :class:`PositionHook` on ``pos_embed`` answers the image part at the
tokens' real positions, while the text part stays what stock computes for the grid the positions count on (the stage's,
as a stock call at that size). True CFG rescales the combined prediction to the conditional one's norm per token, as
stock does; the scheduler's terminal shift stretches the whole schedule before each stage takes its slice.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import QwenImageEditPipeline, QwenImagePipeline
from diffusers.pipelines.qwenimage.pipeline_output import QwenImagePipelineOutput
from diffusers.pipelines.qwenimage.pipeline_qwenimage import logger as qwen_logger
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions

from fresco_plugin.layout import TokenGeometry
from fresco_plugin.sampler import Step

from ._diffusers_runner import CallArguments, TransformerDenoiser, rows_for
from ._positions import GridPositionsRunner, PositionHook, split_like_the_engine, whole_stock_answer
from .diffusers_flux import FluxFrescoRunner

__all__ = ["QwenImageEditFrescoRunner", "QwenImageFrescoRunner", "qwen_guidance", "qwen_rope_at_positions"]


def qwen_rope_at_positions(rope: torch.nn.Module, positions: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``QwenEmbedRope``'s image frequencies at ``(N, 3)`` frame/row/col positions on a ``rows x cols`` grid: stock's
    table entries at integer positions (``scale_rope`` centres the grid: row ``r`` sits at ``r - ceil(rows / 2)``),
    the same formula between them."""
    frame, row, col = positions.to(torch.float32).unbind(-1)
    if rope.scale_rope:
        row, col = row - (rows - rows // 2), col - (cols - cols // 2)
    parts = []
    for coordinate, dim in zip((frame, row, col), rope.axes_dim):
        exponents = torch.arange(0, dim, 2, device=positions.device).to(torch.float32).div(dim)
        inverse = 1.0 / torch.pow(rope.theta, exponents)
        angles = torch.outer(coordinate, inverse)
        parts.append(torch.polar(torch.ones_like(angles), angles))
    return torch.cat(parts, dim=1)


class _QwenPositionHook(PositionHook):
    """The rope module answers (image, text) frequencies for the grids named in ``img_shapes``: the generated one,
    then any reference image's (editing). Only the generated grid's part moves to the tokens' positions; the reference's
    and the text's (which start past the largest grid's half-size) stay stock's."""

    _frequencies: tuple[torch.Tensor, tuple[int, int], torch.Tensor] | None = None

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        if self.positions is None:
            return None
        _, rows, cols = args[0][0][0]  # img_shapes: per image, a list of (frames, rows, cols)
        # the sampler passes one positions tensor per layout: compute its frequencies once, not at every forward
        cached = self._frequencies
        if cached is None or cached[0] is not self.positions or cached[1] != (rows, cols):
            cached = self._frequencies = (self.positions, (rows, cols),
                                          self.positions_at(module, self.positions, rows, cols))
        images, text = whole_stock_answer(module, args, kwargs, output)
        return split_like_the_engine(module, (torch.cat([cached[2], images[rows * cols:]]), text))

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_frequencies": None}


def qwen_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Qwen-Image's true CFG: the usual combination, rescaled per token to the conditional prediction's norm."""
    combined = uncond + scale * (cond - uncond)
    return combined * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))


class QwenImageFrescoRunner(GridPositionsRunner, FluxFrescoRunner):
    """Runs ``QwenImagePipeline.__call__``'s job with Fresco's stages."""

    pipeline_class = QwenImagePipeline
    output_class = QwenImagePipelineOutput
    positions_module = "pos_embed"
    positions_at = staticmethod(qwen_rope_at_positions)
    position_hook_class = _QwenPositionHook
    pads_masked = False

    def check(self, call: CallArguments) -> CallArguments:
        pipe = self.pipe
        if getattr(pipe.transformer.config, "zero_cond_t", False):
            raise ValueError("Fresco does not run a zero_cond_t transformer yet (Qwen-Image-Edit-2511: it modulates "
                             "tokens by their index in the full grid); call remove_fresco(pipe) to use it")
        call = call.resolved(height=call.height or pipe.default_sample_size * pipe.vae_scale_factor,
                             width=call.width or pipe.default_sample_size * pipe.vae_scale_factor)
        pipe.check_inputs(
            call.prompt, call.height, call.width, negative_prompt=call.negative_prompt,
            prompt_embeds=call.prompt_embeds, negative_prompt_embeds=call.negative_prompt_embeds,
            prompt_embeds_mask=call.prompt_embeds_mask, negative_prompt_embeds_mask=call.negative_prompt_embeds_mask,
            callback_on_step_end_tensor_inputs=call.callback_on_step_end_tensor_inputs,
            max_sequence_length=call.max_sequence_length,
        )
        if pipe.transformer.config.guidance_embeds and call.guidance_scale is None:
            raise ValueError("guidance_scale is required for guidance-distilled model.")
        return call

    def call_state(self, call: CallArguments) -> dict[str, Any]:
        return {"guidance_scale": call.guidance_scale, "attention_kwargs": call.attention_kwargs or {}}

    def encode(self, call: CallArguments, device: torch.device) -> tuple[dict[str, Any], dict[str, Any] | None]:
        has_negative = call.negative_prompt is not None or call.negative_prompt_embeds is not None
        if call.true_cfg_scale > 1 and not has_negative:  # stock's own notices
            qwen_logger.warning(f"true_cfg_scale is passed as {call.true_cfg_scale}, but classifier-free guidance is "
                                "not enabled since no negative_prompt is provided.")
        elif call.true_cfg_scale <= 1 and has_negative:
            qwen_logger.warning(" negative_prompt is passed but classifier-free guidance is not enabled since "
                                "true_cfg_scale <= 1")

        def encode(prompt, embeds, mask):
            return dict(zip(("prompt_embeds", "prompt_embeds_mask"), self.pipe.encode_prompt(
                prompt=prompt, prompt_embeds=embeds, prompt_embeds_mask=mask, device=device,
                num_images_per_prompt=call.num_images_per_prompt, max_sequence_length=call.max_sequence_length,
                **self.prompt_image(call))))

        text = encode(call.prompt, call.prompt_embeds, call.prompt_embeds_mask)
        negative = None
        if call.true_cfg_scale > 1 and has_negative:
            negative = encode(call.negative_prompt, call.negative_prompt_embeds, call.negative_prompt_embeds_mask)
        return text, negative

    def prompt_image(self, call: CallArguments) -> dict[str, Any]:
        """What ``encode_prompt`` reads besides the text (editing: the reference picture)."""
        return {}

    def stock_noise(self, call: CallArguments, count: int, geometry: TokenGeometry, dtype: torch.dtype,
                    device: torch.device) -> torch.Tensor:
        return self.pipe.prepare_latents(count, geometry.channels, call.height, call.width, dtype, device,
                                         call.generator)

    def denoiser(self, call: CallArguments, text: dict[str, Any], negative: dict[str, Any] | None, count: int,
                 geometry: TokenGeometry, device: torch.device) -> TransformerDenoiser:
        denoiser = _QwenDenoiser(self.pipe, text, negative, call.true_cfg_scale, combine=qwen_guidance)
        denoiser.position_hook, denoiser.geometry = self.position_hook, geometry
        if self.pipe.transformer.config.guidance_embeds:
            denoiser.guidance = torch.full([1], call.guidance_scale, device=device, dtype=torch.float32).expand(count)
        elif call.guidance_scale is not None:
            qwen_logger.warning(f"guidance_scale is passed as {call.guidance_scale}, but ignored since the model is "
                                "not guidance-distilled.")
        return denoiser

    def decode(self, latents: torch.Tensor, geometry: TokenGeometry, call: CallArguments) -> Any:
        if call.output_type == "latent":
            return latents
        pipe = self.pipe
        latents = pipe._unpack_latents(latents, call.height, call.width, pipe.vae_scale_factor).to(pipe.vae.dtype)
        shape = (1, pipe.vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(pipe.vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
        inverse_std = 1.0 / torch.tensor(pipe.vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
        image = pipe.vae.decode(latents / inverse_std + mean, return_dict=False)[0][:, :, 0]
        return pipe.image_processor.postprocess(image, output_type=call.output_type)


class _QwenDenoiser(TransformerDenoiser):
    position_hook: PositionHook
    geometry: TokenGeometry
    guidance: torch.Tensor | None = None

    def forward(self, text: dict[str, Any], latents: torch.Tensor, positions: torch.Tensor, step: Step,
                rows: slice) -> torch.Tensor:
        grid_rows, grid_cols = self.geometry.grid(step.grid_level)  # the grid the positions count on, as stock's
        shapes, hidden = [(1, grid_rows, grid_cols)], latents
        reference = text.get("reference")
        if reference is not None:  # editing: the reference image's tokens after the generated ones, whole
            shapes.append(text["reference_shape"])
            hidden = torch.cat([latents, rows_for(reference, rows)], dim=1)
        self.position_hook.positions = positions
        try:
            return self.pipe.transformer(
                hidden_states=hidden,
                timestep=step.timestep.expand(latents.shape[0]).to(latents.dtype) / 1000,
                guidance=rows_for(self.guidance, rows),
                encoder_hidden_states_mask=rows_for(text["prompt_embeds_mask"], rows),
                encoder_hidden_states=rows_for(text["prompt_embeds"], rows),
                img_shapes=[shapes] * latents.shape[0],
                attention_kwargs=self.pipe.attention_kwargs,
                return_dict=False,
            )[0][:, :latents.shape[1]]
        finally:
            self.position_hook.positions = None


class QwenImageEditFrescoRunner(QwenImageFrescoRunner):
    """Runs ``QwenImageEditPipeline.__call__``'s job: the edited image is sketched and promoted while the reference's
    tokens ride along whole in every forward, with stock's rotary frequencies (frame 1 of ``img_shapes``)."""

    pipeline_class = QwenImageEditPipeline

    def reference_size(self, call: CallArguments) -> tuple[int, int]:
        """(height, width) stock gives the reference: the image's aspect ratio at a 1024x1024 area, in 32s."""
        size = call.image[0].size if isinstance(call.image, list) else call.image.size
        width, height, _ = calculate_dimensions(1024 * 1024, size[0] / size[1])
        return height, width

    def check(self, call: CallArguments) -> CallArguments:
        if call.image is None:
            raise ValueError("QwenImageEditPipeline needs image=, the picture to edit")
        height, width = self.reference_size(call)
        multiple = self.pipe.vae_scale_factor * 2
        return super().check(call.resolved(height=(call.height or height) // multiple * multiple,
                                           width=(call.width or width) // multiple * multiple))

    def prompt_image(self, call: CallArguments) -> dict[str, Any]:
        return {"image": self.pipe.image_processor.resize(call.image, *self.reference_size(call))}

    def encode(self, call: CallArguments, device: torch.device) -> tuple[dict[str, Any], dict[str, Any] | None]:
        text, negative = super().encode(call, device)
        pipe = self.pipe
        height, width = self.reference_size(call)
        image = pipe.image_processor.preprocess(self.prompt_image(call)["image"], height, width).unsqueeze(2)
        channels = pipe.transformer.config.in_channels // 4
        placeholder = torch.empty(0)  # the edited image's noise comes from initial_noise, in stock's order
        _, reference = pipe.prepare_latents(image, self.batch_size(call), channels, call.height, call.width,
                                            text["prompt_embeds"].dtype, device, call.generator, placeholder)
        shape = (1, height // pipe.vae_scale_factor // 2, width // pipe.vae_scale_factor // 2)
        for conditioning in (text, negative):  # both guidance branches see the same reference
            if conditioning is not None:
                conditioning.update(reference=reference, reference_shape=shape)
        return text, negative

    def stock_noise(self, call: CallArguments, count: int, geometry: TokenGeometry, dtype: torch.dtype,
                    device: torch.device) -> torch.Tensor:
        return self.pipe.prepare_latents(None, count, geometry.channels, call.height, call.width, dtype, device,
                                         call.generator)[0]
