"""Fresco on HunyuanVideo (one GPU): the same pipeline call, a spatially coarse first stage.

    python examples/hunyuan_video.py --prompt "a cat walks on the grass, realistic" --preset hunyuan-video-5x

Offline, on any CPU (a tiny random-weight HunyuanVideo pipeline built from configs; checks the plumbing only):
    python examples/hunyuan_video.py --tiny
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fresco_plugin import PRESETS, FrescoConfig, apply_fresco, last_fresco_run, remove_fresco


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
    parser.add_argument("--out", default="fresco-out/hunyuan_video",
                        help="path prefix of the two videos written (stock and Fresco)")
    parser.add_argument("--tiny", action="store_true", help="offline run on a tiny random-weight pipeline")
    args = parser.parse_args()

    if args.tiny:
        from fresco_plugin.tools.tiny import tiny_hunyuan_video_pipeline

        pipe = tiny_hunyuan_video_pipeline()
        g = torch.Generator().manual_seed(args.seed)
        call = dict(prompt_embeds=torch.randn(1, 8, 16, generator=g),
                    pooled_prompt_embeds=torch.randn(1, 8, generator=g),
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

    def timed(**extra):
        start = time.perf_counter()
        frames = pipe(**call, **extra, generator=torch.Generator().manual_seed(args.seed)).frames
        return frames, time.perf_counter() - start

    stock, stock_seconds = timed(num_inference_steps=args.baseline_steps)
    apply_fresco(pipe, FrescoConfig.preset(args.preset))
    frames, fresco_seconds = timed()
    tokens = list(last_fresco_run(pipe).tokens_per_step)
    remove_fresco(pipe)
    again, _ = timed(num_inference_steps=args.baseline_steps)
    print(f"stock : {args.baseline_steps} steps, {stock_seconds:.1f} s")
    print(f"Fresco ({args.preset}): {len(tokens)} steps, tokens per step {tokens}, {fresco_seconds:.1f} s "
          f"(wall-time ratio {stock_seconds / fresco_seconds:.2f}x)")
    identical = all(torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(stock, again))
    print(f"after remove_fresco the pipeline is bit-identical to stock: {identical}")
    if not args.tiny:
        from diffusers.utils import export_to_video

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        export_to_video(stock[0], f"{args.out}_stock.mp4", fps=15)
        export_to_video(frames[0], f"{args.out}_{args.preset}.mp4", fps=15)
        print(f"wrote {args.out}_stock.mp4 and {args.out}_{args.preset}.mp4")


if __name__ == "__main__":
    main()
