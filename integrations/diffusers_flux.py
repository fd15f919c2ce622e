"""Fresco for diffusers' FluxPipeline (FLUX.1-dev, FLUX.1-schnell and their fine-tunes).

The runner hosts the multi-stage loop inside the user's ``pipe(...)`` call: it reuses the pipeline's own
``check_inputs``, ``encode_prompt``, ``prepare_latents``, progress bar, callbacks, VAE decode and offload hooks, and
replaces only the denoising loop, since that loop fixes the token count, ``img_ids`` and ``mu`` once per call.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput

from fresco_plugin.config import FrescoConfig
from fresco_plugin.layout import TokenGeometry, TokenLayout, unpack
from fresco_plugin.noise import FreshNoise, NoiseField, seeds_from_generators
from fresco_plugin.sampler import SamplerResult, Step, min_score_history, sample
from fresco_plugin.schedule import StagePlan, StageSchedule, plan_stages, shift_sigmas, stage_base_sigmas
from fresco_plugin.transitions import USES_FRESH_NOISE

__all__ = ["FluxFrescoRunner"]

_UNSUPPORTED_ARGUMENTS = {
    "ip_adapter_image": "IP-Adapter",
    "ip_adapter_image_embeds": "IP-Adapter",
    "negative_ip_adapter_image": "IP-Adapter",
    "negative_ip_adapter_image_embeds": "IP-Adapter",
}


class FluxFrescoRunner:
    """Runs ``FluxPipeline.__call__``'s job with Fresco's stages; one per pipeline instance."""

    def __init__(self, pipe: Any, config: FrescoConfig):
        if type(pipe).__call__ is not FluxPipeline.__call__:
            raise ValueError(
                f"{type(pipe).__name__} overrides FluxPipeline.__call__; Fresco's FLUX adapter hosts FluxPipeline's "
                "own loop, so a pipeline with its own __call__ needs its own adapter (fresco_plugin.register_adapter)"
            )
        scheduler = pipe.scheduler
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError(
                f"Fresco on FLUX needs a FlowMatchEulerDiscreteScheduler, this pipeline has "
                f"{type(scheduler).__name__}; set pipe.scheduler back to FlowMatchEulerDiscreteScheduler first"
            )
        if scheduler.config.get("stochastic_sampling", False) or scheduler.config.get("invert_sigmas", False):
            raise ValueError(
                "Fresco runs the deterministic Euler flow step; the scheduler's stochastic_sampling / invert_sigmas "
                "must be False"
            )
        self.pipe = pipe
        self.config = config
        self.min_history = min_score_history(config)
        self.last_run: SamplerResult | None = None
        if config.stage_steps is not None:
            plan_stages(config, None, min_score_history=self.min_history)  # fail at apply time, not mid-call
        self._signature = inspect.signature(type(pipe).__call__)

    def close(self) -> None:
        self.last_run = None

    # ------------------------------------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        bound = self._signature.bind(self.pipe, *args, **kwargs)
        explicit = set(bound.arguments)
        bound.apply_defaults()
        a = dict(bound.arguments)
        a.pop(next(iter(self._signature.parameters)))  # self
        if a.pop("kwargs", None):
            raise ValueError("unexpected keyword arguments for FluxPipeline.__call__")
        return self._run(a, explicit)

    def _run(self, a: dict[str, Any], explicit: set[str]) -> Any:
        pipe, config = self.pipe, self.config
        for name, feature in _UNSUPPORTED_ARGUMENTS.items():
            if a[name] is not None:
                raise ValueError(f"Fresco does not support {feature} yet ({name}); call remove_fresco(pipe) to use it")
        if a["sigmas"] is not None:
            raise ValueError(
                "Fresco builds one sigma schedule per stage; drop sigmas= or set FrescoConfig.stage_shifts instead"
            )
        height = a["height"] or pipe.default_sample_size * pipe.vae_scale_factor
        width = a["width"] or pipe.default_sample_size * pipe.vae_scale_factor
        pipe.check_inputs(
            a["prompt"], a["prompt_2"], height, width,
            negative_prompt=a["negative_prompt"], negative_prompt_2=a["negative_prompt_2"],
            prompt_embeds=a["prompt_embeds"], negative_prompt_embeds=a["negative_prompt_embeds"],
            pooled_prompt_embeds=a["pooled_prompt_embeds"],
            negative_pooled_prompt_embeds=a["negative_pooled_prompt_embeds"],
            callback_on_step_end_tensor_inputs=a["callback_on_step_end_tensor_inputs"],
            max_sequence_length=a["max_sequence_length"],
        )
        geometry = self._geometry(height, width)
        steps_asked = a["num_inference_steps"] if "num_inference_steps" in explicit else None
        stages = plan_stages(config, steps_asked, min_score_history=self.min_history)
        total_steps = stages[-1].last_step

        pipe._guidance_scale = a["guidance_scale"]
        pipe._joint_attention_kwargs = a["joint_attention_kwargs"] or {}
        pipe._current_timestep = None
        pipe._interrupt = False

        prompt = a["prompt"]
        batch_size = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else a["prompt_embeds"].shape[0]
        device = pipe._execution_device
        num_images = a["num_images_per_prompt"]
        lora_scale = pipe._joint_attention_kwargs.get("scale", None)
        has_negative = a["negative_prompt"] is not None or (
            a["negative_prompt_embeds"] is not None and a["negative_pooled_prompt_embeds"] is not None
        )
        true_cfg = a["true_cfg_scale"] > 1 and has_negative
        if true_cfg and a["prompt_embeds"] is not None and a["negative_prompt_embeds"] is not None:
            if a["prompt_embeds"].shape != a["negative_prompt_embeds"].shape:
                raise ValueError("`prompt_embeds` and `negative_prompt_embeds` must have the same shape")
        text = dict(zip(("prompt_embeds", "pooled", "text_ids"), pipe.encode_prompt(
            prompt=prompt, prompt_2=a["prompt_2"], prompt_embeds=a["prompt_embeds"],
            pooled_prompt_embeds=a["pooled_prompt_embeds"], device=device, num_images_per_prompt=num_images,
            max_sequence_length=a["max_sequence_length"], lora_scale=lora_scale,
        )))
        negative = None
        if true_cfg:
            negative = dict(zip(("prompt_embeds", "pooled", "text_ids"), pipe.encode_prompt(
                prompt=a["negative_prompt"], prompt_2=a["negative_prompt_2"],
                prompt_embeds=a["negative_prompt_embeds"], pooled_prompt_embeds=a["negative_pooled_prompt_embeds"],
                device=device, num_images_per_prompt=num_images, max_sequence_length=a["max_sequence_length"],
                lora_scale=lora_scale,
            )))
        images = batch_size * num_images
        dtype = text["prompt_embeds"].dtype
        field, fresh = self._noise(a, images, height, width, geometry, dtype, device)
        schedules = [self._schedule(stage, total_steps, geometry, device) for stage in stages]
        pipe._num_timesteps = total_steps
        guidance = None
        if pipe.transformer.config.guidance_embeds:
            guidance = torch.full([1], a["guidance_scale"], device=device, dtype=torch.float32).expand(images)

        run = _Denoiser(pipe, text, negative, guidance, a["true_cfg_scale"])
        callback = a["callback_on_step_end"]
        tensor_inputs = a["callback_on_step_end_tensor_inputs"]

        with pipe.progress_bar(total=total_steps) as progress_bar:

            def on_step(step: Step, latents: torch.Tensor, layout: TokenLayout) -> torch.Tensor | None:
                progress_bar.update()
                if callback is None:
                    return None
                values = {"latents": latents, "prompt_embeds": run.text["prompt_embeds"]}
                outputs = callback(pipe, step.index, step.timestep, {k: values[k] for k in tensor_inputs})
                run.text["prompt_embeds"] = outputs.pop("prompt_embeds", run.text["prompt_embeds"])
                return outputs.pop("latents", latents)

            common = dict(config=config, stages=stages, schedules=schedules, geometry=geometry,
                          callback=on_step, interrupted=lambda: pipe.interrupt)
            if config.promotion_threshold is not None and images > 1 and config.promotion_rounds > 0:
                # a threshold promotes a different number of tokens per image: sample each image on its own
                results = []
                for index in range(images):
                    one_field = field.select([index])
                    first = one_field.tokens(TokenLayout.uniform(1, geometry, stages[0].level, device), geometry)
                    results.append(sample(run.for_images(index), first, field=one_field,
                                          fresh=fresh.select([index]) if fresh else None, **common))
                latents = torch.cat([r.latents for r in results])
                self.last_run = results[0]
            else:
                first = field.tokens(TokenLayout.uniform(images, geometry, stages[0].level, device), geometry)
                self.last_run = sample(run, first, field=field, fresh=fresh, **common)
                latents = self.last_run.latents
        pipe._current_timestep = None

        if a["output_type"] == "latent":
            image = latents
        else:
            latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
            latents = (latents / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
            latents = latents.to(_module_device(pipe.vae))
            image = pipe.vae.decode(latents, return_dict=False)[0]
            image = pipe.image_processor.postprocess(image, output_type=a["output_type"])
        pipe.maybe_free_model_hooks()
        if not a["return_dict"]:
            return (image,)
        return FluxPipelineOutput(images=image)

    # ------------------------------------------------------------------------------------------------ pieces
    def _geometry(self, height: int, width: int) -> TokenGeometry:
        pipe = self.pipe
        unit = pipe.vae_scale_factor * 2
        geometry = TokenGeometry(pipe.transformer.config.in_channels // 4, 2, int(height) // unit, int(width) // unit)
        coarsest = max(self.config.stage_levels)
        factor = 1 << coarsest
        if geometry.rows % factor or geometry.cols % factor:
            multiple = unit * factor
            raise ValueError(
                f"height={height}, width={width} give a {geometry.rows}x{geometry.cols} token grid, which does not "
                f"divide into whole tokens at stage scale 1/{factor}; use a height and width that are multiples of "
                f"{multiple} (for example {max(multiple, height // multiple * multiple)}x"
                f"{max(multiple, width // multiple * multiple)}), or drop that stage from FrescoConfig.stage_scales"
            )
        return geometry

    def _noise(self, a: dict[str, Any], images: int, height: int, width: int, geometry: TokenGeometry,
               dtype: torch.dtype, device: torch.device) -> tuple[NoiseField, FreshNoise | None]:
        pipe, generator, latents = self.pipe, a["generator"], a["latents"]
        seeds: list[int] | None = None
        if latents is not None:
            expected = (images, geometry.num_tokens, geometry.token_dim)
            if tuple(latents.shape) != expected:
                raise ValueError(
                    f"latents= has shape {tuple(latents.shape)}; Fresco needs the packed full-resolution noise "
                    f"{expected} (it defines the coordinate-bound field)"
                )
            full = latents.to(device=device, dtype=dtype)
        elif self.config.noise_source == "generator":
            full, _ = pipe.prepare_latents(images, geometry.channels, height, width, dtype, device, generator, None)
        else:
            seeds = seeds_from_generators(generator, images)
            field = NoiseField.from_hash(seeds, geometry.channels, geometry.rows * geometry.patch,
                                         geometry.cols * geometry.patch, dtype=dtype, device=device)
        if seeds is None:
            field = NoiseField(unpack(full, geometry.rows, geometry.cols, geometry.patch))
        fresh = None
        if self.config.strategy in USES_FRESH_NOISE:
            fresh = FreshNoise(seeds if seeds is not None else seeds_from_generators(generator, images))
        return field, fresh

    def _schedule(self, stage: StagePlan, total_steps: int, geometry: TokenGeometry,
                  device: torch.device) -> StageSchedule:
        scheduler = self.pipe.scheduler
        base = stage_base_sigmas(stage, total_steps)
        scale = float(scheduler.config.num_train_timesteps)
        if stage.shift is not None:
            shifted = shift_sigmas(np.array(base, dtype=np.float32), shift=stage.shift)
            sigmas = torch.from_numpy(np.asarray(shifted, dtype=np.float32)).to(device)
            timesteps = sigmas * scale
            sigmas = torch.cat([sigmas, torch.zeros(1, device=device)])
        else:
            rows, cols = geometry.grid(stage.level)
            mu = calculate_shift(
                rows * cols,
                scheduler.config.get("base_image_seq_len", 256),
                scheduler.config.get("max_image_seq_len", 4096),
                scheduler.config.get("base_shift", 0.5),
                scheduler.config.get("max_shift", 1.15),
            )
            timesteps, _ = retrieve_timesteps(scheduler, None, device, sigmas=base, mu=mu)
            sigmas = scheduler.sigmas
        n = stage.num_steps
        return StageSchedule(sigmas[: n + 1].clone(), timesteps[:n].clone(), scale)


class _Denoiser:
    """The FLUX transformer as Fresco's ``denoise(latents, positions, step)``, with true CFG when asked."""

    def __init__(self, pipe: Any, text: dict, negative: dict | None, guidance: torch.Tensor | None,
                 true_cfg_scale: float, images: slice = slice(None)):
        self.pipe, self.text, self.negative = pipe, text, negative
        self.guidance, self.true_cfg_scale, self.images = guidance, true_cfg_scale, images
        self._last_tokens: int | None = None

    def for_images(self, index: int) -> _Denoiser:
        return _Denoiser(self.pipe, self.text, self.negative, self.guidance, self.true_cfg_scale,
                         slice(index, index + 1))

    def __call__(self, latents: torch.Tensor, positions: torch.Tensor, step: Step) -> torch.Tensor:
        pipe = self.pipe
        transformer = pipe.transformer
        if self._last_tokens is not None and latents.shape[1] != self._last_tokens and hasattr(
            transformer, "_reset_stateful_cache"
        ):
            # stateful feature caches hold tensors of the old token count; they must start over
            transformer._reset_stateful_cache()
        self._last_tokens = latents.shape[1]
        pipe._current_timestep = step.timestep
        timestep = step.timestep.expand(latents.shape[0]).to(latents.dtype)
        prediction = self._forward("cond", self.text, latents, positions, timestep)
        if self.negative is not None:
            negative = self._forward("uncond", self.negative, latents, positions, timestep)
            prediction = negative + self.true_cfg_scale * (prediction - negative)
        return prediction

    def _forward(self, context: str, text: dict, latents: torch.Tensor, positions: torch.Tensor,
                 timestep: torch.Tensor) -> torch.Tensor:
        embeds, pooled = _rows(text["prompt_embeds"], self.images), _rows(text["pooled"], self.images)
        guidance = _rows(self.guidance, self.images) if self.guidance is not None else None
        if bool((positions == positions[:1]).all()):
            groups = [slice(None)]  # one layout for the whole batch: one forward
        else:
            groups = [slice(i, i + 1) for i in range(latents.shape[0])]
        outputs = []
        for group in groups:
            img_ids = _image_ids(positions[group][0])
            with self.pipe.transformer.cache_context(context):
                outputs.append(self.pipe.transformer(
                    hidden_states=latents[group],
                    timestep=timestep[group] / 1000,
                    guidance=_rows(guidance, group) if guidance is not None else None,
                    pooled_projections=_rows(pooled, group),
                    encoder_hidden_states=_rows(embeds, group),
                    txt_ids=text["text_ids"],
                    img_ids=img_ids,
                    joint_attention_kwargs=self.pipe.joint_attention_kwargs,
                    return_dict=False,
                )[0])
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def _rows(values: torch.Tensor, images: slice) -> torch.Tensor:
    """The rows of ``values`` for ``images``; a batch of one is shared by every image, as the stock pipeline does
    with ``prompt_embeds`` given and ``num_images_per_prompt > 1``."""
    return values if values.shape[0] == 1 else values[images]


def _image_ids(positions: torch.Tensor) -> torch.Tensor:
    """FLUX ``img_ids`` rows ``[0, row, col]``; float32 so fractional positions survive a bf16 pipeline."""
    ids = torch.zeros(positions.shape[0], 3, device=positions.device, dtype=torch.float32)
    ids[:, 1:] = positions.to(torch.float32)
    return ids


def _module_device(module: torch.nn.Module) -> torch.device:
    from diffusers.utils.torch_utils import get_module_execution_device

    return get_module_execution_device(module)
