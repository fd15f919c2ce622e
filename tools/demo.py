"""``fresco demo``: the shipped scenes model, stock sampler vs Fresco presets vs fewer steps, side by side.

Each row is one prompt whose stock picture passes the adherence checker (screened from a fixed candidate list), each
column one sampler: stock 50 steps, Fresco at 3x / 5x / 10x, and the stock sampler with the step count whose FLOPs
match Fresco 10x, so the grid shows what the same compute buys either way. Under each Fresco picture a small map
shows which tokens ran at which resolution (dark: promoted to full resolution early by the convergence score; mid:
promoted when the sketch stage ended). Wall-time ratios are medians of repeated runs after a warm-up; a wall ratio
above its FLOPs ratio by more than the timing noise is flagged as such, not reported as a speed-up.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from fresco_plugin.config import PRESETS

from .bench import BASELINE_STEPS, REGIMES, Method, _Runner, equal_flops_steps, psnr, ssim
from .scenes import check_adherence, parse_prompt
from .shipped_model import SIZE, load_scenes_pipeline, prompt_set

__all__ = ["add_arguments", "main"]

IMAGE_PRESETS = ("flux-dev-3x", "flux-dev-5x", "flux-dev-10x")
CANDIDATES = 48  # prompts screened for ones the stock sampler gets right


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", type=int, default=4,
                        help="rows: prompts whose stock picture passes the checker, the last one held out "
                             "(default: %(default)s)")
    parser.add_argument("--presets", nargs="+", default=list(IMAGE_PRESETS), choices=IMAGE_PRESETS,
                        help="Fresco presets to show (default: all three FLUX.1-dev presets; the schnell and video "
                             "presets do not fit this 50-step image model)")
    parser.add_argument("--regime", choices=list(REGIMES), default="guided",
                        help="guided: true CFG at the model's scale with the empty negative prompt; unguided: one "
                             "forward a step (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per sampler for the wall-time medians (default: %(default)s)")
    parser.add_argument("--video", action="store_true",
                        help="the shipped video model instead: stock, Fresco 3x / 5x / 10x and fewer steps, written "
                             "as an animated GIF and a PNG frame strip (named after --out)")
    parser.add_argument("--out", type=Path, default=Path("fresco-out/demo.png"),
                        help="the PNG grid to write (default: %(default)s)")


def first_passing(candidates: list[Any], passes: Any, count: int) -> list[Any]:
    """The first ``candidates`` (in order) for which ``passes(candidate)`` holds: ``count - 1`` from the training
    split, then one held out (fewer if the candidates run out)."""
    wanted = {False: count - 1 if count > 1 else count, True: 1 if count > 1 else 0}
    chosen: dict[bool, list[Any]] = {False: [], True: []}
    for candidate in candidates:
        if len(chosen[candidate.held_out]) < wanted[candidate.held_out] and passes(candidate):
            chosen[candidate.held_out].append(candidate)
        if all(len(chosen[k]) >= wanted[k] for k in chosen):
            break
    return chosen[False] + chosen[True]


def _screen(runner: _Runner, count: int, cfg: float) -> list[Any]:
    """Prompts of a fixed candidate list whose stock picture passes the checker."""

    def passes(prompt: Any) -> bool:
        latents = runner(Method("stock", "baseline", steps=BASELINE_STEPS), prompt, cfg)[0]
        return check_adherence(runner.decode(latents)[1], prompt.prompt).passed(parse_prompt(prompt.prompt))

    return first_passing(prompt_set(CANDIDATES, CANDIDATES // 4, seed=7), passes, count)


def _resolution_map(maps: list[tuple[int, np.ndarray]], total_steps: int, cell: int) -> Any:
    """A picture of when each full-resolution token started running at full resolution (darker: earlier)."""
    from PIL import Image

    first_full = np.full(maps[0][1].shape, total_steps, dtype=float)
    for step, levels in reversed(maps):
        first_full[levels == 0] = step
    shade = (60 + 190 * first_full / max(total_steps, 1)).astype(np.uint8)
    return Image.fromarray(shade).resize((cell, cell), Image.NEAREST).convert("RGB")


def _time(runner: _Runner, methods: list[Method], prompt: Any, cfg: float, repeats: int) -> dict[str, list[float]]:
    """Repeated timings, samplers inner, so drift hits each alike; one untimed run of each first."""
    seconds: dict[str, list[float]] = {m.name: [] for m in methods}
    for repeat in range(repeats + 1):
        for method in methods:
            taken = runner(method, prompt, cfg)[1]
            if repeat:
                seconds[method.name].append(taken)
    return seconds


def main(args: argparse.Namespace) -> int:
    if args.video:
        from .video_demo import main as video_main

        return video_main(args)
    from PIL import Image, ImageDraw

    if args.prompts < 1:
        raise ValueError("--prompts must be at least 1")
    if args.repeats < 1:
        raise ValueError("--repeats must be at least 1")
    from tqdm.auto import tqdm

    cfg = REGIMES[args.regime]
    pipe = load_scenes_pipeline(progress=False)
    runner = _Runner(pipe)
    prompts = _screen(runner, args.prompts, cfg)
    if not prompts:
        raise ValueError(f"none of the {CANDIDATES} candidate prompts passes the checker with the stock sampler")
    matched = equal_flops_steps(runner, prompts[0])["10x"]
    methods = [Method("stock", "baseline", steps=BASELINE_STEPS)]
    methods += [Method(preset, "Fresco", config=PRESETS[preset]) for preset in args.presets]
    methods.append(Method(f"steps-{matched}", "fewer steps", steps=matched))
    labels = [f"stock, {BASELINE_STEPS} steps"] + [f"Fresco {p.removeprefix('flux-dev-')}" for p in args.presets]
    labels.append(f"{matched} steps (FLOPs of Fresco 10x)")

    results: dict[str, list[dict[str, Any]]] = {m.name: [] for m in methods}
    flops: dict[str, int] = {}
    with tqdm(total=len(prompts) * len(methods), desc="fresco demo", unit="run") as bar:
        for prompt in prompts:
            for method in methods:
                latents, _, counted, maps = runner(method, prompt, cfg)
                picture = runner.decode(latents)[1]
                results[method.name].append(dict(picture=picture, maps=maps, passed=check_adherence(
                    picture, prompt.prompt).passed(parse_prompt(prompt.prompt))))
                flops[method.name] = counted
                bar.update()
        timings = _time(runner, methods, prompts[0], cfg, args.repeats)
    stock_median = statistics.median(timings["stock"])
    noise = (max(timings["stock"]) - min(timings["stock"])) / stock_median
    summary = {}
    for method in methods:
        flops_ratio = flops["stock"] / flops[method.name]
        wall_ratio = stock_median / statistics.median(timings[method.name])
        summary[method.name] = dict(flops=flops_ratio, wall=wall_ratio, suspect=wall_ratio > flops_ratio * (1 + noise))

    scale, header, caption = 2, 16, 58
    cell = SIZE * scale
    small = cell // 3
    row_height = header + cell + small + caption
    canvas = Image.new("RGB", (cell * len(methods), row_height * len(prompts) + 30), "white")
    draw = ImageDraw.Draw(canvas)
    for i, prompt in enumerate(prompts):
        top = i * row_height
        draw.text((4, top + 2), prompt.prompt + ("  (held-out prompt)" if prompt.held_out else ""), fill="black")
        stock_picture = results["stock"][i]["picture"]
        for j, (method, label) in enumerate(zip(methods, labels)):
            result = results[method.name][i]
            picture = (result["picture"] * 255).round().astype(np.uint8)
            canvas.paste(Image.fromarray(picture).resize((cell, cell), Image.NEAREST), (j * cell, top + header))
            if result["maps"]:
                total = sum(method.config.stage_steps)  # the presets fix their steps
                canvas.paste(_resolution_map(result["maps"], total, small), (j * cell + 4, top + header + cell + 2))
                draw.text((j * cell + small + 10, top + header + cell + 4), "token resolution:\ndark = full res early",
                          fill="black")
            s = summary[method.name]
            wall = f"wall 1/{s['wall']:.2f}" + (" (timing noise?)" if s["suspect"] else "")
            lines = [label, f"FLOPs 1/{s['flops']:.2f}  {wall}"]
            if method.name == "stock":
                lines.append("reference")
            else:
                lines.append(f"PSNR {psnr(result['picture'], stock_picture):.1f} dB  "
                             f"SSIM {ssim(result['picture'], stock_picture):.3f}")
            lines.append("checker: " + ("pass" if result["passed"] else "FAIL"))
            for k, line in enumerate(lines):
                draw.text((j * cell + 4, top + header + cell + small + 4 + 13 * k), line, fill="black")
    draw.text((4, row_height * len(prompts) + 8), f"{args.regime} (true_cfg_scale {cfg:g}); wall ratios: medians of "
              f"{args.repeats} timed runs after a warm-up, timing noise {noise:.0%}", fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)

    print(f"{args.regime} regime, {len(prompts)} prompts the stock sampler gets right")
    print("| sampler | FLOPs ratio | wall ratio | checker passes |")
    print("|---|---|---|---|")
    for method, label in zip(methods, labels):
        s = summary[method.name]
        passed = sum(r["passed"] for r in results[method.name])
        flag = " (above the FLOPs ratio by more than the timing noise: not a speed-up)" if s["suspect"] else ""
        print(f"| {label} | {s['flops']:.2f} | {s['wall']:.2f}{flag} | {passed}/{len(prompts)} |")
    print(f"wall ratio: median of {args.repeats} timed runs each after a warm-up (stock timing spread {noise:.0%}); "
          "FLOPs ratio: transformer FLOPs of the stock run over the sampler's, counted from the forwards that ran")
    print(f"wrote {args.out.resolve()}")
    return 0
