"""``fresco bench``: quality against compute for Fresco and its peers, side by side on the shipped scenes model.

Every method renders the same prompts with the same seeds at 128x128, in each regime: **unguided** (one forward a
step) and **guided** (true classifier-free guidance with the empty negative prompt, at the scale the model was chosen
for). Per method and regime:

- **realism**: KID (x 1e3) between the method's pictures and true renders of the same prompts, on the features of
  the shipped scene encoder (:mod:`.scene_features`); and, for texture, the sliced Wasserstein distance between 7x7
  pixel patches of the method's pictures and of the true renders (patch SWD, :mod:`.patch_statistics`: every
  method's picture of a prompt read at the same places, so paired differences compare like with like);
- **adherence**: the checker (:func:`fresco_plugin.tools.scenes.check_adherence`), whole and per fact (both objects in
  their colours, both shapes, the relation), on training and held-out prompts;
- **fidelity** to the 50-step baseline picture of the same seed and regime (PSNR, SSIM), a secondary figure;
- **compute**: transformer FLOPs counted from the forwards that ran over the baseline's, and wall time over the
  baseline's, timed in this process with prompts as the outer loop so machine drift hits every method alike.

Every figure has a 95% bootstrap interval over prompts, and each method's paired difference against the baseline
and against **fewer steps at equal FLOPs** (``steps@<budget>``: the stock sampler with the step count whose FLOPs
match the budget's Fresco plan) is given with its interval too.

``--distilled`` runs the **distilled** regime instead, on the two students of the shipped model: the dev-like one
(guidance-distilled, ``guidance_scale`` at the teacher's CFG scale, one forward a step) is the 50-step baseline, with
fewer steps and the ``flux-dev-*`` presets on it; the schnell-like one (step-distilled, 4 steps) runs alone at 1 and 4
steps and at the step count of ``flux-schnell-22x``'s FLOPs, with that preset, and with the whole stack (Fresco 22x,
FirstBlockCache, int8 weights).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fresco_plugin.api import last_fresco_run
from fresco_plugin.config import PRESETS, FrescoConfig
from fresco_plugin.tools.flops_trace import ForwardRecorder

from .patch_statistics import patch_projections, patch_swd_resamples
from .scene_features import embed_pictures, kid, kid_bootstrap, load_feature_encoder
from .scenes import check_adherence, parse_prompt, render, scene_for_prompt
from .shipped_model import (
    GUIDANCE_SCALE,
    SCHNELL_STEPS,
    SIZE,
    TEXT_TOKENS,
    VARIANTS,
    ScenePrompt,
    load_scenes_pipeline,
    prompt_set,
    sketch_position_units,
)

__all__ = ["DISTILLED", "REGIMES", "Method", "benchmark_methods", "distilled_methods", "run_benchmark", "main"]

BASELINE_STEPS = 50
BUDGETS = {"3x": "flux-dev-3x", "5x": "flux-dev-5x", "10x": "flux-dev-10x"}
REGIMES = {"unguided": 1.0, "guided": GUIDANCE_SCALE}  # true_cfg_scale
# The students' regime: no true CFG; the dev-like student gets GUIDANCE_SCALE as its embedded guidance input.
DISTILLED = "distilled"
STACK_FBC_THRESHOLD = 0.1
RESAMPLES = 1000
REPEAT = "baseline (timed again)"


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # methods of one family form one curve in the plot
    steps: int | None = None  # stock num_inference_steps; None with a Fresco config (its plan fixes the steps)
    config: FrescoConfig | None = None
    budget: str | None = None  # the FLOPs budget it is compared at ("3x", "5x", "10x"): steps@<budget> is its peer
    cache: Callable[[], Any] | None = None  # a diffusers cache config, built fresh per use
    int8: bool = False  # run on an int8 weight-only (torchao) copy of the transformer
    model: str = "base"  # the shipped checkpoint it runs on: "base" (the teacher), "dev" or "schnell" (its students)
    against: str | None = None  # another method's name: the row adds paired differences against it (plan sweeps)


def benchmark_methods() -> list[Method]:
    """Baseline; fewer steps (25, and at each budget's FLOPs); Fresco at three budgets; the paper's ablations and
    the peers at the same three plans; FirstBlockCache; and the stacks."""
    methods = [Method("baseline", "baseline", steps=BASELINE_STEPS), Method("steps-25", "fewer steps", steps=25)]
    methods += [Method(f"steps@{budget}", "fewer steps", budget=budget) for budget in BUDGETS]
    peers = {
        "fresco": ("Fresco", {}),
        "fresco-no-progressive": ("Fresco w/o progressive promotion (all tokens at once)", dict(promotion_rounds=0)),
        "fresco-no-unified-field": ("Fresco w/o unified noise field (fresh noise at switches)",
                                    dict(strategy="fresh-noise")),
        "bottleneck": ("fresh noise, whole latent (Bottleneck-style)",
                       dict(strategy="fresh-noise", promotion_rounds=0)),
        "ralu-whole": ("RALU, whole-latent upsampling", dict(strategy="ralu", promotion_rounds=0)),
        "ralu-edge": ("RALU, edge-selected upsampling", dict(strategy="ralu", score="channel_variance",
                                                            promotion_order="unsettled_first", position_mode="anchor")),
        "dct-rewind": ("SGLang DCT rewind, whole latent", dict(strategy="dct-rewind", promotion_rounds=0)),
    }
    for key, (family, overrides) in peers.items():
        for budget, preset in BUDGETS.items():
            methods.append(Method(f"{key}@{budget}", family, config=replace(PRESETS[preset], **overrides),
                                  budget=budget))
    for threshold in (0.1, 0.2):
        methods.append(Method(f"fbc-{threshold}", "FirstBlockCache (diffusers), 50 steps", steps=BASELINE_STEPS,
                              cache=lambda t=threshold: _first_block_cache(t)))
    # the stack: each part alone is above (fresco@5x, fbc-0.1); here int8 alone and the combinations
    fbc = lambda: _first_block_cache(STACK_FBC_THRESHOLD)  # noqa: E731
    five = PRESETS["flux-dev-5x"]
    stack = "stacks: Fresco 5x / FirstBlockCache / int8 weights"
    methods += [Method("int8", stack, steps=BASELINE_STEPS, int8=True),
                Method("fresco@5x+fbc", stack, config=five, cache=fbc),
                Method("fresco@5x+int8", stack, config=five, int8=True),
                Method("fresco@5x+fbc+int8", stack, config=five, cache=fbc, int8=True)]
    return methods


def distilled_methods() -> list[Method]:
    """The distilled regime: the dev-like student at 50 steps (baseline), 25 steps and each budget's equal FLOPs, with
    the ``flux-dev-*`` presets; the schnell-like student alone (1 and 4 steps, and the steps of 22x's FLOPs), with
    ``flux-schnell-22x``, and with the whole stack."""
    methods = [Method("baseline", "baseline", steps=BASELINE_STEPS, model="dev"),
               Method("steps-25", "fewer steps", steps=25, model="dev")]
    methods += [Method(f"steps@{budget}", "fewer steps", budget=budget, model="dev") for budget in BUDGETS]
    methods += [Method(f"fresco@{budget}", "Fresco", config=PRESETS[preset], budget=budget, model="dev")
                for budget, preset in BUDGETS.items()]
    schnell, twenty_two = "schnell-like student alone", PRESETS["flux-schnell-22x"]
    methods += [Method("schnell-1", schnell, steps=1, model="schnell"),
                Method(f"schnell-{SCHNELL_STEPS}", schnell, steps=SCHNELL_STEPS, model="schnell"),
                Method("steps@22x", schnell, budget="22x", model="schnell"),
                Method("fresco@22x", "Fresco on the schnell-like student", config=twenty_two, budget="22x",
                       model="schnell"),
                Method("fresco@22x+fbc+int8", "stacks: schnell-like + Fresco 22x / FirstBlockCache / int8 weights",
                       config=twenty_two, cache=lambda: _first_block_cache(STACK_FBC_THRESHOLD), int8=True,
                       budget="22x", model="schnell")]
    return methods


def _first_block_cache(threshold: float) -> Any:
    from diffusers.hooks import FirstBlockCacheConfig

    return FirstBlockCacheConfig(threshold=threshold)


@dataclass
class _Runs:
    """One method's outputs in one regime, prompt by prompt."""

    seconds: list[float] = field(default_factory=list)
    flops: list[int] = field(default_factory=list)
    latents: list[torch.Tensor] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    resolution_maps: list[list[tuple[int, np.ndarray]]] = field(default_factory=list)


class _Runner:
    """Renders one prompt with one method in one regime on the shipped pipeline (or, for a method on a student, on
    that student's pipeline, loaded on first use); turns Fresco and caches on and off around it."""

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.pipes = {"base": pipe}
        self.embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.full_precision = {"base": pipe.transformer}
        self.position_units = {model: sketch_position_units(model) for model in VARIANTS}
        self._int8: dict[str, torch.nn.Module] = {}

    def pipeline(self, model: str) -> Any:
        if model not in self.pipes:
            pipe = load_scenes_pipeline(model, progress=False)
            pipe.set_progress_bar_config(disable=True)
            self.pipes[model], self.full_precision[model] = pipe, pipe.transformer
        return self.pipes[model]

    def int8_transformer(self, model: str = "base") -> torch.nn.Module:
        if model not in self._int8:
            import copy
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torchao.quantization import Int8WeightOnlyConfig, quantize_

            self.pipeline(model)
            self._int8[model] = copy.deepcopy(self.full_precision[model])
            quantize_(self._int8[model], Int8WeightOnlyConfig())
        return self._int8[model]

    def embed(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        if prompt not in self.embeddings:
            with torch.no_grad():
                embeds, pooled, _ = self.pipe.encode_prompt(prompt, prompt_2=None, max_sequence_length=TEXT_TOKENS)
            self.embeddings[prompt] = (embeds, pooled)
        return self.embeddings[prompt]

    def __call__(self, method: Method, prompt: ScenePrompt, cfg: float):
        from fresco_plugin import apply_fresco, remove_fresco

        # The students share the teacher's text encoders, so one prompt encoding serves every model.
        embeds, pooled = self.embed(prompt.prompt)
        pipe = self.pipeline(method.model)
        kwargs: dict[str, Any] = dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=SIZE, width=SIZE,
                                      output_type="latent", generator=torch.Generator().manual_seed(prompt.seed))
        if pipe.transformer.config.guidance_embeds:
            kwargs["guidance_scale"] = GUIDANCE_SCALE
        if cfg > 1:
            negative, negative_pooled = self.embed("")
            kwargs.update(true_cfg_scale=cfg, negative_prompt_embeds=negative,
                          negative_pooled_prompt_embeds=negative_pooled)
        if method.steps is not None:
            kwargs["num_inference_steps"] = method.steps
        pipe.transformer = self.int8_transformer(method.model) if method.int8 else self.full_precision[method.model]
        if method.config is not None:  # a model trained with sketch positions on the final grid is sampled there
            apply_fresco(pipe, replace(method.config, position_units=self.position_units[method.model]))
        if method.cache is not None:
            pipe.transformer.enable_cache(method.cache())
        maps: list[tuple[int, np.ndarray]] = []
        try:
            with ForwardRecorder(pipe.transformer) as recorder:
                start = time.perf_counter()
                latents = pipe(**kwargs).images
                seconds = time.perf_counter() - start
            if method.config is not None:
                maps = [(step, levels[0, 0].numpy()) for step, levels in last_fresco_run(pipe).resolution_maps]
        finally:
            if method.cache is not None:
                pipe.transformer.disable_cache()
            if method.config is not None:
                remove_fresco(pipe)
            pipe.transformer = self.full_precision[method.model]
        return latents, seconds, recorder.flops(), maps

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """Unpacked latents (C, H, W) and the decoded picture (H, W, 3) in [0, 1]."""
        pipe = self.pipe
        unpacked = pipe._unpack_latents(latents, SIZE, SIZE, pipe.vae_scale_factor)
        scaled = unpacked / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        picture = pipe.image_processor.postprocess(pipe.vae.decode(scaled, return_dict=False)[0], output_type="np")
        return unpacked[0].float(), picture[0]


def equal_flops_steps(runner: _Runner, prompt: ScenePrompt, methods: Sequence[Method] = ()) -> dict[str, int]:
    """Per budget, the stock step count whose transformer FLOPs come nearest its Fresco plan's (counted, one run
    each; a plan's FLOPs do not depend on the prompt, and guidance doubles both sides alike). The plan of a budget
    is its preset, or for a budget of ``methods`` that no preset names, the first Fresco method at that budget."""
    plans = {budget: Method(preset, "Fresco", config=PRESETS[preset]) for budget, preset in BUDGETS.items()}
    for method in methods:
        if method.budget is not None and method.config is not None:
            plans.setdefault(method.budget, method)
    one_step = runner(Method("one step", "baseline", steps=1, model=methods[0].model if methods else "base"), prompt,
                      1.0)[2]
    return {budget: max(1, round(runner(plan, prompt, 1.0)[2] / one_step)) for budget, plan in plans.items()}


# -------------------------------------------------------------------------------------------------- metrics
def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, peak: float = 1.0) -> float:
    mse = float(((torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def ssim(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian window) over channels, of two (H, W, 3) pictures or two (C, H, W)
    latents (a last dimension of at most 4 after a first one above 4 is read as channels-last)."""
    x, y = (torch.as_tensor(v, dtype=torch.float64) for v in (a, b))
    if x.shape[-1] <= 4 and x.shape[0] > 4:  # (H, W, C) picture -> (C, H, W)
        x, y = x.permute(2, 0, 1), y.permute(2, 0, 1)
    window = min(window, x.shape[-1], x.shape[-2])
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-coords**2 / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).expand(x.shape[0], 1, window, window)

    def blur(v: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(v[None], kernel, groups=v.shape[0])[0]

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    value = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(value.mean())


def _interval(point: float, resampled: np.ndarray) -> dict[str, Any]:
    """A figure with its 95% percentile-bootstrap interval (a KID resample with fewer than two distinct prompts has no
    value and is left out: only at a handful of prompts, as with ``--quick``)."""
    low, high = np.nanpercentile(resampled, [2.5, 97.5])
    return dict(value=float(point), ci=[float(low), float(high)])


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.inf


@dataclass
class _Scored:
    """A method's per-prompt figures in one regime, with what the intervals and paired differences need."""

    facts: dict[str, np.ndarray]  # per prompt, 0/1: whole, objects, shapes, relation
    features: np.ndarray
    kid_resampled: np.ndarray
    patches: np.ndarray  # (projections, pictures, patches per picture): see patch_projections
    swd: float = math.nan
    swd_resampled: np.ndarray | None = None


def _score(images: list[np.ndarray], prompts: list[ScenePrompt], encoder: Any, truth_features: np.ndarray,
           resamples: np.ndarray) -> _Scored:
    specs = [parse_prompt(p.prompt) for p in prompts]
    checks = [check_adherence(img, spec) for img, spec in zip(images, specs)]
    facts = dict(
        whole=np.array([c.passed(s) for c, s in zip(checks, specs)], dtype=float),
        objects=np.array([all(c.found) for c in checks], dtype=float),
        shapes=np.array([all(c.shapes_ok(s)) for c, s in zip(checks, specs)], dtype=float),
        relation=np.array([c.relation_ok for c in checks], dtype=float),
    )
    features = embed_pictures(encoder, images)
    return _Scored(facts, features, kid_bootstrap(features, truth_features, resamples), patch_projections(images))


def _score_patch_swd(scored: Sequence[Any], truth_patches: np.ndarray, index: np.ndarray) -> None:
    """Sets ``swd`` and ``swd_resampled`` on each scored method (this bench's or the video bench's ``_Scored``)."""
    for s, (swd, resampled) in zip(scored, patch_swd_resamples([s.patches for s in scored], truth_patches, index)):
        s.swd, s.swd_resampled = swd, resampled


def _paired(a: _Scored, b: _Scored, truth_features: np.ndarray, resamples: np.ndarray) -> dict[str, Any]:
    """a minus b: whole-check adherence, KID and patch SWD, with paired bootstrap intervals."""
    difference = a.facts["whole"] - b.facts["whole"]
    return dict(
        adherence=_interval(difference.mean(), difference[resamples].mean(1)),
        kid=_interval(kid(a.features, truth_features) - kid(b.features, truth_features),
                      a.kid_resampled - b.kid_resampled),
        patch_swd=_interval(a.swd - b.swd, a.swd_resampled - b.swd_resampled),
    )


# -------------------------------------------------------------------------------------------------- the run
def _check_against(methods: Sequence[Any]) -> None:
    """Before any run: every ``against`` names another method of the run."""
    names = {m.name for m in methods}
    for m in methods:
        if m.against is not None and (m.against not in names or m.against == m.name):
            raise ValueError(f"method {m.name!r}: against={m.against!r} names no other method of this run; use one "
                             f"of {sorted(names - {m.name})}")


def run_benchmark(prompts: list[ScenePrompt], methods: list[Method], *, regimes: Sequence[str] = tuple(REGIMES),
                  pipe: Any = None, resamples: int = RESAMPLES, progress: bool = True,
                  label: str = "fresco bench") -> dict[str, Any]:
    """Runs every method in every regime on every prompt (prompts outer) and returns all figures as a dict."""
    from tqdm.auto import tqdm

    if methods[0].name != "baseline":
        raise ValueError("the first method must be the baseline")
    unknown = set(regimes) - {*REGIMES, DISTILLED}
    if unknown:
        raise ValueError(f"unknown regimes {sorted(unknown)}; known: {', '.join([*REGIMES, DISTILLED])}")
    _check_against(methods)
    on_students = any(m.model != "base" for m in methods)
    if on_students != (DISTILLED in regimes) or (on_students and len(regimes) > 1):
        raise ValueError("the distilled regime runs the students' methods alone (distilled_methods()), and the "
                         "unguided and guided regimes the teacher's; run them as separate benchmarks")
    pipe = pipe or load_scenes_pipeline(progress=False)
    pipe.set_progress_bar_config(disable=True)
    runner = _Runner(pipe)
    for model in dict.fromkeys(m.model for m in methods):  # first-call costs stay out of the timings
        runner(Method("warm-up", "baseline", steps=2, model=model), prompts[0], 1.0)
    matched = equal_flops_steps(runner, prompts[0], methods)
    methods = [replace(m, steps=matched[m.budget]) if m.steps is None and m.config is None else m for m in methods]
    order = [*methods, replace(methods[0], name=REPEAT)]
    runs = {regime: {m.name: _Runs() for m in order} for regime in regimes}
    bar = tqdm(total=len(prompts) * len(order) * len(regimes), desc=label, unit="run", disable=not progress)
    for prompt in prompts:
        for regime in regimes:
            for method in order:
                latents, seconds, flops, maps = runner(method, prompt, REGIMES.get(regime, 1.0))
                unpacked, picture = runner.decode(latents)
                r = runs[regime][method.name]
                r.seconds.append(seconds)
                r.flops.append(flops)
                r.latents.append(unpacked)
                r.images.append(picture)
                r.resolution_maps.append(maps)
                bar.update()
    bar.close()

    encoder = load_feature_encoder()
    rng = np.random.default_rng(0)
    truth = [render(p.scene, SIZE) for p in prompts]
    truth_features = embed_pictures(encoder, truth)
    index = rng.integers(len(prompts), size=(resamples, len(prompts)))
    # The floor a perfect generator would reach: other true renders of the same prompts.
    redrawn = [render(scene_for_prompt(p.prompt, rng), SIZE) for p in prompts]
    floor = _score(redrawn, prompts, encoder, truth_features, index)
    truth_patches = patch_projections(truth)
    _score_patch_swd([floor], truth_patches, index)
    report_regimes = {}
    for regime in regimes:
        scored = {m.name: _score(runs[regime][m.name].images, prompts, encoder, truth_features, index) for m in order}
        _score_patch_swd(list(scored.values()), truth_patches, index)
        rows = [_row(m, runs[regime], scored, prompts, truth_features, index) for m in order]
        guidance = dict(guidance_scale=GUIDANCE_SCALE) if regime == DISTILLED else dict(true_cfg_scale=REGIMES[regime])
        report_regimes[regime] = dict(**guidance, methods=rows)
    used = list(dict.fromkeys(m.model for m in methods))
    models = [f"tools/models/{VARIANTS[m].name}" for m in used]
    return dict(
        model=", ".join(models), sketch_position_units={m: runner.position_units[m] for m in used}, size=SIZE,
        text_tokens=TEXT_TOKENS, resamples=resamples,
        prompts=[dict(prompt=p.prompt, seed=p.seed, held_out=p.held_out) for p in prompts],
        equal_flops_steps=matched,
        true_renders=dict(adherence=_interval(floor.facts["whole"].mean(), floor.facts["whole"][index].mean(1)),
                          kid=_interval(kid(floor.features, truth_features), floor.kid_resampled),
                          patch_swd=_interval(floor.swd, floor.swd_resampled)),
        regimes=report_regimes, torch=torch.__version__, threads=torch.get_num_threads(), commit=_commit(),
        _pictures={regime: {name: r.images for name, r in runs[regime].items()} for regime in regimes},
        _resolution_maps={regime: {name: r.resolution_maps for name, r in runs[regime].items()} for regime in regimes},
    )


def _row(method: Method, runs: dict[str, _Runs], scored: dict[str, _Scored], prompts: list[ScenePrompt],
         truth_features: np.ndarray, index: np.ndarray) -> dict[str, Any]:
    r, base, again = runs[method.name], runs["baseline"], runs[REPEAT]
    s = scored[method.name]
    baseline_seconds = sum((a + b) / 2 for a, b in zip(base.seconds, again.seconds))
    latent_range = [float(b.max() - b.min()) for b in base.latents]
    per_prompt = dict(
        psnr=[psnr(img, b) for img, b in zip(r.images, base.images)],
        ssim=[ssim(img, b) for img, b in zip(r.images, base.images)],
        latent_psnr=[psnr(lat, b, peak=span) for lat, b, span in zip(r.latents, base.latents, latent_range)],
        **{f"adherence_{k}": v.astype(bool).tolist() for k, v in s.facts.items()},
        seconds=r.seconds, flops=r.flops,
    )
    held = np.array([p.held_out for p in prompts])
    adherence = {k: _interval(v.mean(), v[index].mean(1)) for k, v in s.facts.items()}
    for split, mask in (("train", ~held), ("held_out", held)):
        if mask.any():
            whole = s.facts["whole"][mask]
            resampled = np.random.default_rng(1).integers(len(whole), size=(index.shape[0], len(whole)))
            adherence[f"whole_{split}"] = _interval(whole.mean(), whole[resampled].mean(1))
    ssims = np.array(per_prompt["ssim"])
    peer = f"steps@{method.budget}" if method.budget and not method.name.startswith("steps@") else None
    return dict(
        method=method.name, family=method.family, model=method.model, budget=method.budget, steps=method.steps,
        config=None if method.config is None else _config_fields(method.config),
        flops_ratio=sum(base.flops) / sum(r.flops), wall_ratio=baseline_seconds / sum(r.seconds),
        kid=_interval(kid(s.features, truth_features), s.kid_resampled),
        patch_swd=_interval(s.swd, s.swd_resampled), adherence=adherence,
        psnr=_mean(per_prompt["psnr"]), ssim=_interval(ssims.mean(), ssims[index].mean(1)),
        latent_psnr=_mean(per_prompt["latent_psnr"]),
        versus_baseline=_paired(s, scored["baseline"], truth_features, index),
        versus_fewer_steps=None if peer is None else dict(
            method=peer, **_paired(s, scored[peer], truth_features, index)),
        versus_other=None if method.against is None else dict(
            method=method.against, **_paired(s, scored[method.against], truth_features, index)),
        identical_to_baseline=all(torch.equal(a, b) for a, b in zip(r.latents, base.latents)),
        per_prompt=per_prompt,
    )


def _config_fields(config: FrescoConfig) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except OSError:
        return None


def _json_safe(value: Any) -> Any:
    """Standard JSON: an infinite PSNR (pictures identical to the baseline) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def sanity_problems(report: dict[str, Any]) -> list[str]:
    """What ``--quick`` asserts: every method ran in every regime, every figure is finite, the baseline repeats bit
    for bit."""
    problems = []
    for regime, block in report["regimes"].items():
        for row in block["methods"]:
            figures = dict(flops_ratio=row["flops_ratio"], wall_ratio=row["wall_ratio"], kid=row["kid"]["value"],
                           adherence=row["adherence"]["whole"]["value"], ssim=row["ssim"]["value"],
                           patch_swd=row["patch_swd"]["value"])
            if not row["identical_to_baseline"]:
                figures.update(psnr=row["psnr"], latent_psnr=row["latent_psnr"])
            bad = [k for k, v in figures.items() if not (isinstance(v, float) and math.isfinite(v))]
            if bad:
                problems.append(f"{regime} / {row['method']}: non-finite {', '.join(bad)}")
        again = next(r for r in block["methods"] if r["method"] == REPEAT)
        if not again["identical_to_baseline"]:
            problems.append(f"{regime}: the baseline run twice gave different latents")
    return problems


# -------------------------------------------------------------------------------------------------- outputs
def _figure(entry: dict[str, Any], digits: int = 3) -> str:
    low, high = entry["ci"]
    return f"{entry['value']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _regime_title(report: dict[str, Any], regime: str) -> str:
    block = report["regimes"][regime]
    if "guidance_scale" in block:
        return f"{regime} (the students; dev-like guidance_scale {block['guidance_scale']:g})"
    return f"{regime} (true_cfg_scale {block['true_cfg_scale']:g})"


def table(report: dict[str, Any], regime: str) -> str:
    lines = [f"{_regime_title(report, regime)}; [95% bootstrap interval]",
             "| method | FLOPs ratio | wall ratio | KID x1e3 | patch SWD x1e3 | adherence | held-out adherence | "
             "shapes | relation | adherence - fewer steps | KID - fewer steps | patch SWD - fewer steps | "
             "SSIM to baseline | PSNR |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["regimes"][regime]["methods"]:
        a = r["adherence"]
        held = _figure(a["whole_held_out"], 2) if "whole_held_out" in a else "-"
        versus = r["versus_fewer_steps"]
        d_adh, d_kid, d_swd = ("-", "-", "-") if versus is None else (
            f"{_figure(versus['adherence'], 2)} vs {versus['method']}", _figure(versus["kid"], 2),
            _figure(versus["patch_swd"], 1))
        image_psnr = f"{r['psnr']:.2f}" if math.isfinite(r["psnr"]) else "identical"
        lines.append(f"| {r['method']} | {r['flops_ratio']:.2f} | {r['wall_ratio']:.2f} | {_figure(r['kid'], 2)} | "
                     f"{_figure(r['patch_swd'], 1)} | {_figure(a['whole'], 2)} | {held} | {a['shapes']['value']:.2f} | "
                     f"{a['relation']['value']:.2f} | {d_adh} | {d_kid} | {d_swd} | {r['ssim']['value']:.3f} | "
                     f"{image_psnr} |")
    truth = report["true_renders"]
    lines.append(f"| true renders (other draws of the same prompts) | - | - | {_figure(truth['kid'], 2)} | "
                 f"{_figure(truth['patch_swd'], 1)} | {_figure(truth['adherence'], 2)} | - | - | - | - | - | - | - | "
                 "- |")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(report["regimes"])
    figure, axes = plt.subplots(len(regimes), 2, figsize=(15, 5.5 * len(regimes)), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for row_axes, regime in zip(axes, regimes):
        families: dict[str, list[dict[str, Any]]] = {}
        for row in report["regimes"][regime]["methods"]:
            if row["method"] != REPEAT:
                families.setdefault(row["family"], []).append(row)
        panels = ((lambda r: r["kid"], "realism: KID x1e3 to true renders (lower is better)"),
                  (lambda r: r["adherence"]["whole"], "adherence: whole check passed"))
        for axis, (pick, label) in zip(row_axes, panels):
            for i, (family, rows) in enumerate(families.items()):
                rows = sorted(rows, key=lambda r: r["flops_ratio"])
                xs = [r["flops_ratio"] for r in rows]
                ys = [pick(r)["value"] for r in rows]
                errors = np.array([[pick(r)["value"] - pick(r)["ci"][0], pick(r)["ci"][1] - pick(r)["value"]]
                                   for r in rows]).T
                if family == "baseline":
                    label_base = "50-step baseline" + (" (dev-like)" if rows[0].get("model") == "dev" else "")
                    axis.errorbar(xs, ys, yerr=errors, fmt="k*", markersize=12, capsize=3, label=label_base)
                    axis.axhspan(pick(rows[0])["ci"][0], pick(rows[0])["ci"][1], color="k", alpha=0.07)
                    continue
                loose = family.startswith("stacks") or family.startswith("FirstBlockCache")
                axis.errorbar(xs, ys, yerr=errors, fmt="s" if loose else "o-", capsize=3, markersize=5,
                              label=family, color=colors[i % len(colors)], linewidth=2.5 if family == "Fresco" else 1)
            axis.set_xscale("log")
            axis.set_xlabel("transformer FLOPs saving vs 50-step baseline (x)")
            axis.set_ylabel(label)
            axis.set_title(_regime_title(report, regime))
            axis.grid(True, alpha=0.3)
        row_axes[1].legend(fontsize=7, loc="lower left")
    figure.suptitle(f"fresco bench on {report['model']}: {len(report['prompts'])} prompts, 95% bootstrap "
                    f"intervals, commit {report['commit']}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def picture_grid(report: dict[str, Any], methods: Sequence[str], path: Path, prompts: int = 4) -> None:
    """The first ``prompts`` prompts (rows, per regime) under the named methods (columns), for a quick look."""
    from PIL import Image

    rows = []
    for pictures in report["_pictures"].values():
        for i in range(min(prompts, len(report["prompts"]))):
            rows.append(np.concatenate([pictures[m][i] for m in methods], axis=1))
    Image.fromarray((np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)).save(path)


# -------------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = ", ".join(m.name for m in benchmark_methods())
    parser.add_argument("--prompts", type=int, default=128, help="prompt count (default: %(default)s)")
    parser.add_argument("--held-out", type=int, default=32,
                        help="how many of them come from the held-out split (default: %(default)s)")
    parser.add_argument("--regime", nargs="+", choices=list(REGIMES),
                        help="unguided (one forward a step) and/or guided (true CFG at the model's scale, "
                             f"{GUIDANCE_SCALE:g}, empty negative prompt) (default: both)")
    parser.add_argument("--distilled", action="store_true",
                        help="the distilled regime instead: the dev-like and schnell-like students of the shipped "
                             "model (methods: " + ", ".join(m.name for m in distilled_methods()) + ")")
    parser.add_argument("--video", action="store_true",
                        help="the video benchmark instead, on the shipped video model: Fresco at 3x, 5x and 10x "
                             "against fewer steps at equal FLOPs, adherence, realism per frame, motion and flicker "
                             "(writes bench_video.json and bench_video_frames.png)")
    parser.add_argument("--quick", action="store_true",
                        help="3 prompts; checks sanity only (every method runs, finite figures, exact baseline repeat)")
    parser.add_argument("--only", nargs="+", metavar="METHOD",
                        help=f"run these methods (and the baseline) only; methods: {names}")
    parser.add_argument("--resamples", type=int, default=RESAMPLES,
                        help="bootstrap resamples for the intervals (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("fresco-out/bench"),
                        help="folder for bench.json, bench.png and bench_pictures.png (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")


def main(args: argparse.Namespace) -> int:
    if args.video:
        from .video_bench import main as video_main

        return video_main(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    count, held_out = (3, 1) if args.quick else (args.prompts, args.held_out)
    if args.distilled and args.regime:
        raise ValueError("--regime chooses among the teacher's regimes; --distilled runs the students' regime alone: "
                         "pass one or the other")
    methods = distilled_methods() if args.distilled else benchmark_methods()
    regimes = [DISTILLED] if args.distilled else args.regime or list(REGIMES)
    if args.only:
        unknown = set(args.only) - {m.name for m in methods}
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; known: {', '.join(m.name for m in methods)}")
        needed = set(args.only) | {f"steps@{m.budget}" for m in methods if m.name in args.only and m.budget}
        methods = [m for m in methods if m.name == "baseline" or m.name in needed]
    report = run_benchmark(prompt_set(count, held_out), methods, regimes=regimes, resamples=args.resamples)
    args.out.mkdir(parents=True, exist_ok=True)
    pictures, maps = report.pop("_pictures"), report.pop("_resolution_maps")
    (args.out / "bench.json").write_text(json.dumps(_json_safe(report), indent=1) + "\n")
    report["_pictures"], report["_resolution_maps"] = pictures, maps
    plot(report, args.out / "bench.png")
    available = next(iter(pictures.values()))
    shown = [m for m in ("baseline", "steps@10x", "fresco@3x", "fresco@5x", "fresco@10x", "bottleneck@10x",
                         "ralu-whole@10x", f"schnell-{SCHNELL_STEPS}", "steps@22x", "fresco@22x") if m in available]
    picture_grid(report, shown, args.out / "bench_pictures.png")
    for regime in report["regimes"]:
        print(table(report, regime) + "\n")
    print(f"wrote {args.out / 'bench.json'}, {args.out / 'bench.png'}, {args.out / 'bench_pictures.png'} "
          f"(picture columns: {', '.join(shown)}; rows: the first prompts in each regime)")
    problems = sanity_problems(report)
    for problem in problems:
        print(f"fresco bench: {problem}")
    return 1 if problems else 0
