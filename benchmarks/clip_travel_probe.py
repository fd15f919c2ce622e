"""How far a video model's clips travel the stated way, unguided and guided: tells a model whose clips stand still from
one whose clips move the wrong way, which the checker's pass rate alone does not.

    python benchmarks/clip_travel_probe.py tools/models/clips-wan <other model folders>

For each folder (a ``WanPipeline`` saved by ``training/train_video_model.py``), 8 clip prompts drawn with seed 5,
30 steps, seeds 100-107, prints the checker's travel along the stated direction (a share of the frame, first to last
frame) and the mean size of the travel across it, at guidance 1 and 5, beside the same reading of the true clips.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from fresco_plugin.tools.shipped_model import CLIP_FRAMES, CLIP_SIZE, CLIP_TEXT_TOKENS
from fresco_plugin.tools.video_scenes import check_clip, render_clip, sample_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from diffusers import WanPipeline

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(5)
    specs = [sample_clip(rng) for _ in range(args.prompts)]
    prompts = [spec.prompt for spec in specs]
    report("true clips", [render_clip(spec, CLIP_FRAMES, CLIP_SIZE) for spec in specs], prompts)
    for folder in args.folders:
        pipe = WanPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        for guidance in (1.0, 5.0):
            clips = pipe(prompts, height=CLIP_SIZE, width=CLIP_SIZE, num_frames=CLIP_FRAMES,
                         num_inference_steps=args.steps, guidance_scale=guidance, max_sequence_length=CLIP_TEXT_TOKENS,
                         output_type="np",
                         generator=[torch.Generator().manual_seed(100 + i) for i in range(len(prompts))]).frames
            report(f"{folder} guidance {guidance:g}", clips, prompts)


def report(name: str, clips, prompts: list[str]) -> None:
    travel = np.array([check_clip(clip, prompt).travel for clip, prompt in zip(clips, prompts)])
    along = " ".join(f"{t:+.2f}" for t in travel[:, 0])
    print(f"{name}: along {along}; across, mean size {np.abs(travel[:, 1]).mean():.2f}", flush=True)


if __name__ == "__main__":
    main()
