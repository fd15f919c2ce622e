"""``fresco bench --video``: Fresco against fewer steps at equal FLOPs on the shipped video model.

Every method renders the same clip prompts with the same seeds (9 frames, 64x64, the shipped ``WanPipeline``), in
each regime: **unguided** (``guidance_scale=1``, one forward a step) and **guided** (WanPipeline's classifier-free
guidance at the model's scale, empty negative prompt). Methods: the 50-step baseline (run twice: the second run must
repeat it bit for bit, and times it again), Fresco at three presets (``wan2.1-3x``, ``hunyuan-video-5x``,
``wan2.1-10x``) and the stock sampler at the step count whose counted FLOPs match each.
Per method and regime, with 95% bootstrap intervals over prompts:

- **adherence**: the clip checker (:func:`fresco_plugin.tools.video_scenes.check_clip`): whole (object in its colour,
  its shape, motion the stated way) and motion alone, on training and held-out prompts;
- **realism per frame**: KID (x 1e3) between the method's frames and the true clips' frames (first, middle and last
  of each clip), on the shipped scene encoder's features (frames upsampled 2x to the 128 pixels it was trained at),
  and the sliced Wasserstein distance between 7x7 pixel patches of the method's frames and of the true clips'
  frames (patch SWD, x 1e3: the same places of every method's clip of a prompt, so the paired differences compare
  like with like; resampled by prompt as everything else);
- **temporal stability**: *motion error*, how far a clip's mean frame-to-frame change is from its true clip's (too
  still or too busy both count), and *flicker*, the mean absolute second difference in time (a pixel that brightens
  and dims again; a true clip's only comes from the moving object's edges), each over the true clip's own figure;
  and for Fresco, flicker *where promotion boundaries move*: the second differences that touch a token promoted at
  another step than the token at its place in a neighbouring latent frame, against the baseline's in the same
  places of the same prompt and seed;
- **compute**: transformer FLOPs counted from the forwards that ran, and wall time, both over the baseline's.

Fresco's rows carry paired differences against the baseline and against fewer steps at equal FLOPs.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fresco_plugin.config import PRESETS, FrescoConfig
from fresco_plugin.tools.flops_trace import ForwardRecorder

from .bench import _check_against, _commit, _config_fields, _figure, _interval, _json_safe, _score_patch_swd
from .patch_statistics import patch_projections
from .scene_features import embed_pictures, kid, kid_bootstrap, load_feature_encoder
from .shipped_model import (
    CLIP_FRAMES,
    CLIP_GUIDANCE_SCALE,
    CLIP_SIZE,
    CLIP_TEXT_TOKENS,
    ClipPrompt,
    clip_prompt_set,
    load_clips_pipeline,
)
from .video_scenes import check_clip, clip_for_prompt, render_clip

__all__ = ["BUDGETS", "REGIMES", "VideoMethod", "flicker", "full_resolution_step", "motion", "moving_boundaries",
           "region_flicker", "run_video_benchmark", "share_frame_detail", "video_methods"]

BASELINE_STEPS = 50
BUDGETS = {"3x": "wan2.1-3x", "5x": "hunyuan-video-5x", "10x": "wan2.1-10x"}
REGIMES = {"unguided": 1.0, "guided": CLIP_GUIDANCE_SCALE}  # WanPipeline's guidance_scale
REPEAT = "baseline (timed again)"
RESAMPLES = 1000
KID_FRAMES = (0, CLIP_FRAMES // 2, CLIP_FRAMES - 1)  # KID's frames of each clip (all nine would cost 9x as much)


@dataclass(frozen=True)
class VideoMethod:
    name: str
    steps: int | None = None  # stock num_inference_steps; None with a Fresco config, or a steps@ peer not yet matched
    config: FrescoConfig | None = None
    budget: str | None = None
    against: str | None = None  # another method's name: the row adds paired differences against it (plan sweeps)
    initial_noise: str | None = None  # a name in INITIAL_NOISE: the stock noise, transformed, passed as latents=

    def __post_init__(self):
        if self.initial_noise is not None and self.initial_noise not in INITIAL_NOISE:
            raise ValueError(f"method {self.name!r}: initial_noise={self.initial_noise!r} is unknown; use one of "
                             f"{sorted(INITIAL_NOISE)} or None (the stock noise)")


def share_frame_detail(noise: torch.Tensor) -> torch.Tensor:
    """``(B, C, F, H, W)`` noise whose fine detail (each 2x2 block of latent pixels less its mean) is the first latent
    frame's in every frame. Each frame keeps its own 2x2 means, which are all a half-resolution sketch reads; every
    value stays standard normal. A noise prior for a still background (sweep only: no bench method uses it)."""
    def detail(x: torch.Tensor) -> torch.Tensor:
        return x - F.avg_pool3d(x, (1, 2, 2)).repeat_interleave(2, -2).repeat_interleave(2, -1)

    return noise - detail(noise) + detail(noise[:, :, :1])


INITIAL_NOISE = {"frame-shared detail": share_frame_detail}


def video_methods() -> list[VideoMethod]:
    methods = [VideoMethod("baseline", steps=BASELINE_STEPS)]
    methods += [VideoMethod(f"steps@{budget}", budget=budget) for budget in BUDGETS]
    methods += [VideoMethod(f"fresco@{budget}", config=PRESETS[preset], budget=budget)
                for budget, preset in BUDGETS.items()]
    return methods


def motion(frames: np.ndarray) -> float:
    """Mean absolute change from one frame to the next, ``(F, H, W, 3)`` in [0, 1]."""
    return float(np.abs(np.diff(frames.astype(np.float64), axis=0)).mean())


def flicker(frames: np.ndarray) -> float:
    """Mean absolute second difference in time: zero for still or steadily changing pixels."""
    return float(np.abs(np.diff(frames.astype(np.float64), n=2, axis=0)).mean())


def full_resolution_step(resolution_maps: Any) -> np.ndarray:
    """``(frames, rows, cols)``: the step from which each latent token of the first clip ran at full resolution, read
    from a Fresco run's resolution maps."""
    first = None
    for step, levels in resolution_maps:
        full = levels[0].numpy() == 0
        first = np.where(full, step, -1) if first is None else np.where((first < 0) & full, step, first)
    return first


