"""``fresco demo --video``: the shipped video model, stock sampler vs Fresco vs fewer steps, side by side.

Rows are clip prompts whose stock clip passes the clip checker (screened from a fixed candidate list), columns the
samplers: stock 50 steps, Fresco at 3x / 5x / 10x (the plans ``fresco bench --video`` measures) and the stock sampler
with the step count whose FLOPs match Fresco 10x. Writes an animated GIF (every column playing side by side) and a PNG
frame strip (each sampler's nine frames in a row), and prints FLOPs and wall-time ratios with the checker's verdicts.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from fresco_plugin.config import PRESETS

from .demo import IMAGE_PRESETS, first_passing
from .shipped_model import CLIP_SIZE, ClipPrompt, clip_prompt_set, load_clips_pipeline
from .video_bench import BASELINE_STEPS, BUDGETS, REGIMES, VideoMethod, _Runner, equal_flops_steps
from .video_scenes import check_clip

__all__ = ["main"]

CANDIDATES = 32  # prompts screened for ones the stock sampler gets right
SCALE = 2  # pixels per model pixel in the outputs


def _screen(runner: _Runner, count: int, guidance: float) -> list[ClipPrompt]:
    """Clip prompts of a fixed candidate list whose stock clip passes the checker."""

    def passes(prompt: ClipPrompt) -> bool:
        latents = runner(VideoMethod("stock", steps=BASELINE_STEPS), prompt, guidance)[0]
        return check_clip(runner.decode(latents), prompt.prompt).passed

    return first_passing(clip_prompt_set(CANDIDATES, CANDIDATES // 4, seed=7), passes, count)


def main(args: argparse.Namespace) -> int:
    from PIL import Image, ImageDraw
    from tqdm.auto import tqdm

    if args.presets != list(IMAGE_PRESETS):
        raise ValueError("--presets picks the picture demo's presets; --video shows the video benchmark's plans ("
                         + ", ".join(BUDGETS.values()) + ")")
    if args.prompts < 1 or args.repeats < 1:
        raise ValueError("--prompts and --repeats must be at least 1")
    guidance = REGIMES[args.regime]
    runner = _Runner(load_clips_pipeline(progress=False))
    runner.pipe.set_progress_bar_config(disable=True)
    prompts = _screen(runner, args.prompts, guidance)
    if not prompts:
        raise ValueError(f"none of the {CANDIDATES} candidate clip prompts passes the checker with the stock sampler")
    matched = equal_flops_steps(runner, prompts[0])["10x"]
    methods = [VideoMethod("stock", steps=BASELINE_STEPS)]
    methods += [VideoMethod(f"Fresco {budget}", config=PRESETS[preset]) for budget, preset in BUDGETS.items()]
    methods.append(VideoMethod(f"{matched} steps (FLOPs of Fresco 10x)", steps=matched))

    clips: dict[str, list[np.ndarray]] = {m.name: [] for m in methods}
    passed: dict[str, int] = dict.fromkeys(clips, 0)
    flops: dict[str, int] = {}
    seconds: dict[str, list[float]] = {m.name: [] for m in methods}
    with tqdm(total=len(prompts) * len(methods) * (args.repeats + 1), desc="fresco demo --video", unit="run") as bar:
        for prompt in prompts:
            for method in methods:
                latents, _, counted, _ = runner(method, prompt, guidance)
                clip = runner.decode(latents)
                clips[method.name].append(clip)
                passed[method.name] += check_clip(clip, prompt.prompt).passed
                flops[method.name] = counted
                bar.update()
        for _ in range(args.repeats):  # timings on the first prompt, samplers inner, after the untimed runs above
            for method in methods:
                seconds[method.name].append(runner(method, prompts[0], guidance)[1])
                bar.update(len(prompts))

    cell, header, label = CLIP_SIZE * SCALE, 14, 28
    frames = clips["stock"][0].shape[0]
    width, row = cell * len(methods), header + cell
    animation = []
    for t in range(frames):
        canvas = Image.new("RGB", (width, label + row * len(prompts)), "white")
        draw = ImageDraw.Draw(canvas)
        for j, method in enumerate(methods):
            draw.text((j * cell + 3, 2), method.name.replace(" (", "\n("), fill="black")
        for i, prompt in enumerate(prompts):
            top = label + i * row
            draw.text((3, top + 1), prompt.prompt + ("  (held out)" if prompt.held_out else ""), fill="black")
            for j, method in enumerate(methods):
                picture = (clips[method.name][i][t] * 255).round().astype(np.uint8)
                canvas.paste(Image.fromarray(picture).resize((cell, cell), Image.NEAREST), (j * cell, top + header))
        animation.append(canvas)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    gif = args.out.with_suffix(".gif")
    animation[0].save(gif, save_all=True, append_images=animation[1:], duration=180, loop=0)
    strip_rows = [np.concatenate(list(clips[m.name][i]), axis=1) for i in range(len(prompts)) for m in methods]
    strip = Image.fromarray((np.concatenate(strip_rows, axis=0) * 255).round().astype(np.uint8))
    png = args.out.with_suffix(".png")
    strip.resize((strip.width * SCALE, strip.height * SCALE), Image.NEAREST).save(png)

    stock_seconds = statistics.median(seconds["stock"])
    print(f"{args.regime} regime (guidance_scale {guidance:g}), {len(prompts)} clip prompts the stock sampler gets "
          "right")
    print("| sampler | FLOPs ratio | wall ratio | checker passes |")
    print("|---|---|---|---|")
    for method in methods:
        print(f"| {method.name} | {flops['stock'] / flops[method.name]:.2f} | "
              f"{stock_seconds / statistics.median(seconds[method.name]):.2f} | {passed[method.name]}/{len(prompts)} |")
    print(f"wall ratio: median of {args.repeats} timed runs on the first prompt after an untimed one; FLOPs ratio: "
          "transformer FLOPs counted from the forwards that ran")
    print(f"wrote {gif.resolve()} (the clips side by side) and {png.resolve()} (frame strips: one row per sampler, "
          f"{len(methods)} rows per prompt in the order {', '.join(m.name for m in methods)})")
    return 0

