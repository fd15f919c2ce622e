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
from diffusers import QwenImagePipeline
from diffusers.pipelines.qwenimage.pipeline_output import QwenImagePipelineOutput
from diffusers.pipelines.qwenimage.pipeline_qwenimage import logger as qwen_logger

from fresco_plugin.layout import TokenGeometry
from fresco_plugin.sampler import Step

from ._diffusers_runner import CallArguments, TransformerDenoiser, rows_for
from ._positions import GridPositionsRunner, PositionHook
from .diffusers_flux import FluxFrescoRunner

__all__ = ["QwenImageFrescoRunner", "qwen_guidance", "qwen_rope_at_positions"]


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
    """The rope module answers (image, text) frequencies; the text ones depend on the grid named in ``img_shapes``, so
    they stay stock's and only the image ones move to the tokens' positions."""

    def __call__(self, module: torch.nn.Module, args: tuple, output: Any) -> Any:
        if self.positions is None:
            return None
        _, rows, cols = args[0][0][0]  # img_shapes: per image, a list of (frames, rows, cols)
        return self.positions_at(module, self.positions, rows, cols), output[1]


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
                num_images_per_prompt=call.num_images_per_prompt, max_sequence_length=call.max_sequence_length)))

        text = encode(call.prompt, call.prompt_embeds, call.prompt_embeds_mask)
        negative = None
        if call.true_cfg_scale > 1 and has_negative:
            negative = encode(call.negative_prompt, call.negative_prompt_embeds, call.negative_prompt_embeds_mask)
        return text, negative

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
        self.position_hook.positions = positions
        try:
            return self.pipe.transformer(
                hidden_states=latents,
                timestep=step.timestep.expand(latents.shape[0]).to(latents.dtype) / 1000,
                guidance=rows_for(self.guidance, rows),
                encoder_hidden_states_mask=rows_for(text["prompt_embeds_mask"], rows),
                encoder_hidden_states=rows_for(text["prompt_embeds"], rows),
                img_shapes=[[(1, grid_rows, grid_cols)]] * latents.shape[0],
                attention_kwargs=self.pipe.attention_kwargs,
                return_dict=False,
            )[0]
        finally:
            self.position_hook.positions = None