def moving_boundaries(promoted_at: np.ndarray, frames: int, size: int) -> np.ndarray:
    """``(frames - 2, size, size)`` mask of the second time differences (frames t-1, t, t+1) that touch a token
    promoted at another step than the token at its place in a neighbouring latent frame: where a promotion boundary
    moves in time. Latent frame 0 is clip frame 0; latent frame k >= 1 holds frames 2k-1 and 2k (the causal 2x time
    compression of the shipped VAE)."""
    moving = np.zeros(promoted_at.shape, dtype=bool)
    differs = promoted_at[1:] != promoted_at[:-1]
    moving[1:] |= differs
    moving[:-1] |= differs
    latent_of_frame = (np.arange(frames) + 1) // 2
    block = size // promoted_at.shape[-1]
    pixels = moving[latent_of_frame].repeat(block, axis=1).repeat(block, axis=2)
    return pixels[:-2] | pixels[1:-1] | pixels[2:]


def region_flicker(frames: np.ndarray, region: np.ndarray) -> float:
    """Mean absolute second time difference over the entries of ``region`` (NaN when it is empty)."""
    if not region.any():
        return float("nan")
    second = np.abs(np.diff(frames.astype(np.float64), n=2, axis=0)).mean(axis=-1)
    return float(second[region].mean())


