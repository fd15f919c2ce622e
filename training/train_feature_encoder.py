"""Trains the realism yardstick of ``fresco bench``: the scene feature encoder (see
``tools/scene_features.py``), on true 128-pixel scene renders only.

    python training/train_feature_encoder.py          # a few minutes on 2 CPU cores, fp32, fixed seed

Writes ``tools/models/scenes-features`` (``model.safetensors``, ``config.json``, ``training_report.json``).
The report gives the encoder's accuracy on fresh renders per fact, and the KID floor: the distance between two sets
of true renders of the same prompts (new placements, backgrounds and textures), which a perfect generator would get.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from fresco_plugin.tools.scene_features import (
    FEATURES_DIR,
    HEADS,
    SceneFeatureEncoder,
    embed_pictures,
    kid,
    scene_targets,
)
from fresco_plugin.tools.scenes import Scene, render, sample_scene, scene_for_prompt

SIZE = 128


def batch_of(scenes: list[Scene]) -> torch.Tensor:
    return torch.from_numpy(np.stack([render(s, SIZE) for s in scenes])).permute(0, 3, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=FEATURES_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {message}", flush=True)

    encoder = SceneFeatureEncoder()
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=2e-3, weight_decay=0.01)
    for step in range(args.steps):
        # both splits: the encoder reads facts, it does not generate; held-out prompts must embed as well
        scenes = [sample_scene(rng, held_out=None) for _ in range(args.batch)]
        labels, values = scene_targets(scenes)
        logits, regressed = encoder(batch_of(scenes))
        loss = sum(torch.nn.functional.cross_entropy(logits[name], labels[name]) for name, _ in HEADS)
        loss = loss + 20 * torch.nn.functional.mse_loss(regressed, values)
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 250 == 0 or step == args.steps - 1:
            log(f"step {step}/{args.steps} loss {loss.item():.4f}")
    encoder.eval().requires_grad_(False)

    with torch.no_grad():
        scenes = [sample_scene(rng, held_out=None) for _ in range(512)]
        labels, values = scene_targets(scenes)
        logits, regressed = encoder(batch_of(scenes))
        accuracy = {name: float((logits[name].argmax(1) == labels[name]).float().mean()) for name, _ in HEADS}
        centre_error = float((regressed[:, :4] - values[:, :4]).abs().mean())
    log(f"accuracy on fresh renders: {accuracy}; centre error {centre_error:.4f} of the picture")
    # The KID floor: true renders against other true renders of the same prompts.
    scenes = scenes[:256]
    first = embed_pictures(encoder, [render(s, SIZE) for s in scenes])
    second = embed_pictures(encoder, [render(scene_for_prompt(s.prompt, rng), SIZE) for s in scenes])
    floor = kid(first, second)
    log(f"KID floor (true renders vs other true renders of the same 256 prompts): {floor:.3f}")
    encoder.save(args.output)
    report = dict(accuracy=accuracy, centre_mean_abs_error=centre_error, kid_floor_256=floor, seed=args.seed,
                  steps=args.steps, batch=args.batch, minutes=round((time.time() - started) / 60, 1),
                  torch=torch.__version__)
    (args.output / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"saved to {args.output}")


if __name__ == "__main__":
    main()
