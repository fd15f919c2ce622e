"""Fresco for diffusers' HunyuanVideo15Pipeline and HunyuanVideo15ImageToVideoPipeline (HunyuanVideo-1.5).

HunyuanVideo's pattern (spatial stages on 3-D grids; a mixed coarse / fine set goes as a one-row strip while a hook on
``transformer.rope`` answers at the tokens' real positions, with the same rotary formula) on 1.5's pipeline. What
differs: the transformer reads the latents with a conditioning latent and a mask appended on the channels (zeros for
text to video, as stock builds them), and guidance is the pipeline's own guider, asked at every step exactly as stock
asks it (its state, which branches it wants, its combination), so a guider with a step range or a rescale works
unchanged.

Image to video: stock appends the picture's latent (on the first latent frame, zeros after it) and a mask (1 on that
frame) to every token's channels, and its SigLIP features as a third text stream. Under Fresco both appended parts
are read like the noise field, by each token's own coordinates: a half-resolution token gets the mean of the four
latent pixels it covers (the picture's latent pooled as a sketch of it), so a sketch, a promotion round and the full
resolution all see the same picture. A mean-flow transformer (the step-distilled checkpoint) also gets the time the
step lands on, as stock gives it the next timestep.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline
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

__all__ = ["HunyuanVideo15FrescoRunner", "HunyuanVideo15ImageToVideoFrescoRunner"]

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
        self.check_parallelism()
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

    def check_parallelism(self) -> None:
        pipe = self.pipe
        if context_parallel_of(pipe.transformer) is None:
            return
        from .hunyuan_video_parallel import has_hunyuan_video_parallelism

        if not has_hunyuan_video_parallelism(pipe.transformer):  # diffusers has no plan; one's own is unchecked
            raise ValueError(
                f"Fresco runs {type(pipe).__name__} under context parallelism through fresco_plugin.integrations."
                "hunyuan_video_parallel.enable_hunyuan_video_parallelism only (diffusers has no plan for it); "
                "enable parallelism with it, or call remove_fresco(pipe)")

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
            lambda: pipe.prepare_latents(count, geometry.channels, *self.frame_size(call), call.num_frames, dtype,
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


class HunyuanVideo15ImageToVideoFrescoRunner(HunyuanVideo15FrescoRunner):
    """Runs ``HunyuanVideo15ImageToVideoPipeline.__call__``'s job with Fresco's stages; the picture's latent and mask
    are read at each token's coordinates."""

    pipeline_class = HunyuanVideo15ImageToVideoPipeline

    def __init__(self, pipe: Any, config: FrescoConfig):
        if pipe.transformer.config.patch_size != 1:  # the appended channels join each token's own channels
            raise ValueError(f"this HunyuanVideo-1.5 transformer has {pipe.transformer.config.patch_size}x"
                             f"{pipe.transformer.config.patch_size} patches; Fresco's image to video needs 1x1 ones, "
                             "as the released checkpoints have")
        super().__init__(pipe, config)

    def check(self, call: CallArguments) -> CallArguments:
        pipe = self.pipe
        self.check_parallelism()
        pipe.check_inputs(
            prompt=call.prompt, image=call.image, negative_prompt=call.negative_prompt,
            prompt_embeds=call.prompt_embeds, negative_prompt_embeds=call.negative_prompt_embeds,
            prompt_embeds_mask=call.prompt_embeds_mask, negative_prompt_embeds_mask=call.negative_prompt_embeds_mask,
            prompt_embeds_2=call.prompt_embeds_2, prompt_embeds_mask_2=call.prompt_embeds_mask_2,
            negative_prompt_embeds_2=call.negative_prompt_embeds_2,
            negative_prompt_embeds_mask_2=call.negative_prompt_embeds_mask_2,
        )
        return call

    def frame_size(self, call: CallArguments) -> tuple[int, int]:
        """Stock's: the bucket of the pipeline's target size closest to the picture's aspect ratio."""
        image = call.image
        return self.pipe.video_processor.calculate_default_height_width(
            height=image.size[1], width=image.size[0], target_size=self.pipe.target_size)

    def _picture(self, call: CallArguments) -> Any:
        height, width = self.frame_size(call)
        return call.memoized("picture", lambda: self.pipe.video_processor.resize(call.image, height=height,
                                                                                 width=width, resize_mode="crop"))

    def denoiser(self, call: CallArguments, text: dict[str, Any], negative: dict[str, Any] | None, count: int,
                 geometry: TokenGeometry, device: torch.device) -> StripDenoiser:
        pipe = self.pipe
        dtype = pipe.transformer.dtype
        picture = self._picture(call)
        height, width = self.frame_size(call)
        shape = (count, geometry.channels, geometry.num_frames, geometry.rows, geometry.cols)
        latent, mask = pipe.prepare_cond_latents_and_mask(
            latents=torch.empty(shape, device="meta"), image=picture, batch_size=count, height=height, width=width,
            dtype=dtype, device=device)
        # padded like the noise field (odd sizes round the coarse grid up) by repeating the edge
        coarsest = max(self.config.stage_levels)
        rows, cols = geometry.grid(coarsest)
        appended = torch.cat([latent, mask], dim=1)
        pad = ((cols << coarsest) - geometry.cols, (rows << coarsest) - geometry.rows)
        if any(pad):
            flat = appended.flatten(1, 2)
            appended = torch.nn.functional.pad(flat, (0, pad[0], 0, pad[1]), mode="replicate").unflatten(
                1, appended.shape[1:3])
        denoiser = _HunyuanVideo15ImageDenoiser(pipe, text, negative, 1.0)
        denoiser.attention_kwargs = call.attention_kwargs
        denoiser.condition = NoiseField(appended, gain=1.0)  # a clean latent: the plain mean at coarse tokens
        denoiser.condition_geometry = replace(geometry, channels=appended.shape[1])
        denoiser.image_embeds = pipe.encode_image(image=picture, batch_size=count, device=device, dtype=dtype)
        denoiser.timestep_scale = float(pipe.scheduler.config.num_train_timesteps)
        return self.placed(denoiser, geometry)


