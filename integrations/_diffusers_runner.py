"""What every diffusers adapter shares: hosting Fresco's loop inside the user's ``pipe(...)`` call.

A runner binds the call's arguments to the pipeline's own signature, plans the stages, builds the noise field from
the pipeline's own initial noise (or the hash), asks the pipeline's scheduler for each stage's schedule, runs the
sampler with the pipeline's progress bar and callbacks, and leaves decoding to the model-specific subclass.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

from fresco_plugin.config import FrescoConfig
from fresco_plugin.layout import TokenGeometry, TokenLayout
from fresco_plugin.noise import FreshNoise, NoiseField, seeds_from_generators
from fresco_plugin.registry import get_strategy
from fresco_plugin.sampler import SamplerResult, Step, min_score_history, sample
from fresco_plugin.schedule import (
    StagePlan,
    StageSchedule,
    fit_plan,
    for_guidance,
    plan_stages,
    restart_spaced,
    shift_sigmas,
)

from ._context_parallel import ContextParallel, context_parallel_of
from .diffusers_caches import check_cache
from .para_attention import para_attention_caches, rewrap_pipeline_class

__all__ = ["CallArguments", "DiffusersFrescoRunner", "GuidanceCombine", "TransformerDenoiser",
           "classifier_free_guidance", "pipeline_transformers", "rows_for", "warn_caller"]


class CallArguments:
    """One ``pipe(...)`` call's arguments, bound to the pipeline's own ``__call__`` signature with its defaults.

    Every parameter of that signature reads as an attribute (``call.height``; the common ones are typed below, the
    rest are whatever the pipeline takes); ``call.given(name)`` says whether the caller passed it. A name the
    signature lacks raises ``AttributeError`` naming the pipeline, so an adapter's typo fails at its first test.
    """

    prompt: str | list[str] | None
    negative_prompt: str | list[str] | None
    prompt_embeds: torch.Tensor | None
    negative_prompt_embeds: torch.Tensor | None
    height: int | None
    width: int | None
    num_inference_steps: int
    guidance_scale: float
    generator: torch.Generator | list[torch.Generator] | None
    latents: torch.Tensor | None
    output_type: str | None
    return_dict: bool
    callback_on_step_end: Callable[..., dict[str, Any]] | None
    callback_on_step_end_tensor_inputs: list[str]
    max_sequence_length: int

    def __init__(self, pipeline: str, values: dict[str, Any], given: set[str], memo: dict[str, Any] | None = None):
        self._pipeline, self._values, self._given = pipeline, values, frozenset(given)
        self._memo = {} if memo is None else memo

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{self._pipeline}.__call__ takes no argument {name!r}") from None

    def argument(self, name: str) -> Any:
        """An argument by name, also one an attribute cannot reach (Kontext's ``_auto_resize``)."""
        if name not in self._values:
            raise AttributeError(f"{self._pipeline}.__call__ takes no argument {name!r}")
        return self._values[name]

    def given(self, name: str) -> bool:
        """Whether the caller passed ``name`` (rather than leaving the pipeline's default)."""
        return name in self._given

    def resolved(self, **values: Any) -> CallArguments:
        """A copy with ``values`` in place of the caller's (the sizes stock derives from its defaults or rounds);
        ``given`` still answers for what the caller passed."""
        for name in values:
            getattr(self, name)  # only the pipeline's own arguments
        return CallArguments(self._pipeline, {**self._values, **values}, set(self._given), self._memo)

    def memoized(self, name: str, compute: Callable[[], Any]) -> Any:
        """A value derived from the caller's arguments (preprocessed reference pictures), computed once per call;
        the copies ``resolved`` makes share it."""
        if name not in self._memo:
            self._memo[name] = compute()
        return self._memo[name]


class DiffusersFrescoRunner:
    """Base of the per-pipeline runners; one instance per pipeline with Fresco applied.

    ``run`` is the same for every model: it hosts the stock call's job in the stock order and asks the adapter only
    for the pieces that differ (the methods under "per-model pieces", and the class attributes below).
    """

    pipeline_class: ClassVar[type]
    output_class: ClassVar[type]  # the stock call's return type (``FluxPipelineOutput``, ...)
    output_field: ClassVar[str] = "images"  # its field ("frames" for video)
    per_prompt_argument: ClassVar[str] = "num_images_per_prompt"  # outputs per prompt ("num_videos_per_prompt")
    # whether this model's denoiser can pad an uneven image sequence with masked tokens under Ulysses attention
    pads_masked: ClassVar[bool] = False

    def __init__(self, pipe: Any, config: FrescoConfig):
        stock = self.pipeline_class
        if type(pipe).__call__ is not stock.__call__:
            raise ValueError(
                f"{type(pipe).__name__} overrides {stock.__name__}.__call__; this Fresco adapter hosts "
                f"{stock.__name__}'s own loop, so a pipeline with its own __call__ needs its own adapter "
                "(fresco_plugin.register_adapter)"
            )
        scheduler = pipe.scheduler
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError(
                f"Fresco needs a FlowMatchEulerDiscreteScheduler, this pipeline has {type(scheduler).__name__}; set "
                "pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config) (with the "
                "model's shift) first"
            )
        if scheduler.config.get("stochastic_sampling", False) or scheduler.config.get("invert_sigmas", False):
            raise ValueError(
                "Fresco runs the deterministic Euler flow step; the scheduler's stochastic_sampling / invert_sigmas "
                "must be False"
            )
        for transformer in pipeline_transformers(pipe):
            check_cache(getattr(transformer, "_cache_config", None), promotion_rounds=config.promotion_rounds)
        self.pipe = pipe
        self.config = config
        self.min_history = min_score_history(config)
        self.last_run: SamplerResult | None = None
        self._warned: set[str] = set()
        if config.stage_steps is not None:
            plan_stages(config, None, min_score_history=self.min_history)  # fail at apply time, not mid-call
        self._signature = inspect.signature(type(pipe).__call__)
        _context_parallel_of_every_expert(pipe)  # refuse a parallel setup Fresco cannot follow now, not at the call

    def close(self, fresco_class: type) -> None:
        """Fresco was removed; ``fresco_class`` is the class the pipeline had while it ran."""
        rewrap_pipeline_class(self.pipe, fresco_class)
        self.last_run = None

    @torch.no_grad()
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        bound = self._signature.bind(self.pipe, *args, **kwargs)
        explicit = set(bound.arguments)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(self._signature.parameters)))  # self
        if arguments.get("sigmas") is not None:
            raise ValueError(
                "Fresco builds one sigma schedule per stage; drop sigmas= or set FrescoConfig.stage_shifts instead"
            )
        for name in ("num_images_per_prompt", "num_videos_per_prompt"):
            count = arguments.get(name)
            if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
                raise ValueError(f"{name}={count!r}: give a whole number >= 1")
        return self.run(CallArguments(type(self.pipe).__name__, arguments, explicit))

    def run(self, call: CallArguments) -> Any:
        """The stock call's job with Fresco's stages, in the stock order."""
        call = self.check(call)
        geometry = self.geometry(call)
        stages = self.plan(call)
        self.start_call(**self.call_state(call))
        device = self.pipe._execution_device
        text, negative = self.encode(call, device)
        stages = for_guidance(stages, self.config, self.guided(negative))
        count = self.batch_size(call)
        start = self.clean_start(call, count, geometry, text, device)  # before the noise: stock encodes it first
        field, fresh = self.initial_noise(call, count, geometry, text, device)
        schedules = self.schedules(stages, geometry, device, call)
        denoiser = self.denoiser(call, text, negative, count, geometry, device)
        latents = self.sample(denoiser, field, fresh, stages, schedules, geometry, count, call, device, start)
        output = self.decode(latents, geometry, call)
        self.pipe.maybe_free_model_hooks()
        return self.output_class(**{self.output_field: output}) if call.return_dict else (output,)

    # ------------------------------------------------------------------------------------------ per-model pieces
    def check(self, call: CallArguments) -> CallArguments:
        """Refuse what Fresco cannot follow yet (naming the argument and the way out), run the pipeline's own
        ``check_inputs``, and return the call with the sizes stock would use (its defaults, its rounding)."""
        raise NotImplementedError

    def geometry(self, call: CallArguments) -> TokenGeometry:
        """The full-resolution token grid of this call."""
        raise NotImplementedError

    def call_state(self, call: CallArguments) -> dict[str, Any]:
        """The private pipeline state stock sets before its loop, as ``start_call`` keywords."""
        return {"guidance_scale": call.guidance_scale}

    def encode(self, call: CallArguments, device: torch.device) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The prompt's and (under true guidance) the negative prompt's conditioning, from the pipeline's own
        ``encode_prompt``: what the denoiser passes to the transformer."""
        raise NotImplementedError

    def initial_noise(self, call: CallArguments, count: int, geometry: TokenGeometry, text: dict[str, Any],
                      device: torch.device) -> tuple[NoiseField, FreshNoise | None]:
        """The noise field, from the stock ``prepare_latents`` through :meth:`noise`."""
        raise NotImplementedError

    def clean_start(self, call: CallArguments, count: int, geometry: TokenGeometry, text: dict[str, Any],
                    device: torch.device) -> torch.Tensor | None:
        """The clean latent pixels ``(B, C, [F,] H, W)`` a call starts from, noised to the first sigma as stock's
        ``scale_noise`` does (an image to edit); ``None`` (the default) starts from pure noise."""
        return None

    def base_sigmas(self, steps: int, call: CallArguments) -> np.ndarray | None:
        """The unshifted sigmas the stock call passes to ``set_timesteps`` for a plan of ``steps`` steps; ``None``
        where it passes only a step count."""
        return None

    def mu(self, tokens: int, steps: int) -> float | None:
        """The scheduler's dynamic shift for ``tokens`` image tokens in a call of ``steps`` steps, where stock computes
        one (``None``: none)."""
        return None

    def denoiser(self, call: CallArguments, text: dict[str, Any], negative: dict[str, Any] | None, count: int,
                 geometry: TokenGeometry, device: torch.device) -> TransformerDenoiser:
        """The model's transformer as Fresco's denoiser for this call."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor, geometry: TokenGeometry, call: CallArguments) -> Any:
        """Full-resolution tokens -> what stock returns for ``call.output_type`` (its latent layout for
        ``"latent"``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------ shared steps
    def batch_size(self, call: CallArguments) -> int:
        """Outputs of this call: prompts (or rows of ``prompt_embeds``) times outputs per prompt."""
        prompt = call.prompt
        prompts = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else call.prompt_embeds.shape[0]
        return prompts * getattr(call, self.per_prompt_argument)

    def guided(self, negative: dict[str, Any] | None) -> bool:
        """Whether this call runs with guidance: a negative branch, or guidance embedded in the transformer (FLUX.1-dev,
        FLUX.2-dev, HunyuanVideo)."""
        return negative is not None or bool(getattr(self.pipe.transformer.config, "guidance_embeds", False))

    def has_negative(self, call: CallArguments, *pooled: str) -> bool:
        """Whether the call gives a negative prompt (or its embeddings, with the ``pooled`` ones it needs)."""
        return call.negative_prompt is not None or (
            call.negative_prompt_embeds is not None and all(getattr(call, name) is not None for name in pooled))

    def start_call(self, **state: Any) -> None:
        """The pipeline state a stock call sets before its loop (its properties read it: ``pipe.guidance_scale``,
        ``pipe.interrupt``, ...): each ``name=value`` as ``pipe._name``, and no timestep or interrupt yet."""
        for name, value in state.items():
            setattr(self.pipe, f"_{name}", value)
        self.pipe._current_timestep = None
        self.pipe._interrupt = False

    def plan(self, call: CallArguments) -> list[StagePlan]:
        steps = call.num_inference_steps if call.given("num_inference_steps") else None
        if steps is None and self.config.stage_steps is None:
            steps = call.num_inference_steps  # the pipeline's own default
        stages, notes = fit_plan(self.config, steps, min_score_history=self.min_history)
        note = "; ".join(notes)
        if note and note not in self._warned:  # once per pipeline, not at every call of a loop
            self._warned.add(note)
            warn_caller(f"Fresco: {note}")
        return stages

    def noise(self, call: CallArguments, images: int, geometry: TokenGeometry, expected_latents: tuple[int, ...],
              stock_noise: Callable[[], torch.Tensor], dtype: torch.dtype,
              device: torch.device) -> tuple[NoiseField, FreshNoise | None]:
        """The coordinate-bound field: the user's latents, the pipeline's own initial noise, or the hash.

        The field covers the coarsest stage's grid; where that grid rounds up (odd sizes), the pipeline's noise is
        extended with hash noise seeded from the generator.
        """
        generator, latents = call.generator, call.latents
        coarsest = max(self.config.stage_levels)
        rows, cols = geometry.grid(coarsest)
        padded = (rows << coarsest) * geometry.patch, (cols << coarsest) * geometry.patch
        seeds = None
        if latents is None and self.config.noise_source == "hash":
            seeds = seeds_from_generators(generator, images)
            field = NoiseField.from_hash(seeds, geometry.channels, *padded, frames=geometry.frames, dtype=dtype,
                                         device=device)
        else:
            if latents is not None:
                if tuple(latents.shape) != expected_latents:
                    raise ValueError(
                        f"latents= has shape {tuple(latents.shape)}; Fresco needs the full-resolution noise "
                        f"{expected_latents} (it defines the coordinate-bound field)"
                    )
                full = latents.to(device=device, dtype=dtype)
            else:
                full = stock_noise()
            full = self.latent_pixels(full, geometry)
            if tuple(full.shape[-2:]) != padded:
                seeds = seeds_from_generators(generator, images)
            field = NoiseField.padded(full, *padded, seeds or [])
        fresh = None
        if getattr(get_strategy(self.config.strategy), "needs_fresh_noise", False):
            fresh = FreshNoise(seeds if seeds is not None else seeds_from_generators(generator, images))
        return field, fresh

    def latent_pixels(self, latents: torch.Tensor, geometry: TokenGeometry) -> torch.Tensor:
        """The pipeline's latent layout -> latent pixels ``(B, C, [F,] H, W)`` (identity for unpacked latents)."""
        return latents

    def schedules(self, stages: list[StagePlan], geometry: TokenGeometry, device: torch.device,
                  call: CallArguments) -> list[StageSchedule]:
        """Each stage's slice of the pipeline's schedule, shifted by the scheduler as for a stock run.

        The stock schedule is :meth:`base_sigmas` (where it is ``None`` the stock one for the total step count is
        sliced as it is). A scheduler with dynamic shifting gets each stage's own :meth:`mu` (from its token
        count); a static shift applies to every stage alike, unless
        ``stage_shifts`` sets one per stage. ``restart_shift_scale`` multiplies the shift of every stage after the
        first, whichever it is.
        """
        scheduler = self.pipe.scheduler
        scale = float(scheduler.config.num_train_timesteps)
        total = stages[-1].last_step
        base = self.base_sigmas(total, call)
        stock = None
        if base is None:
            scheduler.set_timesteps(total, device=device)
            stock = scheduler.sigmas.clone(), scheduler.timesteps.clone()
            base = np.linspace(1.0, 1.0 / total, total)  # unshifted, for explicit stage shifts
        out = []
        dynamic = scheduler.config.get("use_dynamic_shifting", False)
        terminal = scheduler.config.get("shift_terminal")
        if terminal and total < 2:  # its stretch divides by 1 - the last sigma, which is 0 for a 1-step schedule
            raise ValueError(f"num_inference_steps={total} with this scheduler's shift_terminal={terminal} gives NaN "
                             "(stock's too); use at least 2 steps")
        for stage in stages:
            stage_end = stage.last_step + 1 if stage.last_step < total else stage.last_step
            # a terminal shift (Qwen-Image) stretches the whole schedule: shift all of it, then take this stage's slice
            first, end = (0, len(base)) if terminal else (stage.first_step, stage_end)
            piece = base[first:end]
            rows, cols = geometry.grid(stage.level)
            mu = self.mu(rows * cols * geometry.num_frames, total) if dynamic else None
            shift = stage.shift
            if stage.shift_scale != 1:  # scale the shift this stage would get, then apply it as an explicit one
                if shift is None:
                    exponential = scheduler.config.get("time_shift_type", "exponential") == "exponential"
                    shift = (math.exp(mu) if exponential else mu) if mu is not None else scheduler.config.shift
                own, shift = shift, shift * stage.shift_scale
                if stage.own_spacing:  # the scaled shift's start, then the own shift's spacing (this stage's slice)
                    piece = np.array(piece, dtype=np.float32)
                    mine = slice(stage.first_step - first, stage_end - first)
                    start = float(shift_sigmas(piece[mine][:1], shift=shift)[0])
                    if terminal:  # the stretch divides by the whole schedule's last point, which the own shift
                        # leaves at stock's: start where the stretched scaled schedule starts
                        scaled_last, own_last = (float(shift_sigmas(piece[-1:], shift=s)[0]) for s in (shift, own))
                        start = 1.0 - (1.0 - start) * (1.0 - own_last) / (1.0 - scaled_last)
                    piece[mine] = restart_spaced(piece[mine], start=start, own_shift=own)
                    shift = own
            if shift is not None:
                shifted = np.asarray(shift_sigmas(np.asarray(piece, dtype=np.float32), shift=shift),
                                     dtype=np.float32)
                if terminal:
                    shifted = scheduler.stretch_shift_to_terminal(shifted)
                sigmas = torch.cat([torch.from_numpy(shifted), torch.zeros(1)]).to(device)
                timesteps = sigmas[:-1] * scale
            elif stock is not None:
                sigmas = stock[0][stage.first_step:stage.last_step + 1]
                timesteps = stock[1][stage.first_step:stage.last_step]
                first = stage.first_step
            else:
                kwargs = {"mu": mu} if mu is not None else {}
                timesteps, _ = retrieve_timesteps(scheduler, None, device, sigmas=piece, **kwargs)
                sigmas = scheduler.sigmas
            offset = stage.first_step - first
            sigmas, timesteps = sigmas[offset:], timesteps[offset:]
            out.append(StageSchedule(sigmas[: stage.num_steps + 1].clone(), timesteps[: stage.num_steps].clone(),
                                     scale))
        self.pipe._num_timesteps = total
        return out

    def sample(self, denoiser: TransformerDenoiser, field: NoiseField, fresh: FreshNoise | None,
               stages: list[StagePlan], schedules: list[StageSchedule], geometry: TokenGeometry, images: int,
               call: CallArguments, device: torch.device, start: torch.Tensor | None = None) -> torch.Tensor:
        """Run the sampler with the pipeline's progress bar and ``callback_on_step_end``; full-resolution tokens."""
        pipe, config = self.pipe, self.config
        start_field = NoiseField(start, gain=1.0) if start is not None else None

        def first_latents(noise: NoiseField, clean: NoiseField | None, layout: TokenLayout) -> torch.Tensor:
            latents = noise.tokens(layout, geometry)
            if clean is None:
                return latents
            sigma = schedules[0].sigmas[0]  # stock's scale_noise, at the first stage's resolution and sigma
            return (sigma * latents + (1.0 - sigma) * clean.tokens(layout, geometry)).to(latents.dtype)

        for transformer in pipeline_transformers(pipe):
            check_cache(getattr(transformer, "_cache_config", None), images=images,
                        promotion_rounds=config.promotion_rounds)
        parallel = _context_parallel_of_every_expert(pipe)
        agree = None
        if parallel is not None:
            if call.generator is None and call.latents is None:
                raise ValueError("under context parallelism every rank must start from the same noise: pass "
                                 "generator=torch.Generator().manual_seed(...) (the same seed on every rank)")
            config = replace(config, token_multiple=math.lcm(config.token_multiple, parallel.degree))
            can_pad = self.pads_masked and parallel.masks_pads
            parallel.check(pipe.transformer, config, stages, geometry, denoiser.split_text_tokens,
                           can_pad=can_pad, appended_tokens=denoiser.appended_tokens)
            denoiser.pad_multiple = parallel.degree if can_pad else 1
            agree = parallel.rank0_decides
        # a pipeline without step callbacks (HunyuanVideo-1.5) takes neither argument
        callback = getattr(call, "callback_on_step_end", None)
        tensor_inputs = getattr(call, "callback_on_step_end_tensor_inputs", [])
        tensor_inputs = getattr(callback, "tensor_inputs", tensor_inputs)  # PipelineCallback objects name their own
        with pipe.progress_bar(total=stages[-1].last_step) as progress_bar:

            def on_step(step: Step, latents: torch.Tensor, layout: TokenLayout) -> torch.Tensor | None:
                progress_bar.update()
                if callback is None:
                    return None
                values = {"latents": latents, **denoiser.callback_tensors()}
                outputs = callback(pipe, step.index, step.timestep, {k: values[k] for k in tensor_inputs})
                denoiser.take_callback_outputs(outputs)
                return outputs.pop("latents", latents)

            common = dict(config=config, stages=stages, schedules=schedules, geometry=geometry, callback=on_step,
                          interrupted=lambda: pipe.interrupt)
            if agree is not None:
                common["agree"] = agree
            if config.promotion_threshold is not None and images > 1 and config.promotion_rounds > 0:
                # a threshold promotes a different number of tokens per image: sample each image on its own
                results = []
                for index in range(images):
                    one_field = field.select([index])
                    first = first_latents(one_field, start_field.select([index]) if start_field else None,
                                          TokenLayout.uniform(1, geometry, stages[0].level, device))
                    results.append(sample(denoiser.for_images(index), first, field=one_field,
                                          fresh=fresh.select([index]) if fresh else None, **common))
                self.last_run = results[0]
                latents = torch.cat([r.latents for r in results])
            else:
                layout = TokenLayout.uniform(images, geometry, stages[0].level, device)
                first = first_latents(field, start_field, layout)
                self.last_run = sample(denoiser, first, field=field, fresh=fresh, **common)
                latents = self.last_run.latents
        pipe._current_timestep = None
        return latents


