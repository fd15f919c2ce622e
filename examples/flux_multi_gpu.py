"""Fresco on FLUX with diffusers context parallelism (Ulysses), one process per GPU.

    torchrun --nproc_per_node 2 examples/flux_multi_gpu.py --preset flux-dev-10x --prompt "a fox in the snow"

Offline, on any CPU (2 gloo processes, a tiny random-weight pipeline; checks the plumbing only):
    torchrun --standalone --nproc_per_node 2 examples/flux_multi_gpu.py --tiny

On GPUs without the weights (real FLUX.1-dev size, random bf16 weights, nccl; checks start-up and timing only):
    torchrun --standalone --nproc_per_node 1 examples/flux_multi_gpu.py --random-weights
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from fresco_plugin import PRESETS, FrescoConfig, apply_fresco, last_fresco_run

COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)  # a rank that dies must not leave the others waiting forever


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="black-forest-labs/FLUX.1-dev")
    parser.add_argument("--preset", default="flux-dev-10x", choices=sorted(PRESETS))
    parser.add_argument("--prompt", default="a red fox in a snowy forest, golden hour, highly detailed")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-steps", type=int, default=50, help="steps of the stock run beside it")
    parser.add_argument("--out", default="fresco-out/flux_multi_gpu.png", help="the picture rank 0 writes")
    parser.add_argument("--tiny", action="store_true", help="CPU run with gloo on a tiny random-weight pipeline")
    parser.add_argument("--random-weights", action="store_true",
                        help="GPU run on FLUX.1-dev's architecture with random weights (no download; latents only)")
    args = parser.parse_args()
    if args.tiny and args.random_weights:
        parser.error("give --tiny or --random-weights, not both")

    from diffusers import ContextParallelConfig

    if args.tiny:
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
        # diffusers places ranks with `rank % torch.accelerator.device_count()`, which is 0 on a CPU
        torch.accelerator.device_count = lambda: 1
        from fresco_plugin.tools.tiny import tiny_flux_pipeline

        pipe = tiny_flux_pipeline(num_attention_heads=4)
        g = torch.Generator().manual_seed(args.seed)
        call = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g),
                    pooled_prompt_embeds=torch.randn(1, 32, generator=g),
                    height=64, width=64, num_inference_steps=12, output_type="latent")
        config = FrescoConfig(stage_scales=(0.25, 0.5, 1.0))
    else:
        dist.init_process_group("nccl", timeout=COLLECTIVE_TIMEOUT)
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        if args.random_weights:
            from fresco_plugin.tools.tiny import random_flux_pipeline

            pipe = random_flux_pipeline(device="cuda")
            g = torch.Generator("cuda").manual_seed(args.seed)
            call = dict(prompt_embeds=torch.randn(1, 512, 4096, generator=g, device="cuda", dtype=torch.bfloat16),
                        pooled_prompt_embeds=torch.randn(1, 768, generator=g, device="cuda", dtype=torch.bfloat16),
                        height=args.height, width=args.width, output_type="latent")
        else:
            from diffusers import FluxPipeline

            pipe = FluxPipeline.from_pretrained(args.model, torch_dtype=torch.bfloat16).to("cuda")
            call = dict(prompt=args.prompt, height=args.height, width=args.width)
        config = FrescoConfig.preset(args.preset)

    if dist.get_world_size() > 1:
        pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=dist.get_world_size()))
    elif dist.get_rank() == 0:  # diffusers refuses a context-parallel degree of 1
        print("one rank: context parallelism stays off, the rest of the path runs as with several")
    if dist.get_rank() != 0:
        pipe.set_progress_bar_config(disable=True)

    def timed(**extra):
        start = time.perf_counter()
        images = pipe(**call, **extra, generator=torch.Generator().manual_seed(args.seed)).images
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return images, time.perf_counter() - start

    stock_steps = call.get("num_inference_steps", args.baseline_steps)
    _, stock_seconds = timed(**({} if "num_inference_steps" in call else {"num_inference_steps": stock_steps}))
    apply_fresco(pipe, config)
    output, seconds = timed()
    tokens = list(last_fresco_run(pipe).tokens_per_step)
    if dist.get_rank() == 0:
        print(f"stock: {stock_steps} steps, {stock_seconds:.1f} s (first, so it also carries one-time start-up costs)")
        print(f"{dist.get_world_size()} ranks, image tokens per step {tokens} (each split evenly across the ranks), "
              f"{seconds:.1f} s: wall-time ratio {stock_seconds / seconds:.2f}x")
        if not (args.tiny or args.random_weights):
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            output[0].save(args.out)
            print(f"wrote {Path(args.out).resolve()}")
    if args.tiny:
        from fresco_plugin.tools.tiny import end_gloo_ranks

        end_gloo_ranks()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
