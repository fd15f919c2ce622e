"""GPU wall time of Fresco presets on a real-size FLUX.1-dev transformer (random bf16 weights), 1024x1024.

Needs one CUDA GPU with about 30 GB free; downloads nothing (the transformer is built from the embedded public config,
the VAE is a tiny stand-in since output stays in latent space). Stock 50-step run vs each preset, side by side:

    python benchmarks/gpu_flux_latency.py --out gpu_flux_latency.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fresco_plugin import FrescoConfig, apply_fresco, remove_fresco
from fresco_plugin.flops import count_plan_flops
from fresco_plugin.tools.tiny import random_flux_pipeline

PRESETS = ["flux-dev-3x", "flux-dev-5x", "flux-dev-10x", "flux-schnell-22x"]


def build(schnell: bool):
    pipe = random_flux_pipeline(device="cuda", dtype=torch.bfloat16, schnell=schnell)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed(pipe, steps: int | None, repeats: int) -> list[float]:
    g = torch.Generator(device="cuda").manual_seed(1)
    kwargs = dict(prompt_embeds=torch.randn(1, 512, 4096, generator=g, device="cuda", dtype=torch.bfloat16),
                  pooled_prompt_embeds=torch.randn(1, 768, generator=g, device="cuda", dtype=torch.bfloat16),
                  height=1024, width=1024, output_type="latent")
    if steps is not None:
        kwargs["num_inference_steps"] = steps
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        pipe(**kwargs, generator=torch.Generator(device="cuda").manual_seed(0))
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_flux_latency.json")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "presets": []}
    pipe = build(schnell=False)
    timed(pipe, 2, 1)  # warm-up: kernels, allocator
    baseline = statistics.median(timed(pipe, 50, args.repeats))
    result["baseline_seconds"] = baseline
    for name in PRESETS:
        schnell = name.startswith("flux-schnell")
        if schnell:
            del pipe
            torch.cuda.empty_cache()
            pipe = build(schnell=True)
            timed(pipe, 2, 1)
        apply_fresco(pipe, FrescoConfig.preset(name))
        seconds = statistics.median(timed(pipe, None, args.repeats))
        remove_fresco(pipe)
        flops = count_plan_flops(name, "flux-schnell" if schnell else "flux-dev")
        result["presets"].append(dict(preset=name, seconds=seconds, wall_ratio=baseline / seconds,
                                      flops_ratio=flops.speedup))
        print(f"{name}: {seconds:.2f} s, wall {baseline / seconds:.2f}x, FLOPs {flops.speedup:.2f}x", flush=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
