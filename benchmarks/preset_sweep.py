"""Sweeps the FLUX.1-dev presets' stage plans on the shipped scenes model, to choose their defaults from measurements.

    python benchmarks/preset_sweep.py --prompts 64 --held-out 16 --workers 15 --out sweep.json

For each named budget (3x, 5x, 10x transformer FLOPs against FLUX.1-dev's 50-step run at 1024x1024, the figure the
preset's name promises and ``tests/test_flops.py`` holds it to), every plan in a grid of low-resolution step counts
and promotion settings gets the most full-resolution steps that still meet the budget. Each plan then renders the
prompt set on the scenes model (128x128, fp32, one thread per worker process) and is scored by its fidelity to the
50-step baseline picture of the same seed (SSIM and PSNR on decoded pictures and on latents) and by adherence.
Fewer-steps runs at the same budgets are rendered alongside as the reference every plan has to beat.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fresco_plugin.config import PRESETS, FrescoConfig
from fresco_plugin.flops import count_plan_flops
from fresco_plugin.sampler import min_score_history
from fresco_plugin.schedule import plan_stages
from fresco_plugin.tools.bench import BASELINE_STEPS, Method, _Runner, psnr, ssim
from fresco_plugin.tools.scenes import check_adherence, parse_prompt
from fresco_plugin.tools.shipped_model import load_scenes_pipeline, prompt_set

BUDGETS = {"flux-dev-3x": 3.0, "flux-dev-5x": 5.0, "flux-dev-10x": 10.0}
LOW_STEPS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 22)
# (promotion_rounds, promotion_ratio): whole-stage switches, and one partial round at three ratios
PROMOTION = ((0, 0.25), (1, 0.1), (1, 0.25), (1, 0.5))


def largest_plan(low: int, rounds: int, ratio: float, target: float) -> FrescoConfig | None:
    """The plan with ``low`` half-resolution steps and as many full-resolution steps as the budget allows."""
    best = None
    for full in range(1, 60):
        config = FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(low, full), promotion_rounds=rounds,
                              promotion_ratio=ratio)
        try:
            plan_stages(config, None, min_score_history=min_score_history(config))
        except ValueError:
            return None
        if count_plan_flops(config, "flux-dev").speedup < target:
            break
        best = config
    return best


def sweep_methods() -> list[tuple[str, str, Method, float]]:
    """(budget, label, method, FLUX.1-dev FLOPs speedup) for every plan and reference in the sweep."""
    rows = []
    for preset, target in BUDGETS.items():
        current = PRESETS[preset]
        rows.append((preset, "current preset", Method(f"{preset}:current", preset, config=current),
                     count_plan_flops(current, "flux-dev").speedup))
        steps = int(BASELINE_STEPS // target)
        rows.append((preset, "fewer steps", Method(f"{preset}:steps-{steps}", preset, steps=steps),
                     BASELINE_STEPS / steps))
        seen = {(current.stage_steps, current.promotion_rounds, current.promotion_ratio)}
        for low in LOW_STEPS:
            for rounds, ratio in PROMOTION:
                config = largest_plan(low, rounds, ratio, target)
                if config is None:
                    continue
                key = (config.stage_steps, rounds, ratio)
                if key in seen:
                    continue
                seen.add(key)
                label = f"{config.stage_steps[0]}+{config.stage_steps[1]} rounds {rounds}" + (
                    f" ratio {ratio}" if rounds else "")
                rows.append((preset, label, Method(f"{preset}:{label}", preset, config=config),
                             count_plan_flops(config, "flux-dev").speedup))
    return rows


_RUNNER: _Runner | None = None
_METHODS: list[Method] = []


def _start_worker(methods: list[Method]) -> None:
    global _RUNNER, _METHODS
    torch.set_num_threads(1)
    pipe = load_scenes_pipeline(progress=False)
    pipe.set_progress_bar_config(disable=True)
    _RUNNER, _METHODS = _Runner(pipe), methods


def _score_prompt(index: int, prompts_count: int, held_out: int) -> dict[str, Any]:
    """Every sweep method on one prompt, against that prompt's baseline (runs in a worker process)."""
    assert _RUNNER is not None
    prompt = prompt_set(prompts_count, held_out)[index]
    spec = parse_prompt(prompt.prompt)
    base_latents, _, base_flops = _RUNNER(Method("baseline", "baseline", steps=BASELINE_STEPS), prompt)
    base_unpacked, base_picture = _RUNNER.decode(base_latents)
    latent_range = float(base_unpacked.max() - base_unpacked.min())
    scores = {}
    for method in _METHODS:
        latents, seconds, flops = _RUNNER(method, prompt)
        unpacked, picture = _RUNNER.decode(latents)
        check = check_adherence(picture, prompt.prompt)
        scores[method.name] = dict(
            ssim=ssim(picture, base_picture), psnr=psnr(picture, base_picture),
            latent_ssim=ssim(unpacked, base_unpacked, data_range=latent_range, window=7),
            latent_psnr=psnr(unpacked, base_unpacked, peak=latent_range),
            adherent=bool(check.passed(spec)), objects=bool(all(check.found)), seconds=seconds, flops=flops)
    return dict(index=index, held_out=prompt.held_out, baseline_flops=base_flops, scores=scores)