def warn_caller(message: str) -> None:
    """A ``UserWarning`` pointing at the line that called the pipeline: the first frame outside Fresco and torch's
    ``no_grad`` wrapper, however deep in the runner the warning comes from."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("fresco_plugin.", "torch.")):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


GuidanceCombine = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """True CFG as FLUX, Wan and HunyuanVideo's pipelines combine it: ``uncond + scale * (cond - uncond)``."""
    return uncond + scale * (cond - uncond)


def rows_for(values: torch.Tensor | None, images: slice) -> torch.Tensor | None:
    """The rows of ``values`` for ``images``; a batch of one is shared by every image, as the stock pipelines do
    with given embeddings and several images per prompt."""
    if values is None or values.shape[0] == 1:
        return values
    return values[images]


class TransformerDenoiser:
    """A pipeline's transformer as Fresco's ``denoise(latents, positions, step)``, with true CFG when asked.

    Images whose token layouts coincide share one forward; otherwise each image gets its own. Subclasses implement
    ``forward(context, text, latents, positions, step, images)`` for one group. ``combine`` merges the two guidance
    branches (default: :func:`classifier_free_guidance`); a model whose pipeline rescales them passes its own rule.
    """

    def __init__(self, pipe: Any, text: dict[str, Any], negative: dict[str, Any] | None, cfg_scale: float,
                 images: slice = slice(None), combine: GuidanceCombine | None = None):
        self.pipe, self.text, self.negative, self.cfg_scale, self.images = pipe, text, negative, cfg_scale, images
        self.combine = combine or classifier_free_guidance
        self.caches = para_attention_caches(pipe) or _DiffusersCaches(pipeline_transformers(pipe))
        self._last_tokens: int | None = None
        self._layout_groups: tuple[torch.Tensor, list[tuple[str, slice, torch.Tensor]]] | None = None
        self.pad_multiple = 1  # under context parallelism with masked padding: the degree

    def for_images(self, index: int) -> TransformerDenoiser:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.images = slice(index, index + 1)
        clone._last_tokens = None
        clone._layout_groups = None
        return clone

    @property
    def split_text_tokens(self) -> int:
        """Text tokens a context-parallel plan splits as they are, so they must divide its degree."""
        return self.text["prompt_embeds"].shape[1]

    @property
    def appended_tokens(self) -> int:
        """Tokens every forward appends after the image's own: an editing model's reference picture, kept whole."""
        reference = self.text.get("reference")
        return 0 if reference is None else reference.shape[1]

    def callback_tensors(self) -> dict[str, torch.Tensor]:
        return {"prompt_embeds": self.text["prompt_embeds"]}

    def take_callback_outputs(self, outputs: dict[str, Any]) -> None:
        self.text["prompt_embeds"] = outputs.pop("prompt_embeds", self.text["prompt_embeds"])

    def __call__(self, latents: torch.Tensor, positions: torch.Tensor, step: Step) -> torch.Tensor:
        self.start_step(latents, step)
        prediction = self._branch("cond", self.text, latents, positions, step)
        if self.negative is not None:
            negative = self._branch("uncond", self.negative, latents, positions, step)
            prediction = self.combine(prediction, negative, self.guidance_scale(step))
        return prediction

    def start_step(self, latents: torch.Tensor, step: Step) -> None:
        """What every step does before its forwards (a model with its own guidance loop calls it too)."""
        if latents.shape[1] != self._last_tokens:
            # stateful feature caches hold tensors of another token count (or another image's run): start over, keeping
            # step counts within one generation
            self.caches.reset(within_generation=self._last_tokens is not None)
        self._last_tokens = latents.shape[1]
        self.pipe._current_timestep = step.timestep

    def guidance_scale(self, step: Step) -> float:
        """The guidance scale at ``step`` (one per call, unless a model changes it along the schedule)."""
        return self.cfg_scale

    def _branch(self, context: str, text: dict[str, Any], latents: torch.Tensor, positions: torch.Tensor,
                step: Step) -> torch.Tensor:
        outputs = []
        for suffix, group, image_positions in self._groups(positions):
            rows = _compose(self.images, group)
            with self.caches.scope(context + suffix):
                outputs.append(self.forward(text, latents[group], image_positions, step, rows))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _groups(self, positions: torch.Tensor) -> list[tuple[str, slice, torch.Tensor]]:
        """The forwards one layout needs: (cache-context suffix, images, their positions). Worked out once per layout
        (the sampler passes the same positions until a switch or round), since comparing them reads the device."""
        if self._layout_groups is None or self._layout_groups[0] is not positions:
            if positions.shape[0] == 1 or bool((positions == positions[:1]).all()):
                groups = [("", slice(None), positions[0])]  # one layout for the whole batch: one forward
            else:  # each image its own forward, and its own cache state
                groups = [(f"-image{i}", slice(i, i + 1), positions[i]) for i in range(positions.shape[0])]
            self._layout_groups = (positions, groups)
        return self._layout_groups[1]

    def forward(self, text: dict[str, Any], latents: torch.Tensor, positions: torch.Tensor, step: Step,
                rows: slice) -> torch.Tensor:
        raise NotImplementedError


