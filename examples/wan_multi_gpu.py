"""Fresco on Wan with diffusers' context parallelism (Ulysses, Wan's own plan), one process per GPU.

    torchrun --nproc_per_node 4 examples/wan_multi_gpu.py --preset wan2.1-5x --prompt "a cat walks on the grass"

Offline, on a CPU or GPUs, with the video model this package ships (gloo on a CPU, nccl on GPUs; real weights, so
the clip is worth looking at; 9 frames at 64x64):
    torchrun --standalone --nproc_per_node 2 examples/wan_multi_gpu.py --shipped

Every rank runs the same call with the same seed; the transformer splits each forward's tokens across the ranks and
gathers them back, so the clip is the one a single process makes (up to float rounding). Rank 0 writes it.
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
    parser.add_argument("--model", default="Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    parser.add_argument("--preset", default="hunyuan-video-5x", choices=sorted(PRESETS))
    parser.add_argument("--prompt", help="default: a cat on the grass; with --shipped, a clip of its grammar")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-steps", type=int, default=50, help="steps of the stock run beside it")
    parser.add_argument("--out", type=Path, default=Path("fresco-out/wan_multi_gpu.gif"),
                        help="the clip rank 0 writes (.gif or .mp4)")
    parser.add_argument("--latents", type=Path, help="also save Fresco's output latents here (rank 0)")
    parser.add_argument("--shipped", action="store_true", help="the shipped video model (no download)")
    args = parser.parse_args()

    from diffusers import ContextParallelConfig

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    else:  # diffusers places ranks with `rank % torch.accelerator.device_count()`, which is 0 on a CPU
        torch.accelerator.device_count = lambda: 1
    device = "cuda" if cuda else "cpu"
    if args.shipped:
        from fresco_plugin.tools.shipped_model import (
            CLIP_FRAMES,
            CLIP_GUIDANCE_SCALE,
            CLIP_SIZE,
            CLIP_TEXT_TOKENS,
            load_clips_pipeline,
        )

        pipe = load_clips_pipeline(device=device, progress=dist.get_rank() == 0)
        call = dict(prompt=args.prompt or "a red circle moving right on a striped background", height=CLIP_SIZE,
                    width=CLIP_SIZE, num_frames=CLIP_FRAMES, guidance_scale=CLIP_GUIDANCE_SCALE,
                    max_sequence_length=CLIP_TEXT_TOKENS)
    else:
        from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

        pipe = WanPipeline.from_pretrained(args.model, torch_dtype=torch.bfloat16).to(device)
        # Fresco runs the Euler flow step; Wan ships UniPC with flow_shift 3 at 480p (5 at 720p)
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0 if args.height <= 480 else 5.0)
        call = dict(prompt=args.prompt or "A cat walks on the grass, realistic", height=args.height,
                    width=args.width, num_frames=args.frames)
    config = FrescoConfig.preset(args.preset)

    if dist.get_world_size() > 1:
        pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=dist.get_world_size()))
    elif dist.get_rank() == 0:  # diffusers refuses a context-parallel degree of 1
        print("one rank: context parallelism stays off, the rest of the path runs as with several")
    if dist.get_rank() != 0:
        pipe.set_progress_bar_config(disable=True)

    def timed(**extra):
        start = time.perf_counter()
        output = pipe(**call, **extra, output_type="latent", generator=torch.Generator().manual_seed(args.seed))
        if cuda:
            torch.cuda.synchronize()
        return output.frames, time.perf_counter() - start

    _, stock_seconds = timed(num_inference_steps=args.baseline_steps)
    apply_fresco(pipe, config)
    latents, seconds = timed()
    tokens = sorted(set(last_fresco_run(pipe).tokens_per_step))
    if dist.get_rank() == 0:
        print(f"stock: {args.baseline_steps} steps, {stock_seconds:.1f} s (first, so it also carries one-time start-up "
              "costs)")
        print(f"{dist.get_world_size()} ranks, image tokens per step {tokens} (each split evenly across the ranks), "
              f"{seconds:.1f} s: wall-time ratio {stock_seconds / seconds:.2f}x")
        from diffusers.utils import export_to_gif, export_to_video

        with torch.no_grad():
            vae = pipe.vae
            shape = (1, vae.config.z_dim, 1, 1, 1)
            mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents)
            std = torch.tensor(vae.config.latents_std).view(shape).to(latents)
            video = vae.decode((latents * std + mean).to(vae.dtype), return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="pil")[0]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".gif":
            export_to_gif(frames, str(args.out), fps=6 if args.shipped else 15)
        else:
            export_to_video(frames, str(args.out), fps=15)
        if args.latents:
            torch.save(latents.cpu(), args.latents)
        print(f"wrote {args.out.resolve()}")
    if not cuda:
        from fresco_plugin.tools.tiny import end_gloo_ranks

        end_gloo_ranks()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
