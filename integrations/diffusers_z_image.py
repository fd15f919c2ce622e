"""Fresco for diffusers' ZImagePipeline (Z-Image and the few-step Z-Image-Turbo).

Z-Image's transformer takes a list of latent images, patchifies each itself (2x2 patches) and looks its rotary
embedding up in a table by each token's integer grid position (after the caption's). A uniform stage goes in as stock
does, a list of grids. A mixed coarse / fine set is not a grid: it goes as a one-row strip per image, and for that one
forward the transformer's rope lookup answers the strip's image tokens at their real (possibly fractional) positions,
with the table's own formula (equal to the table at integer positions: a test), tabulated on the host before sampling
at every position the call's layouts can hold and read on the device, so no layout waits for the device. The lookup
is a plain object on the transformer, not a module, so Fresco wraps it per transformer while any runner uses it and
restores it after.

Guidance is stock's: one forward with the conditional and unconditional captions together, ``pos + s * (pos - neg)``,
the optional renormalisation to the conditional norm, and no guidance at steps past ``cfg_truncation``. The model
predicts the negative velocity at time ``1 - sigma``.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from diffusers import ZImagePipeline
from diffusers.pipelines.z_image.pipeline_output import ZImagePipelineOutput

from fresco_plugin.config import FrescoConfig
from fresco_plugin.layout import TokenGeometry, pack, unpack
from fresco_plugin.noise import FreshNoise, NoiseField
from fresco_plugin.sampler import Step
from fresco_plugin.schedule import StagePlan, StageSchedule

from ._context_parallel import context_parallel_of
from ._diffusers_runner import CallArguments, TransformerDenoiser, _compose
from .diffusers_flux import FluxFrescoRunner

__all__ = ["ZImageFrescoRunner", "z_image_rope_at"]


def z_image_rope_at(rope: Any, positions: torch.Tensor) -> torch.Tensor:
    """Z-Image's rotary embedding at ``(N, 3)`` positions (caption-offset frame, row, col; may be fractional): the
    formula ``RopeEmbedder`` tabulates, in the same precision, so integer positions give its table entries exactly."""
    parts = []
    for axis, dim in enumerate(rope.axes_dims):
        inverse = 1.0 / (rope.theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device="cpu") / dim))
        angles = torch.outer(positions[:, axis].to(device="cpu", dtype=torch.float64), inverse).float()
        parts.append(torch.polar(torch.ones_like(angles), angles).to(torch.complex64))
    return torch.cat(parts, dim=-1).to(positions.device)


class _SpatialRope:
    """``z_image_rope_at``'s row and column part at the positions of one call's layouts, read on the device: the
    formula runs on the host (as the stock table's does), so working it out per layout would wait for the device to
    hand the positions back. Layout positions are multiples of ``1 / 2^(level + 1)`` from -1/2 up to the grid's size
    (``TokenLayout.positions``: token centres or corners counted on one level's grid), so the formula is tabulated at
    every such multiple before sampling and each layout's positions index that table."""

    def __init__(self, rope: Any, extent: int, coarsest_level: int, device: torch.device):
        self.denominator = 2 ** (coarsest_level + 1)
        values = torch.arange(-self.denominator // 2, extent * self.denominator + 1,
                              dtype=torch.float64) / self.denominator
        frame, rows = (d // 2 for d in rope.axes_dims[:2])
        table = z_image_rope_at(rope, torch.stack([torch.zeros_like(values), values, values], dim=1))
        self.rows, self.cols = table[:, frame:frame + rows].to(device), table[:, frame + rows:].to(device)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (positions, their rows' and columns' part)

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` positions on the device: ``(N, (rows + cols) / 2)`` complex, once per layout (the sampler passes
        one positions tensor per layout)."""
        if self._last is None or self._last[0] is not positions:
            index = (positions[:, 1:] * self.denominator).round().long() + self.denominator // 2
            self._last = (positions, torch.cat([self.rows[index[:, 0]], self.cols[index[:, 1]]], dim=-1))
        return self._last[1]


class _StripRope:
    """Stands in for a transformer's ``rope_embedder`` while Fresco runners use it: the stock lookup, except for the
    one forward a runner arms it for, whose first lookup (the image tokens'; the caption's comes after) takes the
    strips' tokens' row and column part from the runner."""

    def __init__(self, stock: Any):
        self.stock = stock
        self.owners: weakref.WeakSet = weakref.WeakSet()
        # (the strip tokens' row and column part, tokens per strip, padded length)
        self.armed: tuple[torch.Tensor, int, int] | None = None

    def __getattr__(self, name: str) -> Any:  # axes_dims, theta, freqs_cis, ...: the stock lookup's
        return getattr(self.__dict__["stock"], name)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if self.armed is None:
            return self.stock(ids)
        spatial, tokens, padded = self.armed
        self.armed = None
        # the frame axis (the caption's length) is an integer: the table answers it, with the strip's row and column
        # zeroed (its column index can pass the table's end); rows and columns come from the runner
        strips = ids.clone()
        for start in range(0, ids.shape[0], padded):
            strips[start:start + tokens, 1:] = 0
        out = self.stock(strips)
        for start in range(0, ids.shape[0], padded):
            out[start:start + tokens, self.stock.axes_dims[0] // 2:] = spatial
        return out

    def __reduce_ex__(self, protocol: int) -> tuple:
        # a pickled or deep-copied transformer is stock: a Fresco pipeline's copy applies Fresco again, which wraps
        return _stock_rope, (self.stock,)


def _stock_rope(stock: Any) -> Any:
    return stock


def _strip_rope(transformer: Any, owner: Any) -> _StripRope:
    rope = transformer.rope_embedder
    if not isinstance(rope, _StripRope):
        rope = _StripRope(rope)
        transformer.rope_embedder = rope
    rope.owners.add(owner)
    weakref.finalize(owner, _release, weakref.ref(transformer), rope)
    return rope


def _release(transformer_ref: weakref.ref, rope: _StripRope) -> None:
    transformer = transformer_ref()
    if transformer is not None and transformer.rope_embedder is rope and not len(rope.owners):
        transformer.rope_embedder = rope.stock


class ZImageFrescoRunner(FluxFrescoRunner):
    """Runs ``ZImagePipeline.__call__``'s job with Fresco's stages (FLUX's dynamic shift and unshifted sigmas)."""

    pipeline_class = ZImagePipeline
    output_class = ZImagePipelineOutput
    pads_masked = False

    def __init__(self, pipe: Any, config: FrescoConfig):
        super().__init__(pipe, config)
        self.rope = _strip_rope(pipe.transformer, self)

    def close(self, fresco_class: type) -> None:
        self.rope.owners.discard(self)
        _release(weakref.ref(self.pipe.transformer), self.rope)
        super().close(fresco_class)

    def check(self, call: CallArguments) -> CallArguments:
        pipe = self.pipe
        if context_parallel_of(pipe.transformer) is not None:
            raise ValueError("Fresco does not run ZImagePipeline under context parallelism (diffusers has no plan for "
                             "it; one passed by hand is unchecked); disable parallelism or call remove_fresco(pipe)")
        height, width = call.height or 1024, call.width or 1024
        multiple = pipe.vae_scale_factor * 2
        for name, value in (("height", height), ("width", width)):
            if value % multiple:  # stock's own check, in its words
                raise ValueError(f"{name.capitalize()} must be divisible by {multiple} (got {value}). "
                                 f"Please adjust the {name} to a multiple of {multiple}.")
        return call.resolved(height=height, width=width)

    def geometry(self, call: CallArguments) -> TokenGeometry:
        pipe = self.pipe
        unit = pipe.vae_scale_factor * 2
        geometry = TokenGeometry(pipe.transformer.in_channels, 2, call.height // unit, call.width // unit)
        coarsest = max(self.config.stage_levels)
        if min(geometry.rows, geometry.cols) < 1 << coarsest or not geometry.divides(coarsest):
            multiple = unit << coarsest
            raise ValueError(f"height={call.height}, width={call.width} give a {geometry.rows}x{geometry.cols} token "
                             f"grid, which does not divide into whole tokens at stage scale 1/{1 << coarsest}; use a "
                             f"height and width that are multiples of {multiple}, or drop that stage from "
                             "FrescoConfig.stage_scales")
        return geometry

    def call_state(self, call: CallArguments) -> dict[str, Any]:
        return {"guidance_scale": call.guidance_scale, "joint_attention_kwargs": call.joint_attention_kwargs,
                "cfg_normalization": call.cfg_normalization, "cfg_truncation": call.cfg_truncation}

    def encode(self, call: CallArguments, device: torch.device) -> tuple[dict[str, Any], dict[str, Any] | None]:
        pipe = self.pipe
        guided = pipe.do_classifier_free_guidance
        if call.prompt_embeds is not None and call.prompt is None:
            if guided and call.negative_prompt_embeds is None:  # stock's own refusal
                raise ValueError("When `prompt_embeds` is provided without `prompt`, `negative_prompt_embeds` must "
                                 "also be provided for classifier-free guidance.")
            embeds, negative = call.prompt_embeds, call.negative_prompt_embeds
        else:
            embeds, negative = pipe.encode_prompt(
                prompt=call.prompt, negative_prompt=call.negative_prompt, do_classifier_free_guidance=guided,
                prompt_embeds=call.prompt_embeds, negative_prompt_embeds=call.negative_prompt_embeds, device=device,
                max_sequence_length=call.max_sequence_length)
        repeat = call.num_images_per_prompt
        embeds = [e for e in embeds for _ in range(repeat)]
        negative = [e for e in negative for _ in range(repeat)] if guided and negative else None
        return {"prompt_embeds": embeds}, ({"prompt_embeds": negative} if negative else None)

    def batch_size(self, call: CallArguments) -> int:
        prompt = call.prompt
        prompts = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else len(call.prompt_embeds)
        return prompts * call.num_images_per_prompt

    def initial_noise(self, call: CallArguments, count: int, geometry: TokenGeometry, text: dict[str, Any],
                      device: torch.device) -> tuple[NoiseField, FreshNoise | None]:
        pipe = self.pipe
        return self.noise(call, count, geometry, (count, geometry.channels, geometry.rows * 2, geometry.cols * 2),
                          lambda: pipe.prepare_latents(count, geometry.channels, call.height, call.width,
                                                       torch.float32, device, call.generator),
                          torch.float32, device)

    def latent_pixels(self, latents: torch.Tensor, geometry: TokenGeometry) -> torch.Tensor:
        return latents  # stock's latents are unpacked already

    def schedules(self, stages: list[StagePlan], geometry: TokenGeometry, device: torch.device,
                  call: CallArguments) -> list[StageSchedule]:
        schedules = super().schedules(stages, geometry, device, call)
        # stock turns guidance off at the steps whose 1 - t/1000 passes cfg_truncation, read once per call
        truncation = call.cfg_truncation
        self._unguided_steps = set()
        if self.pipe.do_classifier_free_guidance and truncation is not None and float(truncation) <= 1:
            for stage, schedule in zip(stages, schedules):
                for offset, t in enumerate(schedule.timesteps.tolist()):
                    if (1000 - t) / 1000 > truncation:
                        self._unguided_steps.add(stage.first_step + offset)
        return schedules

    def denoiser(self, call: CallArguments, text: dict[str, Any], negative: dict[str, Any] | None, count: int,
                 geometry: TokenGeometry, device: torch.device) -> TransformerDenoiser:
        denoiser = _ZImageDenoiser(self.pipe, text, negative, call.guidance_scale)
        denoiser.rope, denoiser.unguided_steps = self.rope, self._unguided_steps
        denoiser.spatial_rope = _SpatialRope(self.rope, max(geometry.rows, geometry.cols),
                                             max(self.config.stage_levels), device)
        return denoiser

    def decode(self, latents: torch.Tensor, geometry: TokenGeometry, call: CallArguments) -> Any:
        latents = unpack(latents, geometry.rows, geometry.cols, 2)
        if call.output_type == "latent":
            return latents
        vae = self.pipe.vae
        latents = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type=call.output_type)


class _ZImageDenoiser(TransformerDenoiser):
    rope: _StripRope
    spatial_rope: _SpatialRope
    unguided_steps: set[int]
    _grid_cache: tuple[torch.Tensor, tuple[int, int] | None] | None = None

    def __call__(self, latents: torch.Tensor, positions: torch.Tensor, step: Step) -> torch.Tensor:
        self.start_step(latents, step)
        scale = 0.0 if step.index in self.unguided_steps else self.cfg_scale
        guided = self.negative is not None and scale > 0
        outputs = []
        for suffix, group, image_positions in self._groups(positions):
            with self.caches.scope("cfg" + suffix):
                outputs.append(self._forward(latents[group], image_positions, step, _compose(self.images, group),
                                             guided, scale))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _forward(self, latents: torch.Tensor, positions: torch.Tensor, step: Step, rows: slice, guided: bool,
                 scale: float) -> torch.Tensor:
        pipe = self.pipe
        transformer = pipe.transformer
        count, tokens = latents.shape[:2]
        grid = (step.grid[1:] if step.grid else None) if step.grid_known else self._grid(positions)
        images = unpack(latents, *(grid or (1, tokens)), 2).to(transformer.dtype)  # (B, C, H, W) or a 1-row strip
        captions = self.text["prompt_embeds"][rows]
        if guided:
            images = images.repeat(2, 1, 1, 1)
            captions = captions + self.negative["prompt_embeds"][rows]
        timestep = (1000 - step.timestep.expand(images.shape[0])) / 1000
        if grid is None:
            # the transformer pads each image to 32 tokens
            self.rope.armed = (self.spatial_rope(positions), tokens, tokens + (-tokens % 32))
        try:
            out = transformer(list(images.unsqueeze(2).unbind(dim=0)), timestep, captions,
                              joint_attention_kwargs=pipe.joint_attention_kwargs, return_dict=False)[0]
        finally:
            self.rope.armed = None
        if guided:
            prediction = []
            for cond, uncond in zip(out[:count], out[count:]):
                cond, uncond = cond.float(), uncond.float()
                combined = cond + scale * (cond - uncond)
                if pipe._cfg_normalization and float(pipe._cfg_normalization) > 0.0:  # stock's renormalisation
                    limit = torch.linalg.vector_norm(cond) * float(pipe._cfg_normalization)
                    norm = torch.linalg.vector_norm(combined)
                    if norm > limit:
                        combined = combined * (limit / norm)
                prediction.append(combined)
            prediction = torch.stack(prediction)
        else:
            prediction = torch.stack([o.float() for o in out])
        return pack(-prediction.squeeze(2), 2)

    def _grid(self, positions: torch.Tensor) -> tuple[int, int] | None:
        """(rows, cols) when ``positions`` is a whole raster-ordered grid (a uniform stage), else None; worked out
        once per layout, since it reads the device."""
        if self._grid_cache is not None and self._grid_cache[0] is positions:
            return self._grid_cache[1]
        rows, cols = (int(v) for v in positions[:, 1:].amax(dim=0).long() + 1)
        if rows * cols != positions.shape[0]:
            self._grid_cache = (positions, None)
            return None
        axes = torch.meshgrid(torch.arange(rows, device=positions.device, dtype=positions.dtype),
                              torch.arange(cols, device=positions.device, dtype=positions.dtype), indexing="ij")
        whole = torch.stack(axes, dim=-1).reshape(-1, 2)
        self._grid_cache = (positions, (rows, cols) if torch.equal(whole, positions[:, 1:]) else None)
        return self._grid_cache[1]