class _DiffusersCaches:
    """diffusers' own cache state (``CacheMixin``) of the pipeline's transformers: a cache context per name, reset by
    each model."""

    def __init__(self, transformers: list[Any]):
        self.transformers = transformers

    def reset(self, *, within_generation: bool = False) -> None:
        for transformer in self.transformers:
            if not hasattr(transformer, "_reset_stateful_cache"):
                continue
            # PyramidAttentionBroadcast picks the steps it skips by counting forwards over the whole generation;
            # within one, keep that count as stock runs it and drop only the attention output cached at the old
            # token count (its hook computes afresh when nothing is cached)
            counts = ([(state, state.iteration) for state in _attention_broadcast_states(transformer)]
                      if within_generation else [])
            transformer._reset_stateful_cache()
            for state, iteration in counts:
                state.iteration = iteration

    def scope(self, name: str) -> contextlib.AbstractContextManager[Any]:
        stack = contextlib.ExitStack()
        for transformer in self.transformers:
            if hasattr(transformer, "cache_context"):  # not in diffusers 0.34, which ParaAttention needs
                stack.enter_context(transformer.cache_context(name))
        return stack


def _attention_broadcast_states(transformer: Any) -> list[Any]:
    states = []
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook("pyramid_attention_broadcast") if registry is not None else None
        if hook is not None:
            states.append(hook.state)
    return states