def _score_prompts_star(job: tuple[int, int, int]) -> dict[str, Any]:
    return _score_prompt(*job)


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return statistics.fmean(finite) if finite else float("inf")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", help="keep only the plans whose label contains one of these")
    parser.add_argument("--summarize", type=Path, help="skip rendering; summarize the per-prompt lines of an earlier "
                        "run (the .jsonl written beside its --out)")
    args = parser.parse_args()

    methods = sweep_methods()
    if args.only:
        methods = [m for m in methods if any(key in m[1] for key in args.only)]
    print(f"{len(methods)} methods x {args.prompts} prompts on {args.workers} worker processes", flush=True)
    if args.summarize:
        results = [json.loads(line) for line in args.summarize.read_text().splitlines()]
    else:
        results = []
        start = time.perf_counter()
        context = multiprocessing.get_context("spawn")
        lines = args.out.with_suffix(".jsonl")
        with context.Pool(args.workers, _start_worker, ([m for _, _, m, _ in methods],)) as pool, \
                lines.open("w") as sink:
            jobs = [(i, args.prompts, args.held_out) for i in range(args.prompts)]
            for result in pool.imap_unordered(_score_prompts_star, jobs):
                results.append(result)
                sink.write(json.dumps(result) + "\n")
                sink.flush()
                print(f"{len(results)}/{args.prompts} prompts, {time.perf_counter() - start:.0f} s", flush=True)
        results.sort(key=lambda r: r["index"])

    rows = []
    for budget, label, method, speedup in methods:
        per = [r["scores"][method.name] for r in results]
        rows.append(dict(
            budget=budget, plan=label, method=method.name, flux_dev_speedup=speedup,
            config=None if method.config is None else dict(stage_steps=list(method.config.stage_steps),
                                                           promotion_rounds=method.config.promotion_rounds,
                                                           promotion_ratio=method.config.promotion_ratio),
            steps=method.steps,
            scenes_flops_ratio=sum(r["baseline_flops"] for r in results) / sum(p["flops"] for p in per),
            ssim=_finite_mean([p["ssim"] for p in per]), psnr=_finite_mean([p["psnr"] for p in per]),
            latent_ssim=_finite_mean([p["latent_ssim"] for p in per]),
            latent_psnr=_finite_mean([p["latent_psnr"] for p in per]),
            adherence=float(np.mean([p["adherent"] for p in per])),
            objects=float(np.mean([p["objects"] for p in per])),
            seconds=float(sum(p["seconds"] for p in per)), flops=int(sum(p["flops"] for p in per)),
            per_prompt_ssim=[p["ssim"] for p in per],
        ))
    report = dict(prompts=len(results), held_out=sum(r["held_out"] for r in results), threads_per_worker=1,
                  torch=torch.__version__,
                  rows=rows)
    args.out.write_text(json.dumps(report, indent=1))
    for budget in BUDGETS:
        print(f"\n{budget}")
        for row in sorted((r for r in rows if r["budget"] == budget), key=lambda r: -r["ssim"]):
            print(f"  {row['plan']:<34} {row['flux_dev_speedup']:6.2f}x  SSIM {row['ssim']:.3f}  "
                  f"PSNR {row['psnr']:5.2f}  latent SSIM {row['latent_ssim']:.3f}  objects {row['objects']:.2f}  "
                  f"adherence {row['adherence']:.2f}  (scenes FLOPs {row['scenes_flops_ratio']:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
