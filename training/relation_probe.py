"""Short probes of why the scenes model gets relations wrong, before spending a full retrain on an idea.

    python training/relation_probe.py train --layout-weight 0.5 --out probe.json   # ~35 min on 1 thread
    python training/relation_probe.py train --layout-weight 0.5 --absolute-positions --out probe.json
    python training/relation_probe.py train --layout-weight 2 --layout-min-sigma 0.8 --out probe.json
    python training/relation_probe.py train --high-noise-share 0.5 --out probe.json
    python training/relation_probe.py train --coarse-weight 10 --out probe.json
    python training/relation_probe.py train --text-roles spatial --out probe.json
    python training/relation_probe.py train --text-roles spatial --layout-weight 0.5 --sketch-positions final \
        --rope-axes 16 8 8 --out probe.json
    python training/relation_probe.py layout-only --out probe.json                  # ~9 min on 1 thread
    python training/relation_probe.py shipped-x0 --out probe.json                   # ~3 min on 2 threads

``train``: the shipped model's VAE and tokenizers, fresh text encoders (with the script's grammar pre-training) and a
fresh transformer of the shipped size, trained on 64-pixel scenes only (8x8 tokens, 2500 steps of 32) exactly as
``train_scenes_model.py`` trains them; then the checker's rates on 64 training and 64 held-out prompts, 30 steps,
unguided and at CFG 3, at 64 pixels. ``--layout-weight`` is the script's per-token layout loss;
``--absolute-positions`` is a diagnostic, not a stock FLUX transformer: a fixed sine code of each token's row and
column added after the patch embedding, so a token knows where it is without reading the rotary phase against the text.
``--layout-min-sigma`` keeps the layout loss to samples at least that noisy (below, the noisy image shows the layout
and the loss puts no pressure on the text binding); ``--high-noise-share`` draws that share of each batch's sigma
uniformly in [0.8, 1], where the shipped model's clean-image prediction has the order at chance; ``--coarse-weight``
adds a loss on the clean-image prediction's quadrant means (where each colour goes), which the flow loss weighs as a
tiny share of its total. ``--text-roles spatial`` pre-trains the text encoders to name each object by place (the
left or top one, the right or bottom one) instead of by word order, so an image token can find its object by its own
position alone rather than by position and relation word together. ``--sizes both`` trains in the full script's
cycle (one 128-pixel batch to two 64-pixel ones) and adds a 128-pixel reading at CFG 3; ``--sizes 128`` trains on
128-pixel batches of 16 only and reads at 128 pixels; ``--sketch-positions final``
puts the 64-pixel tokens at the 128-pixel grid's coordinates (and samples them there); ``--rope-axes`` sets the
transformer's rotary channels per axis (frame, row, column): the shipped 8 12 12 give a row or column the frequencies
1, 0.22, 0.046, ...; 16 8 8 give 1, 0.1, 0.01, 0.001.

``layout-only``: the same fresh encoders and transformer, trained on the layout loss alone with pure noise as the image
input (sigma 1), so only the prompt and the token's position can answer; then, on 128 held-out scenes, whether the
predicted first object lies before the second along the relation's axis. Can the architecture bind order at all?

``shipped-x0``: the shipped model's clean-image prediction ``x - sigma * v`` (CFG 3) at sigma 1, 0.9 and 0.7 for 48
left/right prompts: is each colour's centre of mass on the side the prompt names? Does the trained model know the
order where the layout is decided? Then, per relation, how often 96 sampled pictures (CFG 3, 30 steps) get it right.

Not used for the shipped weights; BENCHMARKS.md ("The shipped scenes model") reports these runs.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from train_scenes_model import (
    LAYOUT_CLASSES,
    OUTPUT,
    SIZE,
    TEXT_TOKENS,
    TEXT_WIDTH,
    PromptTokens,
    build_text_encoders,
    checker_rates,
    downsample,
    encode_text,
    layout_labels,
    pretrain_text_encoders,
    render,
    sample,
    sample_scene,
    to_tensor,
    train_transformer,
    transformer_config,
)

from fresco_plugin.tools.scenes import COLORS, SHAPES, check_adherence, color_mask, parse_prompt


def absolute_position_code(tokens: int, width: int) -> torch.Tensor:
    """``(tokens, width)``: sines and cosines of each token's row and column on a square grid, octave frequencies."""
    side = math.isqrt(tokens)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    rows, cols = rows.flatten().float() / side, cols.flatten().float() / side
    frequencies = 3.14159 * 2.0 ** torch.arange(width // 4).float()  # pi as the reported run rounded it
    return torch.cat([torch.sin(rows[:, None] * frequencies), torch.cos(rows[:, None] * frequencies),
                      torch.sin(cols[:, None] * frequencies), torch.cos(cols[:, None] * frequencies)], dim=1)


def fresh_pipeline(rope_axes: tuple[int, int, int] = (8, 12, 12)) -> FluxPipeline:
    """The shipped VAE, tokenizers and scheduler; fresh text encoders and a fresh transformer of the shipped size."""
    shipped = FluxPipeline.from_pretrained(OUTPUT)
    clip, t5 = build_text_encoders(shipped.tokenizer, shipped.tokenizer_2, TEXT_WIDTH)
    transformer = FluxTransformer2DModel(**transformer_config(4, 2, 4, rope_axes=rope_axes))
    pipe = FluxPipeline(scheduler=shipped.scheduler, vae=shipped.vae, text_encoder=clip, tokenizer=shipped.tokenizer,
                        text_encoder_2=t5, tokenizer_2=shipped.tokenizer_2, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def probe_training(args, log) -> dict:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pipe = fresh_pipeline(args.rope_axes)
    if args.absolute_positions:
        pipe.transformer.x_embedder.register_forward_hook(
            lambda module, inputs, out: out + absolute_position_code(out.shape[1], out.shape[2]).to(out))
    vae = pipe.vae
    sizes = {"64": (SIZE // 2,), "128": (SIZE,), "both": (SIZE // 2, SIZE)}[args.sizes]
    encoded, prompts, labels = {size: [] for size in sizes}, [], {size: [] for size in sizes}
    with torch.no_grad():
        for _ in range(0, args.scenes, 64):
            scenes = [sample_scene(rng) for _ in range(64)]
            pictures = to_tensor([render(s, SIZE) for s in scenes])
            for size in sizes:
                encoded[size].append(vae.encode(pictures if size == SIZE else downsample(pictures)).latent_dist.mean)
                labels[size] += [layout_labels(s, size) for s in scenes]
            prompts += [s.prompt for s in scenes]
    log(f"encoded {len(prompts)} scenes at {' and '.join(str(s) for s in sizes)} pixels")
    latents = {size: (torch.cat(z) - vae.config.shift_factor) * vae.config.scaling_factor
               for size, z in encoded.items()}
    tokens = PromptTokens(pipe.tokenizer, pipe.tokenizer_2, prompts)
    prompt_ids = torch.tensor([tokens.index[p] for p in prompts])
    device = torch.device("cpu")
    pretrain_text_encoders(pipe, tokens, 400, torch.Generator().manual_seed(0), device, log,
                           spatial_roles=args.text_roles == "spatial")
    # "both" is the full script's cycle: one 128-pixel batch of 16, two 64-pixel batches of 32
    large, small = {"64": (0, 1), "128": (1, 0), "both": (1, 2)}[args.sizes]
    training = argparse.Namespace(lr=1e-3, seed=0, batch=16, large_per_cycle=large,
                                  small_per_cycle=small, transformer_steps=args.steps, caption_dropout=0.1,
                                  sketch_positions=args.sketch_positions,
                                  ema=0.999, layout_weight=args.layout_weight,
                                  layout_min_sigma=args.layout_min_sigma, high_noise_share=args.high_noise_share,
                                  coarse_weight=args.coarse_weight)
    train_transformer(pipe, latents, prompt_ids, tokens, training, device, log,
                      {size: torch.stack(per_size) for size, per_size in labels.items()})
    report = {}
    factor = 2 if args.sketch_positions == "final" else 1
    for split, held_out in (("train", False), ("held_out", True)):
        split_prompts = [sample_scene(rng, held_out=held_out).prompt for _ in range(64)]
        # 64 pixels where the run trained there; 128 pixels (the size the bench samples at) where it trained there
        readings = [(SIZE // 2, cfg, "") for cfg in (1.0, 3.0) if args.sizes != "128"]
        readings += [(SIZE, cfg, "/128px") for cfg in ((3.0,) if args.sizes == "both" else (1.0, 3.0))
                     if args.sizes != "64"]
        for size, cfg, suffix in readings:
            rates = checker_rates(sample(pipe, split_prompts, size, cfg, steps=30,
                                         position_factor=factor if size < SIZE else 1), split_prompts)
            report[f"{split}/cfg{cfg:g}{suffix}"] = rates
            log(f"{split} cfg {cfg:g}, {size} px: " + " ".join(f"{k} {v:.3f}" for k, v in rates.items()))
    return report


def _object_class(obj) -> int:
    return 1 + list(COLORS).index(obj.color) * len(SHAPES) + SHAPES.index(obj.shape)


def probe_layout_only(args, log) -> dict:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pipe = fresh_pipeline()
    transformer, clip, t5 = pipe.transformer, pipe.text_encoder, pipe.text_encoder_2
    scenes = [sample_scene(rng) for _ in range(args.scenes)]
    prompts = [s.prompt for s in scenes]
    labels = torch.stack([layout_labels(s, SIZE // 2) for s in scenes])
    tokens = PromptTokens(pipe.tokenizer, pipe.tokenizer_2, prompts)
    prompt_ids = torch.tensor([tokens.index[p] for p in prompts])
    pretrain_text_encoders(pipe, tokens, 400, torch.Generator().manual_seed(0), torch.device("cpu"), log)
    head = torch.nn.Linear(transformer.inner_dim, LAYOUT_CLASSES)
    features = {}
    transformer.single_transformer_blocks[0].register_forward_pre_hook(
        lambda module, positional, named: features.update(tokens=named["hidden_states"]), with_kwargs=True)
    parameters = [p for m in (transformer, clip, t5, head) for p in m.parameters()]
    for module in (transformer, clip, t5):
        module.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    image_ids = FluxPipeline._prepare_latent_image_ids(1, 8, 8, "cpu", torch.float32)
    text_ids = torch.zeros(TEXT_TOKENS, 3)

    def layout_logits(token_tensors, count: int) -> torch.Tensor:
        clip_ids, t5_ids = token_tensors
        embeds, pooled = encode_text(pipe, clip_ids, t5_ids)
        transformer(hidden_states=torch.randn(count, 64, 16, generator=generator), encoder_hidden_states=embeds,
                    pooled_projections=pooled, timestep=torch.ones(count), img_ids=image_ids, txt_ids=text_ids,
                    return_dict=False)
        return head(features.pop("tokens"))

    for step in range(args.steps):
        index = torch.randint(len(prompt_ids), (32,), generator=generator)
        logits = layout_logits((tokens.clip[prompt_ids[index]], tokens.t5[prompt_ids[index]]), 32)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[index].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % 100 == 0:
            log(f"step {step} layout loss {loss.item():.4f}")
    for module in (transformer, clip, t5):
        module.eval()
    held = [sample_scene(rng, held_out=True) for _ in range(128)]
    held_tokens = PromptTokens(pipe.tokenizer, pipe.tokenizer_2, [s.prompt for s in held])
    rows = [held_tokens.index[s.prompt] for s in held]
    with torch.no_grad():
        probabilities = layout_logits((held_tokens.clip[rows], held_tokens.t5[rows]), len(held)).softmax(-1)
    grid_rows, grid_cols = (axis.flatten() for axis in torch.meshgrid(torch.arange(8.0), torch.arange(8.0),
                                                                      indexing="ij"))
    right = 0
    for scene, probability in zip(held, probabilities):
        axis = grid_cols if scene.relation in ("left of", "right of") else grid_rows
        centres = [(probability[:, c] * axis).sum() / probability[:, c].sum()
                   for c in (_object_class(scene.first), _object_class(scene.second))]
        right += bool(centres[0] < centres[1]) == (scene.relation in ("left of", "above"))
    log(f"held-out order from the prompt alone at sigma 1: {right}/{len(held)}")
    return {"order_right": right, "held_out_scenes": len(held), "final_layout_loss": loss.item()}


def probe_shipped_x0(args, log) -> dict:
    pipe = FluxPipeline.from_pretrained(OUTPUT)
    rng = np.random.default_rng(3)
    scenes = [s for s in (sample_scene(rng) for _ in range(400)) if s.relation in ("left of", "right of")][:48]
    prompts = [s.prompt for s in scenes]
    embeds, pooled, text_ids = pipe.encode_prompt(prompts, prompt_2=None, max_sequence_length=TEXT_TOKENS)
    empty, empty_pooled, _ = pipe.encode_prompt([""] * len(prompts), prompt_2=None, max_sequence_length=TEXT_TOKENS)
    image_ids = FluxPipeline._prepare_latent_image_ids(1, 16, 16, "cpu", torch.float32)
    columns = np.arange(SIZE)[None, :].repeat(SIZE, 0)
    report = {}
    for sigma in (1.0, 0.9, 0.7):
        noisy = torch.randn(len(prompts), 256, 16, generator=torch.Generator().manual_seed(0))
        times = torch.full((len(prompts),), sigma)
        branches = ((embeds, pooled), (empty, empty_pooled))
        with torch.no_grad():
            cond, uncond = (pipe.transformer(hidden_states=noisy, encoder_hidden_states=e, pooled_projections=p,
                                             timestep=times, img_ids=image_ids, txt_ids=text_ids,
                                             return_dict=False)[0] for e, p in branches)
            clean = noisy - sigma * (uncond + 3.0 * (cond - uncond))
            latents = FluxPipeline._unpack_latents(clean, SIZE, SIZE, 4)
            latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
            pictures = ((pipe.vae.decode(latents).sample.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        right = counted = 0
        for picture, scene in zip(pictures, scenes):
            masses = [color_mask(picture, obj.color).astype(float) + 1e-6 for obj in (scene.first, scene.second)]
            if min(m.sum() for m in masses) < 1:  # a colour the prediction does not show at all
                continue
            counted += 1
            first, second = ((m * columns).sum() / m.sum() for m in masses)
            right += bool(first < second) == (scene.relation == "left of")
        report[f"sigma{sigma:g}"] = {"order_right": right, "counted": counted}
        log(f"sigma {sigma:g}: the clean-image prediction puts the colours in the prompt's order in {right}/{counted}")
    # sampled pictures: the relation right, per relation, among those where both objects were drawn
    rng = np.random.default_rng(5)
    prompts = [sample_scene(rng).prompt for _ in range(96)]
    per_relation = {}
    for picture, prompt in zip(sample(pipe, prompts, SIZE, 3.0, steps=30), prompts):
        spec = parse_prompt(prompt)
        check = check_adherence(picture, spec)
        if all(check.found):
            counts = per_relation.setdefault(spec.relation, [0, 0])
            counts[0] += int(check.relation_ok)
            counts[1] += 1
    report["sampled_relation_right_per_relation"] = per_relation
    log(f"sampled at CFG 3, relation right / both objects drawn: {per_relation}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("train", "layout-only", "shipped-x0"))
    parser.add_argument("--layout-weight", type=float, default=0.0)
    parser.add_argument("--absolute-positions", action="store_true")
    parser.add_argument("--layout-min-sigma", type=float, default=0.0)
    parser.add_argument("--high-noise-share", type=float, default=0.0)
    parser.add_argument("--coarse-weight", type=float, default=0.0)
    parser.add_argument("--text-roles", choices=("order", "spatial"), default="order")
    parser.add_argument("--sizes", choices=("64", "128", "both"), default="64",
                        help="train at 64 pixels only, at 128 only, or at both in the full script's cycle")
    parser.add_argument("--sketch-positions", choices=("stage", "final"), default="stage",
                        help="64-pixel tokens on their own integer grid, or at the 128-pixel grid's coordinates")
    parser.add_argument("--rope-axes", type=int, nargs=3, default=(8, 12, 12),
                        help="the transformer's rotary channels per axis (frame, row, column); they sum to 32")
    parser.add_argument("--steps", type=int, default=None, help="2500 for train, 1500 for layout-only")
    parser.add_argument("--scenes", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=None, help="1, or 2 for shipped-x0")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.steps = args.steps or (2500 if args.mode == "train" else 1500)
    torch.set_num_threads(args.threads or (2 if args.mode == "shipped-x0" else 1))
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {message}", flush=True)

    probe = {"train": probe_training, "layout-only": probe_layout_only, "shipped-x0": probe_shipped_x0}[args.mode]
    report = {"arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              **probe(args, log), "minutes": round((time.time() - started) / 60, 1)}
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