def pipeline_transformers(pipe: Any) -> list[Any]:
    """The pipeline's denoising transformers: ``transformer``, then a second expert (Wan2.2's ``transformer_2``)."""
    return [pipe.transformer] + [t for t in (getattr(pipe, "transformer_2", None),) if t is not None]


def _context_parallel_of_every_expert(pipe: Any) -> ContextParallel | None:
    """The sequence split of ``pipe.transformer``, which a second expert (Wan2.2's ``transformer_2``) must share:
    Fresco rounds every forward's tokens to one degree and lets one group decide promotions."""
    transformers = pipeline_transformers(pipe)
    parallel = context_parallel_of(transformers[0])
    for expert in transformers[1:]:
        other = context_parallel_of(expert)
        splits = ["not split" if p is None else f"split over ulysses={p.ulysses}, ring={p.ring}"
                  for p in (parallel, other)]
        if splits[0] != splits[1]:
            raise ValueError(f"pipe.transformer is {splits[0]} and the second expert is {splits[1]}; enable the same "
                             "ContextParallelConfig on both experts (or on neither)")
    return parallel


def _compose(images: slice, group: slice) -> slice:
    """Rows of the full batch's text for ``group`` of the (possibly already sliced) latents."""
    start = images.start or 0
    if group == slice(None):
        return images
    return slice(start + group.start, start + group.stop)