class _Runner:
    """One clip prompt with one method in one regime on the shipped pipeline, Fresco applied around the call."""

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.embeddings: dict[str, torch.Tensor] = {}

    def embed(self, prompt: str) -> torch.Tensor:
        if prompt not in self.embeddings:
            with torch.no_grad():
                self.embeddings[prompt] = self.pipe.encode_prompt(prompt, do_classifier_free_guidance=False,
                                                                  max_sequence_length=CLIP_TEXT_TOKENS)[0]
        return self.embeddings[prompt]

    def __call__(self, method: VideoMethod, prompt: ClipPrompt,
                 guidance: float) -> tuple[torch.Tensor, float, int, np.ndarray | None]:
        """Latents, seconds, counted FLOPs and, for Fresco, the step at which each latent token (frame, row, col)
        first ran at full resolution."""
        from fresco_plugin import apply_fresco, last_fresco_run, remove_fresco

        kwargs: dict[str, Any] = dict(prompt_embeds=self.embed(prompt.prompt), height=CLIP_SIZE, width=CLIP_SIZE,
                                      num_frames=CLIP_FRAMES, guidance_scale=guidance, output_type="latent",
                                      generator=torch.Generator().manual_seed(prompt.seed))
        if guidance > 1:
            kwargs["negative_prompt_embeds"] = self.embed("")
        if method.steps is not None:
            kwargs["num_inference_steps"] = method.steps
        if method.initial_noise is not None:
            stock = self.pipe.prepare_latents(1, self.pipe.transformer.config.in_channels, CLIP_SIZE, CLIP_SIZE,
                                              CLIP_FRAMES, torch.float32, self.pipe.device,
                                              torch.Generator().manual_seed(prompt.seed))
            kwargs["latents"] = INITIAL_NOISE[method.initial_noise](stock)
        if method.config is not None:
            apply_fresco(self.pipe, method.config)
        promoted_at = None
        try:
            with ForwardRecorder(self.pipe.transformer) as recorder:
                start = time.perf_counter()
                latents = self.pipe(**kwargs).frames
                seconds = time.perf_counter() - start
            if method.config is not None:
                promoted_at = full_resolution_step(last_fresco_run(self.pipe).resolution_maps)
        finally:
            if method.config is not None:
                remove_fresco(self.pipe)
        return latents, seconds, recorder.flops(), promoted_at

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(F, H, W, 3) frames in [0, 1], decoded as WanPipeline decodes."""
        vae = self.pipe.vae
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents)
        std = torch.tensor(vae.config.latents_std).view(shape).to(latents)
        video = vae.decode(latents * std + mean, return_dict=False)[0]
        return self.pipe.video_processor.postprocess_video(video, output_type="np")[0]


def equal_flops_steps(runner: _Runner, prompt: ClipPrompt, methods: list[VideoMethod] | None = None) -> dict[str, int]:
    """Per budget, the stock step count whose counted transformer FLOPs come nearest its Fresco plan's: the first
    Fresco method of ``methods`` at that budget (by default the benchmark's presets)."""
    plans: dict[str, VideoMethod] = {}
    for method in methods or video_methods():
        if method.budget is not None and method.config is not None:
            plans.setdefault(method.budget, method)
    one_step = runner(VideoMethod("one step", steps=1), prompt, 1.0)[2]
    return {budget: max(1, round(runner(plan, prompt, 1.0)[2] / one_step)) for budget, plan in plans.items()}


@dataclass
class _Scored:
    facts: dict[str, np.ndarray]  # per prompt: whole, motion (0/1), motion_error, flicker
    features: np.ndarray  # per frame
    kid_resampled: np.ndarray
    patches: np.ndarray  # (projections, clips, patches per clip): each clip's patches along the SWD's directions
    swd: float = math.nan
    swd_resampled: np.ndarray | None = None


def _frame_features(encoder: Any, clips: list[np.ndarray]) -> np.ndarray:
    frames = [np.repeat(np.repeat(clip[i], 2, axis=0), 2, axis=1) for clip in clips for i in KID_FRAMES]
    return embed_pictures(encoder, frames)


def _score(clips: list[np.ndarray], prompts: list[ClipPrompt], truth: list[np.ndarray], encoder: Any,
           truth_features: np.ndarray, frame_index: np.ndarray) -> _Scored:
    checks = [check_clip(clip, p.prompt) for clip, p in zip(clips, prompts)]
    facts = dict(
        whole=np.array([c.passed for c in checks], dtype=float),
        motion=np.array([c.motion_ok for c in checks], dtype=float),
        motion_error=np.array([abs(motion(c) - motion(t)) for c, t in zip(clips, truth)]),
        flicker=np.array([flicker(c) - flicker(t) for c, t in zip(clips, truth)]),
    )
    features = _frame_features(encoder, clips)
    return _Scored(facts, features, kid_bootstrap(features, truth_features, frame_index), patch_projections(clips))


def _frame_rows(index: np.ndarray, frames: int) -> np.ndarray:
    """A prompt resample as a resample of frames: every frame of each drawn clip."""
    return (index[:, :, None] * frames + np.arange(frames)).reshape(index.shape[0], -1)


def run_video_benchmark(prompts: list[ClipPrompt], *, regimes: tuple[str, ...] = tuple(REGIMES), pipe: Any = None,
                        methods: list[VideoMethod] | None = None, resamples: int = RESAMPLES,
                        progress: bool = True) -> dict[str, Any]:
    """Runs every method (by default :func:`video_methods`; the first must be the 50-step baseline, and each Fresco
    method's budget needs a ``steps@`` peer) in every regime on every prompt (prompts outer) and returns all figures
    as a dict."""
    from tqdm.auto import tqdm

    unknown = set(regimes) - set(REGIMES)
    if unknown:
        raise ValueError(f"unknown regimes {sorted(unknown)}; known: {', '.join(REGIMES)}")
    methods = methods or video_methods()
    _check_against(methods)
    pipe = pipe or load_clips_pipeline(progress=False)
    pipe.set_progress_bar_config(disable=True)
    runner = _Runner(pipe)
    runner(VideoMethod("warm-up", steps=2), prompts[0], 1.0)  # first-call costs stay out of the timings
    matched = equal_flops_steps(runner, prompts[0], methods)
    methods = [replace(m, steps=matched[m.budget]) if m.config is None and m.steps is None else m for m in methods]
    order = [*methods, replace(methods[0], name=REPEAT)]
    runs = {r: {m.name: dict(latents=[], clips=[], seconds=[], flops=[], promoted_at=[]) for m in order}
            for r in regimes}
    bar = tqdm(total=len(prompts) * len(order) * len(regimes), desc="fresco bench --video", unit="run",
               disable=not progress)
    for prompt in prompts:
        for regime in regimes:
            for method in order:
                latents, seconds, flops, promoted_at = runner(method, prompt, REGIMES[regime])
                r = runs[regime][method.name]
                r["promoted_at"].append(promoted_at)
                r["latents"].append(latents[0])
                r["clips"].append(runner.decode(latents))
                r["seconds"].append(seconds)
                r["flops"].append(flops)
                bar.update()
    bar.close()

    encoder = load_feature_encoder()
    rng = np.random.default_rng(0)
    truth = [render_clip(p.clip, CLIP_FRAMES, CLIP_SIZE) for p in prompts]
    truth_features = _frame_features(encoder, truth)
    index = rng.integers(len(prompts), size=(resamples, len(prompts)))
    frame_index = _frame_rows(index, len(KID_FRAMES))
    # the floor a perfect generator would reach: other true clips of the same prompts
    redrawn = [render_clip(clip_for_prompt(p.prompt, rng), CLIP_FRAMES, CLIP_SIZE) for p in prompts]
    floor = _score(redrawn, prompts, truth, encoder, truth_features, frame_index)
    truth_patches = patch_projections(truth)
    _score_patch_swd([floor], truth_patches, index)
    held = np.array([p.held_out for p in prompts])
    report_regimes = {}
    for regime in regimes:
        scored = {m.name: _score(runs[regime][m.name]["clips"], prompts, truth, encoder, truth_features, frame_index)
                  for m in order}
        _score_patch_swd(list(scored.values()), truth_patches, index)
        rows = [_row(m, runs[regime], scored, truth_features, index, held) for m in order]
        report_regimes[regime] = dict(guidance_scale=REGIMES[regime], methods=rows)
    return dict(
        model="tools/models/clips-wan", size=CLIP_SIZE, frames=CLIP_FRAMES, resamples=resamples,
        prompts=[dict(prompt=p.prompt, seed=p.seed, held_out=p.held_out) for p in prompts],
        equal_flops_steps=matched,
        true_clips=dict(adherence=_interval(floor.facts["whole"].mean(), floor.facts["whole"][index].mean(1)),
                        kid=_interval(kid(floor.features, truth_features), floor.kid_resampled),
                        patch_swd=_interval(floor.swd, floor.swd_resampled),
                        motion_error=_interval(floor.facts["motion_error"].mean(),
                                               floor.facts["motion_error"][index].mean(1)),
                        flicker=_interval(floor.facts["flicker"].mean(), floor.facts["flicker"][index].mean(1))),
        regimes=report_regimes, torch=torch.__version__, threads=torch.get_num_threads(), commit=_commit(),
        _clips={regime: {name: r["clips"] for name, r in runs[regime].items()} for regime in regimes},
    )


def _paired(a: _Scored, b: _Scored, truth_features: np.ndarray, index: np.ndarray) -> dict[str, Any]:
    """a minus b, with paired bootstrap intervals."""
    out = {}
    for name in ("whole", "motion_error", "flicker"):
        difference = a.facts[name] - b.facts[name]
        out["adherence" if name == "whole" else name] = _interval(difference.mean(), difference[index].mean(1))
    out["kid"] = _interval(kid(a.features, truth_features) - kid(b.features, truth_features),
                           a.kid_resampled - b.kid_resampled)
    out["patch_swd"] = _interval(a.swd - b.swd, a.swd_resampled - b.swd_resampled)
    return out


def _row(method: VideoMethod, runs: dict[str, dict[str, list]], scored: dict[str, _Scored],
         truth_features: np.ndarray, index: np.ndarray, held: np.ndarray) -> dict[str, Any]:
    r, base, again, s = runs[method.name], runs["baseline"], runs[REPEAT], scored[method.name]
    baseline_seconds = sum((a + b) / 2 for a, b in zip(base["seconds"], again["seconds"]))
    figures = {k: _interval(v.mean(), v[index].mean(1)) for k, v in s.facts.items()}
    for split, mask in (("train", ~held), ("held_out", held)):
        if mask.any():
            whole = s.facts["whole"][mask]
            resampled = np.random.default_rng(1).integers(len(whole), size=(index.shape[0], len(whole)))
            figures[f"whole_{split}"] = _interval(whole.mean(), whole[resampled].mean(1))
    peer = f"steps@{method.budget}" if method.config is not None else None
    return dict(
        method=method.name, budget=method.budget, steps=method.steps, initial_noise=method.initial_noise,
        config=None if method.config is None else _config_fields(method.config),
        flops_ratio=sum(base["flops"]) / sum(r["flops"]), wall_ratio=baseline_seconds / sum(r["seconds"]),
        kid=_interval(kid(s.features, truth_features), s.kid_resampled),
        patch_swd=_interval(s.swd, s.swd_resampled), **figures,
        versus_baseline=_paired(s, scored["baseline"], truth_features, index),
        versus_fewer_steps=None if peer is None else dict(method=peer, **_paired(s, scored[peer], truth_features,
                                                                                 index)),
        versus_other=None if method.against is None else dict(
            method=method.against, **_paired(s, scored[method.against], truth_features, index)),
        boundary_flicker=None if method.config is None else _boundary_flicker(r, base, index),
        identical_to_baseline=all(torch.equal(a, b) for a, b in zip(r["latents"], base["latents"])),
    )


def _boundary_flicker(run: dict[str, list], base: dict[str, list], index: np.ndarray) -> dict[str, Any]:
    """Flicker where the method's promotion boundaries move in time, minus the baseline's in the same places (same
    prompt and seed), over the clips that have such places; with the share of second differences they cover."""
    regions = [moving_boundaries(p, CLIP_FRAMES, CLIP_SIZE) for p in run["promoted_at"]]
    difference = np.array([region_flicker(clip, region) - region_flicker(stock, region)
                           for clip, stock, region in zip(run["clips"], base["clips"], regions)])
    has = ~np.isnan(difference)
    out: dict[str, Any] = dict(clips=int(has.sum()), share=float(np.mean([r.mean() for r in regions])))
    if has.any():
        resampled = np.random.default_rng(2).integers(int(has.sum()), size=(index.shape[0], int(has.sum())))
        out["versus_baseline"] = _interval(difference[has].mean(), difference[has][resampled].mean(1))
    return out


def table(report: dict[str, Any], regime: str) -> str:
    lines = [f"{regime} (guidance_scale {report['regimes'][regime]['guidance_scale']:g}); [95% bootstrap interval]",
             "| method | steps | FLOPs ratio | wall ratio | adherence | held-out | motion | KID x1e3 (frames) | "
             "patch SWD | motion error x1e3 | flicker x1e3 | adherence - fewer steps | KID - fewer steps | "
             "patch SWD - fewer steps | motion error - fewer steps x1e3 | flicker - fewer steps x1e3 | "
             "flicker where promotion boundaries move - baseline x1e3 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    thousand = lambda e: dict(value=e["value"] * 1e3, ci=[v * 1e3 for v in e["ci"]])  # noqa: E731
    for r in report["regimes"][regime]["methods"]:
        held = _figure(r["whole_held_out"], 2) if "whole_held_out" in r else "-"
        versus = r["versus_fewer_steps"]
        paired = ["-"] * 5 if versus is None else [f"{_figure(versus['adherence'], 2)} vs {versus['method']}",
                                                   _figure(versus["kid"], 2), _figure(versus["patch_swd"], 2),
                                                   _figure(thousand(versus["motion_error"]), 2),
                                                   _figure(thousand(versus["flicker"]), 2)]
        boundary = r["boundary_flicker"]
        moving = "-" if boundary is None else "no moving boundary" if "versus_baseline" not in boundary else (
            f"{_figure(thousand(boundary['versus_baseline']), 2)} ({boundary['share']:.0%} of entries)")
        steps = r["steps"] if r["steps"] is not None else "+".join(str(n) for n in r["config"]["stage_steps"])
        lines.append(f"| {r['method']} | {steps} | {r['flops_ratio']:.2f} | {r['wall_ratio']:.2f} | "
                     f"{_figure(r['whole'], 2)} | {held} | {_figure(r['motion'], 2)} | {_figure(r['kid'], 2)} | "
                     f"{_figure(r['patch_swd'], 2)} | {_figure(thousand(r['motion_error']), 2)} | "
                     f"{_figure(thousand(r['flicker']), 2)} | " + " | ".join(paired) + f" | {moving} |")
    t = report["true_clips"]
    lines.append(f"| true clips (other draws of the same prompts) | - | - | - | {_figure(t['adherence'], 2)} | - | - | "
                 f"{_figure(t['kid'], 2)} | {_figure(t['patch_swd'], 2)} | {_figure(thousand(t['motion_error']), 2)} | "
                 f"{_figure(thousand(t['flicker']), 2)} | - | - | - | - | - | - |")
    return "\n".join(lines)


def sanity_problems(report: dict[str, Any]) -> list[str]:
    problems = []
    for regime, block in report["regimes"].items():
        for row in block["methods"]:
            figures = [row["flops_ratio"], row["wall_ratio"], row["kid"]["value"], row["whole"]["value"],
                       row["flicker"]["value"], row["patch_swd"]["value"]]
            if not all(np.isfinite(figures)):
                problems.append(f"{regime} / {row['method']}: a non-finite figure")
        if not next(r for r in block["methods"] if r["method"] == REPEAT)["identical_to_baseline"]:
            problems.append(f"{regime}: the baseline run twice gave different latents")
    return problems


def frame_strip(report: dict[str, Any], methods: list[str], path: Path, prompts: int = 2) -> None:
    """Every frame of the first ``prompts`` clips (per regime), one row per method, for a look at motion and flicker."""
    from PIL import Image

    rows = []
    for clips in report["_clips"].values():
        for i in range(min(prompts, len(report["prompts"]))):
            rows += [np.concatenate(list(clips[m][i]), axis=1) for m in methods]
    Image.fromarray((np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)).save(path)


def main(args: argparse.Namespace) -> int:
    if args.distilled or args.only:
        raise ValueError("--video runs its own methods (baseline, steps@ and fresco@ at 3x, 5x and 10x) in the "
                         "unguided and guided regimes; --distilled and --only are for the pictures benchmark")
    if args.threads:
        torch.set_num_threads(args.threads)
    count, held_out = (3, 1) if args.quick else (args.prompts, args.held_out)
    report = run_video_benchmark(clip_prompt_set(count, held_out), regimes=tuple(args.regime or REGIMES),
                                 resamples=args.resamples)
    args.out.mkdir(parents=True, exist_ok=True)
    clips = report.pop("_clips")
    (args.out / "bench_video.json").write_text(json.dumps(_json_safe(report), indent=1) + "\n")
    report["_clips"] = clips
    shown = ["baseline", "steps@5x", "fresco@5x", "steps@10x", "fresco@10x"]
    frame_strip(report, shown, args.out / "bench_video_frames.png")
    for regime in report["regimes"]:
        print(table(report, regime) + "\n")
    print(f"wrote {args.out / 'bench_video.json'} and {args.out / 'bench_video_frames.png'} (rows: "
          f"{', '.join(shown)} for the first prompts of each regime; columns: frames)")
    problems = sanity_problems(report)
    for problem in problems:
        print(f"fresco bench --video: {problem}")
    return 1 if problems else 0
