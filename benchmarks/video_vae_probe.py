"""How fast small autoencoders learn the procedural clips' frames: the 2-D one the scenes model ships with against
Wan's, which a WanPipeline video model needs.

    python benchmarks/video_vae_probe.py --out benchmarks/results/video_vae_probe.json

Each autoencoder trains on single 32-pixel frames of fresh clips (batch 16, AdamW at 1e-3, L1 on the posterior
mean's decoding, fixed seed, 2 threads) and reports the mean L1 over each 100 steps, beside that of a constant
mid-grey guess on the same frames. ``wan-residual-squared`` and ``wan-patch2`` (the layout the shipped video model
uses) add 4x the squared error to the loss, as ``training/train_video_model.py`` does; their figures are still L1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from train_scenes_model import VAE as SCENES_VAE  # noqa: E402
from train_video_model import FRAMES, SIZE, downsample, to_video_tensor  # noqa: E402
from train_video_model import VAE as VIDEO_VAE  # noqa: E402

from fresco_plugin.tools.video_scenes import render_clip, sample_clip  # noqa: E402

KINDS = ("2d", "wan", "wan-residual", "wan-residual-squared", "wan-patch2")


def autoencoder(kind: str):
    from diffusers import AutoencoderKL, AutoencoderKLWan

    if kind == "2d":
        return AutoencoderKL(**{**SCENES_VAE, "sample_size": SIZE // 2})
    if kind == "wan-patch2":  # the shipped video model's layout (2x2 patches in, one 2x downsampling inside)
        return AutoencoderKLWan(**{**VIDEO_VAE, "z_dim": 4, "temperal_downsample": [False]},
                                latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    return AutoencoderKLWan(base_dim=16, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
                            temperal_downsample=[False, False], is_residual=kind != "wan",
                            latents_mean=[0.0] * 4, latents_std=[1.0] * 4)


def probe(kind: str, steps: int, seed: int) -> tuple[list[float], list[float]]:
    """Mean L1 per 100 steps of the autoencoder, and of a constant mid-grey guess on the same frames."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vae = autoencoder(kind)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    losses, grey = [], []
    for _ in range(steps):
        frames = downsample(to_video_tensor([render_clip(sample_clip(rng), FRAMES, SIZE) for _ in range(16)]))[:, :, 0]
        grey.append(frames.abs().mean().item())  # 0 is mid-grey in the VAE's [-1, 1]
        if kind == "2d":
            decoded = vae.decode(vae.encode(frames).latent_dist.mean).sample
        else:  # a one-frame video
            decoded = vae.decode(vae.encode(frames[:, :, None]).latent_dist.mean).sample[:, :, 0]
        l1 = (decoded - frames).abs().mean()
        loss = l1 + 4 * (decoded - frames).pow(2).mean() if kind in ("wan-residual-squared", "wan-patch2") else l1
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(l1.item())
    return tuple([float(np.mean(values[start:start + 100])) for start in range(0, steps, 100)]
                 for values in (losses, grey))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--out", type=Path, help="also write the figures as JSON (added to the file's other kinds)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for kind in args.kinds:
        started = time.time()
        results[kind], results["grey"] = probe(kind, args.steps, args.seed)  # the same frames for every kind
        print(f"{kind}: mean L1 per 100 steps {[round(v, 3) for v in results[kind]]} ({time.time() - started:.0f} s)",
              flush=True)
    print(f"constant grey: {[round(v, 3) for v in results['grey']]}")
    if args.out:
        earlier = json.loads(args.out.read_text())["l1_per_100_steps"] if args.out.is_file() else {}
        args.out.write_text(json.dumps(dict(steps=args.steps, seed=args.seed, threads=args.threads,
                                            torch=torch.__version__, l1_per_100_steps={**earlier, **results}),
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
