"""Fresco on HunyuanVideo (one GPU): the same pipeline call, a spatially coarse first stage.

    python examples/hunyuan_video.py --prompt "a cat walks on the grass, realistic" --preset hunyuan-video-5x

Offline, on any CPU (a tiny random-weight HunyuanVideo pipeline built from configs; checks the plumbing only):
    python examples/hunyuan_video.py --tiny
"""

from __future__ import annotations

import argparse
import time

import torch

from fresco_plugin import PRESETS, FrescoConfig, apply_fresco, remove_fresco


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hunyuanvideo-community/HunyuanVideo")
    parser.add_argument("--preset", default="hunyuan-video-5x", choices=sorted(PRESETS))
    parser.add_argument("--prompt", default="A cat walks on the grass, realistic")
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--frames", type=int, default=61)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="fresco_video.mp4")
    parser.add_argument("--tiny", action="store_true", help="offline run on a tiny random-weight pipeline")
    args = parser.parse_args()

    if args.tiny:
        from fresco_plugin.integrations.tiny import tiny_hunyuan_video_pipeline

        pipe = tiny_hunyuan_video_pipeline()
        g = torch.Generator().manual_seed(args.seed)
        call = dict(prompt_embeds=torch.randn(1, 8, 16, generator=g), pooled_prompt_embeds=torch.randn(1, 8, generator=g),
                    prompt_attention_mask=torch.ones(1, 8, dtype=torch.long), height=144, width=256, num_frames=9,
                    output_type="latent")
    else:
        from diffusers import HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

        transformer = HunyuanVideoTransformer3DModel.from_pretrained(args.model, subfolder="transformer",
                                                                     torch_dtype=torch.bfloat16)
        pipe = HunyuanVideoPipeline.from_pretrained(args.model, transformer=transformer, torch_dtype=torch.float16)
        pipe.vae.enable_tiling()
        pipe.to("cuda")
        call = dict(prompt=args.prompt, height=args.height, width=args.width, num_frames=args.frames)

    apply_fresco(pipe, FrescoConfig.preset(args.preset))
    start = time.perf_counter()
    frames = pipe(**call, generator=torch.Generator().manual_seed(args.seed)).frames
    print(f"Fresco ({args.preset}): {time.perf_counter() - start:.1f} s, tokens per step "
          f"{list(pipe._fresco_runner.last_run.tokens_per_step)}")
    remove_fresco(pipe)
    if not args.tiny:
        from diffusers.utils import export_to_video

        export_to_video(frames[0], args.out, fps=15)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
