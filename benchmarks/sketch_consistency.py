"""Does the shipped model draw the same scene at 64 pixels as at 128 from the same noise?

Fresco's sketch stage samples at half resolution from the Haar low-pass of the full-resolution noise (the
coordinate-bound field). If the model's half-resolution sample keeps the layout of its full-resolution one, the
sketch aims at the baseline picture; if not, Fresco's fidelity to the baseline is capped whatever its budget. For each
prompt this compares the stock 128-pixel, 50-step picture (2x2-averaged to 64 pixels) with stock 64-pixel, 50-step
pictures from (a) the Haar low-pass of the same noise and (b) independent noise:

    python benchmarks/sketch_consistency.py --prompts 16
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from fresco_plugin.tools.bench import psnr, ssim
from fresco_plugin.tools.shipped_model import TEXT_TOKENS, load_scenes_pipeline, prompt_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    args = parser.parse_args()
    pipe = load_scenes_pipeline(progress=False)

    def sample(embeds, pooled, size, latents=None, seed=0):
        return pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=size, width=size, latents=latents,
                    num_inference_steps=50, generator=torch.Generator().manual_seed(seed), output_type="np").images[0]

    figures = {"haar low-pass of the same noise": [], "independent noise": []}
    for p in prompt_set(args.prompts, args.prompts // 4):
        embeds, pooled, _ = pipe.encode_prompt(p.prompt, prompt_2=None, max_sequence_length=TEXT_TOKENS)
        full = torch.from_numpy(sample(embeds, pooled, 128, seed=p.seed)).permute(2, 0, 1)
        reference = torch.nn.functional.avg_pool2d(full[None], 2)[0].permute(1, 2, 0).numpy()
        # the noise the 128-pixel run drew (FluxPipeline draws (1, C, 32, 32) then packs it), orthonormal Haar low-pass
        noise = torch.randn((1, 4, 32, 32), generator=torch.Generator().manual_seed(p.seed))
        low = torch.nn.functional.avg_pool2d(noise, 2) * 2
        same = sample(embeds, pooled, 64, latents=pipe._pack_latents(low, 1, 4, 16, 16))
        other = sample(embeds, pooled, 64, seed=p.seed + 999)
        figures["haar low-pass of the same noise"].append((psnr(same, reference), ssim(same, reference)))
        figures["independent noise"].append((psnr(other, reference), ssim(other, reference)))
    print(f"64-pixel samples vs the 128-pixel sample (2x2-averaged), {args.prompts} prompts")
    for name, values in figures.items():
        print(f"{name}: PSNR {np.mean([v[0] for v in values]):.2f} dB, SSIM {np.mean([v[1] for v in values]):.3f}")


if __name__ == "__main__":
    main()