class _HunyuanVideo15Denoiser(StripDenoiser):
    attention_kwargs: dict[str, Any] | None
    split_text_tokens = 0  # the only plan Fresco follows here pads the joint text to the degree itself

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


class _HunyuanVideo15ImageDenoiser(_HunyuanVideo15Denoiser):
    """Image to video: each forward's tokens carry the picture's latent and mask read at their own coordinates."""

    condition: NoiseField  # (B, C + 1, F, H, W): the picture's latent on the first frame and the mask
    condition_geometry: TokenGeometry
    image_embeds: torch.Tensor
    timestep_scale: float
    _appended: torch.Tensor | None = None  # this step's condition at the layout's tokens, (B, N, C + 1)
    _read_for: object = None  # the layout _appended was read for: it changes only at a switch or a round

    def __call__(self, latents: torch.Tensor, positions: torch.Tensor, step: Step) -> torch.Tensor:
        if step.layout is not self._read_for:  # the layout changes only at a switch or a round
            field = self.condition
            if self.images != slice(None):  # one image sampled on its own (a promotion threshold)
                field = field.select(range(field.level(0).shape[0])[self.images])
            self._appended = field.tokens(step.layout, self.condition_geometry, step.levels).to(latents.dtype)
            self._read_for = step.layout
        return super().__call__(latents, positions, step)

    def forward(self, text: dict[str, Any], latents: torch.Tensor, positions: torch.Tensor, step: Step,
                rows: slice) -> torch.Tensor:
        appended = self._appended
        if rows != self.images:  # one image of a batch whose layouts differ
            offset = self.images.start or 0
            appended = appended[rows.start - offset:rows.stop - offset]
        return super().forward(text, torch.cat([latents, appended], dim=-1), positions, step, rows)

    def call_transformer(self, hidden: torch.Tensor, text: dict[str, Any], step: Step, rows: slice) -> torch.Tensor:
        transformer = self.pipe.transformer
        hidden = hidden.to(transformer.dtype)
        batch = hidden.shape[0]
        timestep_r = None
        if transformer.config.use_meanflow:  # stock: the next step's timestep, 0 after the last
            timestep_r = (step.next_sigma * self.timestep_scale).expand(batch).to(hidden.dtype)
        return transformer(
            hidden_states=hidden,
            image_embeds=rows_for(self.image_embeds, rows),
            timestep=step.timestep.expand(batch).to(hidden.dtype),
            timestep_r=timestep_r,
            attention_kwargs=self.attention_kwargs,
            return_dict=False,
            **{name: rows_for(value, rows) for name, value in text.items()},
        )[0]
