"""GPU wall time of the video plans on a real-size HunyuanVideo transformer (13B, random bf16 weights), against the
stock 50-step run, side by side in one process: is the wall-time speedup at least 0.95 of the FLOPs speedup?

Needs one CUDA GPU with about 40 GB free; downloads nothing (the transformer is built from the embedded public config,
the VAE is a tiny stand-in since output stays in latent space). Plans: ``hunyuan-video-5x`` and ``for_speedup`` at 3x
and 10x for this size (the video rule: a 3-step half-resolution sketch, no promotion round). The default size keeps
the whole run near 5 minutes on an H100/H200:

    python benchmarks/gpu_video_latency.py --out gpu_video_latency.json
    python benchmarks/gpu_video_latency.py --tiny   # the same path on the CPU with a tiny model (a smoke check)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fresco_plugin import FrescoConfig, apply_fresco, remove_fresco
from fresco_plugin.flops import count_plan_flops

BASELINE_STEPS = 50
TARGETS = (3.0, 10.0)  # besides hunyuan-video-5x


def plans(height: int, width: int, frames: int) -> dict[str, FrescoConfig]:
    out = {"hunyuan-video-5x": FrescoConfig.preset("hunyuan-video-5x")}
    for target in TARGETS:
        out[f"for_speedup({target:g})"] = FrescoConfig.for_speedup(target, model="hunyuan-video", height=height,
                                                                   width=width, frames=frames)
    return out


def build(tiny: bool):
    from fresco_plugin.tools.tiny import random_hunyuan_video_pipeline, tiny_hunyuan_video_pipeline

    if tiny:
        pipe, device, dtype, text = tiny_hunyuan_video_pipeline(), "cpu", torch.float32, (8, 16, 8)
    else:
        pipe, device, dtype = random_hunyuan_video_pipeline(device="cuda"), "cuda", torch.bfloat16
        text = (256, 4096, 768)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator(device).manual_seed(1)
    tokens, width, pooled = text
    call = dict(prompt_embeds=torch.randn(1, tokens, width, generator=g, device=device, dtype=dtype),
                pooled_prompt_embeds=torch.randn(1, pooled, generator=g, device=device, dtype=dtype),
                prompt_attention_mask=torch.ones(1, tokens, dtype=torch.long, device=device), output_type="latent")
    return pipe, call, device


def timed(pipe, call: dict, device: str, repeats: int, **extra) -> list[float]:
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        pipe(**call, **extra, generator=torch.Generator(device).manual_seed(0))
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=848)
    parser.add_argument("--frames", type=int, default=61)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="a tiny random model on the CPU at 64x80, 5 frames")
    parser.add_argument("--out", default="gpu_video_latency.json")
    args = parser.parse_args()
    if args.tiny:
        args.height, args.width, args.frames = 64, 80, 5
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_video_latency.py needs a CUDA GPU; --tiny runs the same path on the CPU")
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
    pipe, call, device = build(args.tiny)
    call.update(height=args.height, width=args.width, num_frames=args.frames)
    timed(pipe, call, device, 1, num_inference_steps=2)  # warm-up: kernels, allocator
    baseline = statistics.median(timed(pipe, call, device, args.repeats, num_inference_steps=BASELINE_STEPS))
    result = dict(device=torch.cuda.get_device_name() if device == "cuda" else "cpu (--tiny)", torch=torch.__version__,
                  size=[args.height, args.width, args.frames], baseline_steps=BASELINE_STEPS,
                  baseline_seconds=baseline, plans=[])
    print(f"stock {BASELINE_STEPS} steps at {args.height}x{args.width}x{args.frames}f: {baseline:.2f} s", flush=True)
    for name, config in plans(args.height, args.width, args.frames).items():
        apply_fresco(pipe, config)
        seconds = statistics.median(timed(pipe, call, device, args.repeats))
        remove_fresco(pipe)
        flops = count_plan_flops(config, "hunyuan-video", height=args.height, width=args.width, frames=args.frames)
        wall = baseline / seconds
        result["plans"].append(dict(plan=name, stage_steps=list(config.stage_steps), seconds=seconds, wall_ratio=wall,
                                    flops_ratio=flops.speedup, wall_over_flops=wall / flops.speedup))
        print(f"{name} ({'+'.join(map(str, config.stage_steps))}): {seconds:.2f} s, wall {wall:.2f}x, FLOPs "
              f"{flops.speedup:.2f}x, wall / FLOPs {wall / flops.speedup:.2f}", flush=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
