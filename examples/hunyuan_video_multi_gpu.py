"""Fresco on HunyuanVideo with diffusers context parallelism (Ulysses, through our plan), one process per GPU.

    torchrun --nproc_per_node 4 examples/hunyuan_video_multi_gpu.py --preset hunyuan-video-5x --prompt "a cat walks"

Offline, on any CPU (2 gloo processes, a tiny random-weight pipeline; checks the plumbing only):
    torchrun --standalone --nproc_per_node 2 examples/hunyuan_video_multi_gpu.py --tiny

On GPUs without the weights (real HunyuanVideo size, random bf16 weights, nccl; checks start-up only):
    torchrun --standalone --nproc_per_node 1 examples/hunyuan_video_multi_gpu.py --random-weights
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
    parser.add_argument("--model", default="hunyuanvideo-community/HunyuanVideo")
    parser.add_argument("--preset", default="hunyuan-video-5x", choices=sorted(PRESETS))
    parser.add_argument("--prompt", default="A cat walks on the grass, realistic")
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--frames", type=int, default=61)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-steps", type=int, default=50, help="steps of the stock run beside it")
    parser.add_argument("--out", default="fresco-out/hunyuan_video_multi_gpu.mp4", help="the video rank 0 writes")
    parser.add_argument("--tiny", action="store_true", help="CPU run with gloo on a tiny random-weight pipeline")
    parser.add_argument("--random-weights", action="store_true",
                        help="GPU run on HunyuanVideo's architecture with random weights (no download; latents only)")
    args = parser.parse_args()
    if args.tiny and args.random_weights:
        parser.error("give --tiny or --random-weights, not both")

    from diffusers import ContextParallelConfig

    from fresco_plugin.integrations.hunyuan_video_parallel import enable_hunyuan_video_parallelism

    if args.tiny:
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
        # diffusers places ranks with `rank % torch.accelerator.device_count()`, which is 0 on a CPU
        torch.accelerator.device_count = lambda: 1
        from fresco_plugin.tools.tiny import tiny_hunyuan_video_pipeline

        pipe = tiny_hunyuan_video_pipeline(num_attention_heads=4)
        g = torch.Generator().manual_seed(args.seed)
        call = dict(prompt_embeds=torch.randn(1, 8, 16, generator=g),
                    pooled_prompt_embeds=torch.randn(1, 8, generator=g),
                    prompt_attention_mask=torch.ones(1, 8, dtype=torch.long), height=64, width=80, num_frames=5,
                    num_inference_steps=8, output_type="latent")
        config = FrescoConfig(stage_scales=(0.5, 1.0))
    else:
        dist.init_process_group("nccl", timeout=COLLECTIVE_TIMEOUT)
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        if args.random_weights:
            from fresco_plugin.tools.tiny import random_hunyuan_video_pipeline

            pipe = random_hunyuan_video_pipeline(device="cuda")
            g = torch.Generator("cuda").manual_seed(args.seed)
            call = dict(prompt_embeds=torch.randn(1, 256, 4096, generator=g, device="cuda", dtype=torch.bfloat16),
                        pooled_prompt_embeds=torch.randn(1, 768, generator=g, device="cuda", dtype=torch.bfloat16),
                        prompt_attention_mask=torch.ones(1, 256, dtype=torch.long, device="cuda"),
                        height=args.height, width=args.width, num_frames=args.frames, output_type="latent")
        else:
            from diffusers import HunyuanVideoPipeline

            pipe = HunyuanVideoPipeline.from_pretrained(args.model, torch_dtype=torch.bfloat16).to("cuda")
            call = dict(prompt=args.prompt, height=args.height, width=args.width, num_frames=args.frames)
        config = FrescoConfig.preset(args.preset)

    if dist.get_world_size() > 1:
        enable_hunyuan_video_parallelism(pipe.transformer, ContextParallelConfig(ulysses_degree=dist.get_world_size()))
    elif dist.get_rank() == 0:  # diffusers refuses a context-parallel degree of 1
        print("one rank: context parallelism stays off, the rest of the path runs as with several")
    if dist.get_rank() != 0:
        pipe.set_progress_bar_config(disable=True)

    def timed(**extra):
        start = time.perf_counter()
        frames = pipe(**call, **extra, generator=torch.Generator().manual_seed(args.seed)).frames
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return frames, time.perf_counter() - start

    stock_steps = call.get("num_inference_steps", args.baseline_steps)
    _, stock_seconds = timed(**({} if "num_inference_steps" in call else {"num_inference_steps": stock_steps}))
    apply_fresco(pipe, config)
    output, seconds = timed()
    tokens = sorted(set(last_fresco_run(pipe).tokens_per_step))
    if dist.get_rank() == 0:
        print(f"stock: {stock_steps} steps, {stock_seconds:.1f} s (first, so it also carries one-time start-up costs)")
        print(f"{dist.get_world_size()} ranks, image tokens per step {tokens} (each split evenly across the ranks), "
              f"{seconds:.1f} s: wall-time ratio {stock_seconds / seconds:.2f}x")
        if not (args.tiny or args.random_weights):
            from diffusers.utils import export_to_video

            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            export_to_video(output[0], args.out, fps=15)
            print(f"wrote {Path(args.out).resolve()}")
    if args.tiny:
        from fresco_plugin.tools.tiny import end_gloo_ranks

        end_gloo_ranks()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
