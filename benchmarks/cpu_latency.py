"""Wall time vs FLOPs on this CPU: each preset against the 50-step baseline, measured side by side in one run.

A mid-size random-weight FLUX transformer (matrix work dominates), 64x64 = 4096 full-resolution image tokens and 64
text tokens, fp32, through the real FluxPipeline with Fresco applied. Prints a markdown table and writes JSON.

    python benchmarks/cpu_latency.py --out benchmarks/results/cpu_latency.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time

import torch

from fresco_plugin import FrescoConfig, apply_fresco, remove_fresco
from fresco_plugin.layout import TokenGeometry, TokenLayout
from fresco_plugin.noise import NoiseField
from fresco_plugin.sampler import min_score_history, sample
from fresco_plugin.schedule import plan_stages, plan_token_counts, static_schedules
from fresco_plugin.tools.flops_trace import TransformerFlops

MID_CONFIG = dict(patch_size=1, in_channels=64, num_layers=4, num_single_layers=8, attention_head_dim=64,
                  num_attention_heads=8, joint_attention_dim=512, pooled_projection_dim=256,
                  axes_dims_rope=[8, 28, 28], guidance_embeds=True)
TEXT_TOKENS, ROWS, COLS = 64, 64, 64
PRESETS = ["flux-dev-3x", "flux-dev-5x", "flux-dev-10x", "flux-schnell-22x"]


def build_pipeline(guidance_embeds: bool):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(**{**MID_CONFIG, "guidance_embeds": guidance_embeds})
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=16,
                        norm_num_groups=1, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), scaling_factor=1.0, shift_factor=0.0)
    if guidance_embeds:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed_call(pipe, steps: int | None) -> float:
    g = torch.Generator().manual_seed(1)
    kwargs = dict(prompt_embeds=torch.randn(1, TEXT_TOKENS, 512, generator=g),
                  pooled_prompt_embeds=torch.randn(1, 256, generator=g), height=2 * ROWS, width=2 * COLS,
                  output_type="latent", generator=torch.Generator().manual_seed(0))
    if steps is not None:
        kwargs["num_inference_steps"] = steps
    start = time.perf_counter()
    pipe(**kwargs)
    return time.perf_counter() - start


def forward_seconds(pipe, tokens: int, repeats: int = 3) -> float:
    inputs = dict(hidden_states=torch.randn(1, tokens, 64), encoder_hidden_states=torch.randn(1, TEXT_TOKENS, 512),
                  pooled_projections=torch.randn(1, 256), timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
                  img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(TEXT_TOKENS, 3), return_dict=False)
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            pipe.transformer(**inputs)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def sampler_overhead_seconds(config: FrescoConfig) -> float:
    """Wall time of Fresco's own work in one generation (layouts, scores, transitions, ordering), model excluded."""
    geometry = TokenGeometry(16, 2, ROWS, COLS)
    stages = plan_stages(config, None, min_score_history=min_score_history(config))
    field = NoiseField.from_hash([0], 16, 2 * ROWS, 2 * COLS)
    first = field.tokens(TokenLayout.uniform(1, geometry, stages[0].level, torch.device("cpu")), geometry)
    free = lambda latents, positions, step: latents * 0.01  # noqa: E731  a "model" that costs nothing
    start = time.perf_counter()
    sample(free, first, config=config, stages=stages, schedules=static_schedules(stages), geometry=geometry,
           field=field)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/cpu_latency.json")
    parser.add_argument("--baseline-steps", type=int, default=50)
    parser.add_argument("--bracket-steps", type=int, default=10, help="stock steps timed before and after each preset")
    args = parser.parse_args()

    dev, schnell = build_pipeline(True), build_pipeline(False)
    counter = TransformerFlops("flux", MID_CONFIG, TEXT_TOKENS)
    full = ROWS * COLS
    baseline_flops = args.baseline_steps * counter(full)
    timed_call(dev, 2)  # warm-up
    baseline_seconds = timed_call(dev, args.baseline_steps)
    full_forward = forward_seconds(dev, full)
    rows = []
    for name in PRESETS:
        config = FrescoConfig.preset(name)
        pipe = schnell if name.startswith("flux-schnell") else dev
        # this machine drifts over minutes: bracket each preset with short stock runs and scale them to 50 steps
        before = timed_call(dev, args.bracket_steps)
        apply_fresco(pipe, config)
        seconds = timed_call(pipe, None)
        remove_fresco(pipe)
        after = timed_call(dev, args.bracket_steps)
        local_baseline = args.baseline_steps * (before + after) / (2 * args.bracket_steps)
        stages = plan_stages(config, None, min_score_history=min_score_history(config))
        flops = sum(counter(n) for n in plan_token_counts(config, stages, ROWS, COLS))
        overhead = statistics.median(sampler_overhead_seconds(config) for _ in range(3))
        rows.append(dict(preset=name, steps=sum(config.stage_steps), flops_ratio=baseline_flops / flops,
                         seconds=seconds, baseline_seconds=local_baseline, wall_ratio=local_baseline / seconds,
                         overhead_seconds=overhead))
    for row in rows:
        row["wall_over_flops"] = row["wall_ratio"] / row["flops_ratio"]
        row["overhead_pct_of_full_forward"] = 100 * row["overhead_seconds"] / full_forward

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = dict(commit=commit, machine=f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
                  f"threads, torch {torch.__version__}", model=MID_CONFIG, text_tokens=TEXT_TOKENS,
                  full_tokens=full, baseline_steps=args.baseline_steps, baseline_seconds=baseline_seconds,
                  full_forward_seconds=full_forward, presets=rows)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(f"baseline: {args.baseline_steps} steps in {baseline_seconds:.1f} s at the start; "
          f"one full-resolution forward "
          f"{full_forward * 1000:.0f} ms; each preset is compared with {args.bracket_steps}-step stock runs timed just "
          f"before and after it, scaled to {args.baseline_steps} steps")
    print("| preset | steps | FLOPs ratio | stock 50 steps (bracketed) | Fresco | wall-time ratio | wall / FLOPs | "
          "Fresco's own work per generation |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['steps']} | {r['flops_ratio']:.2f}x | {r['baseline_seconds']:.1f} s | "
              f"{r['seconds']:.1f} s | {r['wall_ratio']:.2f}x | "
              f"{r['wall_over_flops']:.2f} | {r['overhead_seconds'] * 1000:.1f} ms "
              f"({r['overhead_pct_of_full_forward']:.2f}% of a full-resolution forward) |")


if __name__ == "__main__":
    main()
