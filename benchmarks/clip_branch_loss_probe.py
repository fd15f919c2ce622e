"""How well a video model's conditional and unconditional branches predict, on fresh clips: the rectified-flow loss
with the clip's prompt and with the empty prompt (the branch classifier-free guidance subtracts), per noise level.

    python benchmarks/clip_branch_loss_probe.py tools/models/clips-wan <other model folders>

For each folder (a ``WanPipeline`` saved by ``training/train_video_model.py``), 128 clips drawn with seed 7, encoded
by the folder's own VAE and normalised as training does (the config's per-channel mean and spread), noised at fixed
sigmas with seeded noise. Prints the mean squared error of the predicted velocity against the true one, with the
prompt and with the empty prompt, and how much the prompt lowers it. Each folder's VAE differs, so compare the
branches within a folder and the prompt's gain across folders, not the raw losses across them.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from fresco_plugin.tools.shipped_model import CLIP_FRAMES, CLIP_SIZE, CLIP_TEXT_TOKENS
from fresco_plugin.tools.video_scenes import render_clip, sample_clip

SIGMAS = (0.25, 0.5, 0.75, 0.95)


@torch.no_grad()
def branch_losses(pipe, clips: list, prompts: list[str], batch: int = 16) -> dict[float, tuple[float, float]]:
    videos = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3) * 2 - 1
    config = pipe.vae.config
    shape = (1, -1, 1, 1, 1)
    mean, std = torch.tensor(config.latents_mean).view(shape), torch.tensor(config.latents_std).view(shape)
    generator = torch.Generator().manual_seed(0)
    sums = {s: [0.0, 0.0] for s in SIGMAS}
    for start in range(0, len(clips), batch):
        x0 = (pipe.vae.encode(videos[start:start + batch]).latent_dist.mean - mean) / std
        chunk = prompts[start:start + batch]
        embeds, empty = pipe.encode_prompt(chunk, negative_prompt=[""] * len(chunk), do_classifier_free_guidance=True,
                                           max_sequence_length=CLIP_TEXT_TOKENS, device=x0.device)
        for sigma in SIGMAS:
            noise = torch.randn(x0.shape, generator=generator)
            noisy = (1 - sigma) * x0 + sigma * noise
            timestep = torch.full((len(chunk),), sigma * 1000)
            for branch, text in enumerate((embeds, empty)):
                velocity = pipe.transformer(hidden_states=noisy, timestep=timestep, encoder_hidden_states=text,
                                            return_dict=False)[0]
                sums[sigma][branch] += (velocity - (noise - x0)).pow(2).mean().item() * len(chunk)
    return {s: (c / len(clips), u / len(clips)) for s, (c, u) in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--clips", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from diffusers import WanPipeline

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(7)
    specs = [sample_clip(rng) for _ in range(args.clips)]
    clips = [render_clip(spec, CLIP_FRAMES, CLIP_SIZE) for spec in specs]
    prompts = [spec.prompt for spec in specs]
    for folder in args.folders:
        pipe = WanPipeline.from_pretrained(folder)
        for sigma, (conditional, unconditional) in branch_losses(pipe, clips, prompts).items():
            print(f"{folder} sigma {sigma:.2f}: with the prompt {conditional:.4f}, empty prompt {unconditional:.4f}, "
                  f"the prompt's gain {unconditional - conditional:+.4f} ({1 - conditional / unconditional:.1%})")


if __name__ == "__main__":
    main()
