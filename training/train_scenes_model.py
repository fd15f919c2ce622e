"""Trains the shipped demo model: a small FLUX-architecture text-to-image pipeline on procedural scenes.

    python training/train_scenes_model.py            # 74-99 minutes of training measured on 2 CPU cores, fp32

Writes a diffusers folder (``FluxPipeline.from_pretrained`` loads it) to ``tools/models/scenes-flux``, with
``training_report.json`` (about 10 minutes more) beside the weights. Every random draw comes from the seed and the run
is single-process fp32 with a fixed thread count: a run on the machine type the shipped weights were made on wrote
them byte for byte; a run in an earlier session, on another machine or install, reached the same checker rates
within noise but not the same weights (BENCHMARKS.md). Components:

- tokenizers built from the scene grammar's words (a CLIP BPE and a T5 unigram, saved as ``tokenizer.json``);
- text encoders: a 2-layer CLIP text model and a 2-layer T5 encoder, trained jointly with the transformer. Frozen
  random encoders (the first shipped model) mix every word into every token almost uniformly, so "red" as the first
  object and "red" as the second look alike and the model could not bind colour, shape and relation;
- a VAE (``AutoencoderKL``, 4x downsampling, 4 latent channels) trained on scene renders;
- a ``FluxTransformer2DModel`` trained by rectified flow at 128 pixels and at 64 pixels (the 128-pixel scene
  downsampled 2x2, so both resolutions show the same scene and a low-resolution sketch means the same layout), with
  FLUX's token-count timestep shift and 10% caption dropout (the empty prompt), so true classifier-free guidance
  (``true_cfg_scale`` with ``negative_prompt=""``) works. The 64-pixel batches sit at the 128-pixel grid's positions
  (each token at the centre of the four it covers, so a picture region has one position at both sizes; a Fresco
  sketch on this model needs ``FrescoConfig(position_units="final")``); ``--sketch-positions stage`` puts them on the
  stock integer grid instead. A per-token layout loss (``--layout-weight``: which object covers each image token,
  read by a linear head that is dropped after training) and grammar pre-training that names the object slots by
  place (``--text-roles spatial``: the left or top object first) teach relations; rotary channels 16 8 8 (frame,
  row, column) give a row or column the frequency 0.1, which turns about a quarter turn across the 16-token picture
  (8 12 12 left relations at chance). Each choice measured: BENCHMARKS.md, "The shipped scenes model".
"""

from __future__ import annotations

import argparse
import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from diffusers import FluxPipeline

from fresco_plugin.schedule import flux_mu
from fresco_plugin.tools.scenes import (
    BACKGROUNDS,
    COLORS,
    RELATIONS,
    SHAPES,
    check_adherence,
    parse_prompt,
    render,
    sample_scene,
    signed_distance,
)

OUTPUT = Path(__file__).resolve().parents[1] / "tools" / "models" / "scenes-flux"
TEXT_TOKENS = 32  # T5 sequence length the model is trained with (pass max_sequence_length=32 to the pipeline)
SIZE = 128
SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                 base_image_seq_len=64, max_image_seq_len=256)
VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
           up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32), layers_per_block=1,
           latent_channels=4, norm_num_groups=8, sample_size=SIZE, mid_block_add_attention=False)
TEXT_WIDTH = 64


def transformer_config(heads: int, double: int, single: int, text_width: int = TEXT_WIDTH,
                       rope_axes: tuple[int, int, int] = (8, 12, 12)) -> dict:
    return dict(patch_size=1, in_channels=16, num_layers=double, num_single_layers=single, attention_head_dim=32,
                num_attention_heads=heads, joint_attention_dim=text_width, pooled_projection_dim=text_width,
                guidance_embeds=False, axes_dims_rope=tuple(rope_axes))


def grammar_words() -> list[str]:
    words = ["a", "on", "background"] + list(COLORS) + list(SHAPES) + list(BACKGROUNDS)
    for relation in RELATIONS:
        words += relation.split()
    return list(dict.fromkeys(words))


def build_tokenizers():
    from transformers import CLIPTokenizer, T5TokenizerFast

    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for special in ("<|startoftext|>", "<|endoftext|>"):
        add(special)
    for letter in "abcdefghijklmnopqrstuvwxyz":
        add(letter)
        add(letter + "</w>")
    merges: list[tuple[str, str]] = []
    for word in grammar_words():  # merge each word left to right into one end-of-word token
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        current = symbols[0]
        for symbol in symbols[1:]:
            if (current, symbol) not in merges:
                merges.append((current, symbol))
            current += symbol
            add(current)
    clip = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in grammar_words()]
    pieces += [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyz\u2581"]
    t5 = T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=TEXT_TOKENS)
    return clip, t5


def build_text_encoders(clip_tokenizer, t5_tokenizer, width: int):
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=width,
        bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id,
        pad_token_id=clip_tokenizer.pad_token_id))
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tokenizer), d_model=width, d_kv=16, d_ff=2 * width, num_layers=2, num_heads=4,
        dropout_rate=0.0, pad_token_id=t5_tokenizer.pad_token_id, eos_token_id=t5_tokenizer.eos_token_id,
        decoder_start_token_id=0))
    return clip, t5


def to_tensor(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) * 2 - 1


def downsample(images: torch.Tensor) -> torch.Tensor:
    """The 64-pixel view of 128-pixel pictures: 2x2 means, so both resolutions show the same scene."""
    return torch.nn.functional.avg_pool2d(images, 2)


def image_positions(rows: int, cols: int, factor: int, device: torch.device) -> torch.Tensor:
    """Token positions of a ``rows x cols`` grid in units of a grid ``factor`` times finer: each token at the centre of
    the fine tokens it covers (``factor * i + (factor - 1) / 2``), where Fresco's ``position_units="final"`` places a
    sketch token. ``factor=1`` is the stock integer grid."""
    ids = FluxPipeline._prepare_latent_image_ids(1, rows, cols, device, torch.float32)
    ids[:, 1:] = ids[:, 1:] * factor + (factor - 1) / 2
    return ids


def cosine_lr(peak: float, step: int, steps: int, warmup: int = 100) -> float:
    return peak * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))


def train_vae(vae, steps: int, rng: np.random.Generator, device: torch.device, log) -> None:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    vae.train()
    for step in range(steps):
        # 64-pixel views: whole downsampled scenes, or crops of 128-pixel scenes (their finer textures, cheaply)
        pictures = to_tensor([render(sample_scene(rng), SIZE) for _ in range(16)])
        if step % 2:
            images = downsample(pictures)
        else:
            corners = rng.integers(0, SIZE // 2 + 1, size=(16, 2))
            images = torch.stack([p[:, y:y + SIZE // 2, x:x + SIZE // 2] for p, (y, x) in zip(pictures, corners)])
        images = images.to(device)
        posterior = vae.encode(images).latent_dist
        # Trained as a plain autoencoder on the posterior mean (sampling at the initial unit variance drowns the
        # signal for hundreds of steps); only the mean is ever used. L1 keeps edges and textures sharp; a tiny KL
        # keeps the latent scale bounded.
        decoded = vae.decode(posterior.mean).sample
        loss = (decoded - images).abs().mean() + 1e-6 * posterior.kl().mean()
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(1e-3, step, steps)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 250 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} l1 {loss.item():.4f}")
    vae.eval().requires_grad_(False)


PIXELS_PER_TOKEN = 8  # the VAE's 4x downsampling times the transformer's 2x2 patches
LAYOUT_CLASSES = 1 + len(COLORS) * len(SHAPES)  # background, then each (colour, shape) object
HIGH_NOISE = 0.8  # --high-noise-share draws sigma uniformly above this


def layout_labels(scene, size: int) -> torch.Tensor:
    """Per image token (row-major, as FLUX packs them): which object covers the token's centre, as a (colour, shape)
    class, 0 for the background; the second object is drawn on top, as in ``render``."""
    tokens = size // PIXELS_PER_TOKEN
    coords = (np.arange(tokens, dtype=np.float32) + 0.5) / tokens
    x, y = np.meshgrid(coords, coords)
    labels = np.zeros((tokens, tokens), dtype=np.int64)
    for obj in (scene.first, scene.second):
        inside = signed_distance(obj, x, y) < 0
        labels[inside] = 1 + list(COLORS).index(obj.color) * len(SHAPES) + SHAPES.index(obj.shape)
    return torch.from_numpy(labels.reshape(-1))


@torch.no_grad()
def encode_dataset(vae, count: int, rng: np.random.Generator, device: torch.device, log):
    """Unnormalised latents (VAE posterior means) of ``count`` fresh training scenes at 128 and at 64 pixels, their
    prompts, and each scene's per-token layout labels at both sizes."""
    large, small, prompts, labels = [], [], [], {SIZE: [], SIZE // 2: []}
    for start in range(0, count, 64):
        scenes = [sample_scene(rng) for _ in range(min(64, count - start))]
        pictures = to_tensor([render(s, SIZE) for s in scenes]).to(device)
        large.append(vae.encode(pictures).latent_dist.mean.cpu())
        small.append(vae.encode(downsample(pictures)).latent_dist.mean.cpu())
        prompts += [s.prompt for s in scenes]
        for size, per_size in labels.items():
            per_size += [layout_labels(s, size) for s in scenes]
        if start % 4096 == 0:
            log(f"encoded {start}/{count} scenes")
    labels = {size: torch.stack(per_size) for size, per_size in labels.items()}
    return {SIZE: torch.cat(large), SIZE // 2: torch.cat(small)}, prompts, labels


class PromptTokens:
    """Every distinct prompt's token ids, tokenised exactly as ``FluxPipeline.encode_prompt`` does."""

    def __init__(self, clip_tokenizer, t5_tokenizer, prompts: list[str]):
        self.prompts = ["", *sorted(set(prompts))]  # index 0: the empty prompt (caption dropout, negative prompt)
        self.index = {p: i for i, p in enumerate(self.prompts)}
        self.clip = clip_tokenizer(self.prompts, padding="max_length", max_length=clip_tokenizer.model_max_length,
                                   truncation=True, return_tensors="pt").input_ids
        self.t5 = t5_tokenizer(self.prompts, padding="max_length", max_length=TEXT_TOKENS, truncation=True,
                               return_tensors="pt").input_ids


SLOTS = (("color_1", list(COLORS)), ("shape_1", list(SHAPES)), ("relation", list(RELATIONS)),
         ("color_2", list(COLORS)), ("shape_2", list(SHAPES)), ("background", list(BACKGROUNDS)))


# Relations whose first-named object lies right of or below the second one.
TRAILING_FIRST = ("below", "right of")


def slot_names(spec, spatial: bool) -> tuple[str, str]:
    """Which object slot the first- and the second-named object fill. By word order (``spatial=False``, the shipped
    model) slot 1 is the first-named object; by place (``spatial=True``) slot 1 is the object on the left or on top,
    whichever the prompt names first, so "red" in "a red circle right of ..." fills slot 2."""
    swap = spatial and spec.relation in TRAILING_FIRST
    return ("2", "1") if swap else ("1", "2")


def slot_labels(prompt: str, spatial: bool = False) -> list[int]:
    spec = parse_prompt(prompt)
    first, second = slot_names(spec, spatial)
    named = {f"color_{first}": spec.first[0], f"shape_{first}": spec.first[1], "relation": spec.relation,
             f"color_{second}": spec.second[0], f"shape_{second}": spec.second[1], "background": spec.background}
    return [choices.index(named[name]) for name, choices in SLOTS]


def word_roles(prompt: str, t5_tokenizer, spatial: bool = False) -> list[int]:
    """Per T5 token: which slot's value it names (an index into the flattened slot values), or -100 for the others
    ("a", "on", "of", "background", the end and the padding). ``spatial``: object slots by place, ``slot_names``."""
    offsets, start = {}, 0
    for name, choices in SLOTS:
        offsets[name] = start
        start += len(choices)
    spec = parse_prompt(prompt)
    first, second_slot = slot_names(spec, spatial)
    words = prompt.split()
    roles = [-100] * len(words)
    relation_words = spec.relation.split()
    at = 3  # "a <colour> <shape> <relation...> a <colour> <shape> on a <background> background"
    roles[1] = offsets[f"color_{first}"] + list(COLORS).index(spec.first[0])
    roles[2] = offsets[f"shape_{first}"] + SHAPES.index(spec.first[1])
    for k in range(len(relation_words)):
        roles[at + k] = offsets["relation"] + RELATIONS.index(spec.relation)
    second = at + len(relation_words) + 1
    roles[second] = offsets[f"color_{second_slot}"] + list(COLORS).index(spec.second[0])
    roles[second + 1] = offsets[f"shape_{second_slot}"] + SHAPES.index(spec.second[1])
    roles[-2] = offsets["background"] + BACKGROUNDS.index(spec.background)
    ids = t5_tokenizer(words, is_split_into_words=True).word_ids()
    labels = [roles[w] if w is not None else -100 for w in ids][:TEXT_TOKENS]
    return labels + [-100] * (TEXT_TOKENS - len(labels))


def pretrain_text_encoders(pipe, tokens: PromptTokens, steps: int, generator: torch.Generator,
                           device: torch.device, log, spatial_roles: bool = False) -> None:
    """Teach the text encoders the grammar before the transformer sees them, as FLUX's come pretrained: the CLIP
    pooled vector reads every slot of the prompt (both objects' colour and shape, the relation, the background), and
    each T5 token says which slot it fills ("red" as the first or the second object's colour). The transformer then
    binds image regions to slots from its first step instead of waiting for the encoders to discover word order.
    ``spatial_roles`` names the object slots by place (left or top object first) instead of word order, so an image
    token can pick its object by where it is alone, without also reading the relation."""
    prompts = tokens.prompts[1:]
    labels = torch.tensor([slot_labels(p, spatial_roles) for p in prompts])
    roles = torch.tensor([word_roles(p, pipe.tokenizer_2, spatial_roles) for p in prompts])
    width = sum(len(choices) for _, choices in SLOTS)
    heads = torch.nn.ModuleDict({"pooled": torch.nn.Linear(pipe.text_encoder.config.hidden_size, width),
                                 "tokens": torch.nn.Linear(pipe.text_encoder_2.config.d_model, width)}).to(device)
    encoders = [pipe.text_encoder, pipe.text_encoder_2]
    optimizer = torch.optim.AdamW([p for m in [*encoders, heads] for p in m.parameters()], lr=3e-3)
    for module in encoders:
        module.train().requires_grad_(True)
    for step in range(steps):
        index = torch.randint(len(prompts), (64,), generator=generator)
        sequence, pooled = encode_text(pipe, tokens.clip[index + 1].to(device), tokens.t5[index + 1].to(device))
        logits = heads["pooled"](pooled)
        loss, start = 0.0, 0
        for k, (_, choices) in enumerate(SLOTS):
            loss = loss + torch.nn.functional.cross_entropy(logits[:, start:start + len(choices)],
                                                            labels[index, k].to(device))
            start += len(choices)
        loss = loss + torch.nn.functional.cross_entropy(heads["tokens"](sequence).flatten(0, 1),
                                                        roles[index].flatten().to(device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            log(f"text step {step}/{steps} slot loss {loss.item():.4f}")


def encode_text(pipe, clip_ids: torch.Tensor, t5_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(T5 sequence, CLIP pooled) with gradients: the same calls ``FluxPipeline.encode_prompt`` makes."""
    pooled = pipe.text_encoder(clip_ids, output_hidden_states=False).pooler_output
    sequence = pipe.text_encoder_2(t5_ids, output_hidden_states=False)[0]
    return sequence, pooled


def quadrant_means(tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``(B, rows * cols, D)`` packed tokens averaged over each quadrant of their grid: ``(B, 4, D)``."""
    grid = tokens.unflatten(1, (2, rows // 2, 2, cols // 2))
    return grid.mean(dim=(2, 4)).flatten(1, 2)


def train_transformer(pipe, latents: dict[int, torch.Tensor], prompt_ids: torch.Tensor, tokens: PromptTokens,
                      args, device: torch.device, log, labels: dict[int, torch.Tensor] | None = None) -> None:
    """Rectified flow on the cached latents. With ``args.layout_weight > 0`` a linear head also reads, from the image
    tokens after the double-stream blocks, which object covers each token (``layout_labels``): at high noise only the
    prompt and the token's position can answer, so the blocks that join text and image must bind each object to its
    side. The head is trained and then dropped; the saved transformer is a stock ``FluxTransformer2DModel``."""
    modules = [pipe.transformer, pipe.text_encoder, pipe.text_encoder_2]
    parameters = [p for m in modules for p in m.parameters()]
    for module in modules:
        module.train().requires_grad_(True)
    layout_head, image_features = None, {}
    if args.layout_weight > 0:
        layout_head = torch.nn.Linear(pipe.transformer.inner_dim, LAYOUT_CLASSES).to(device)
        pipe.transformer.single_transformer_blocks[0].register_forward_pre_hook(
            lambda module, positional, named: image_features.update(tokens=named["hidden_states"]), with_kwargs=True)
    optimizer = torch.optim.AdamW(parameters + (list(layout_head.parameters()) if layout_head else []), lr=args.lr,
                                  weight_decay=0.01, betas=(0.9, 0.99))
    ema = [p.detach().clone() for p in parameters]
    generator = torch.Generator().manual_seed(args.seed)
    txt_ids = torch.zeros(TEXT_TOKENS, 3, device=device)
    cycle = [(SIZE, args.batch)] * args.large_per_cycle + [(SIZE // 2, args.batch * 2)] * args.small_per_cycle
    for step in range(args.transformer_steps):
        size, batch = cycle[step % len(cycle)]
        index = torch.randint(len(prompt_ids), (batch,), generator=generator)
        x0 = latents[size][index].to(device)
        _, channels, height, width = x0.shape
        x0 = FluxPipeline._pack_latents(x0, batch, channels, height, width)
        # Logit-normal times, shifted towards noise with FLUX's token-count rule (the pipeline samples the same way).
        mu = flux_mu(x0.shape[1], SCHEDULER["base_image_seq_len"], SCHEDULER["max_image_seq_len"],
                     SCHEDULER["base_shift"], SCHEDULER["max_shift"])
        u = torch.sigmoid(torch.randn(batch, generator=generator))
        sigma = (math.exp(mu) * u / (1 + (math.exp(mu) - 1) * u)).to(device)
        if args.high_noise_share > 0:  # where the layout is decided; drawn only when asked (the shipped run's RNG)
            high = (torch.rand(batch, generator=generator) < args.high_noise_share).to(device)
            uniform = (HIGH_NOISE + (1 - HIGH_NOISE) * torch.rand(batch, generator=generator)).to(device)
            sigma = torch.where(high, uniform, sigma)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        noisy = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        drop = torch.rand(batch, generator=generator) < args.caption_dropout
        ids = torch.where(drop, torch.zeros_like(prompt_ids[index]), prompt_ids[index])
        embeds, pooled = encode_text(pipe, tokens.clip[ids].to(device), tokens.t5[ids].to(device))
        factor = SIZE // size if args.sketch_positions == "final" else 1
        image_ids = image_positions(height // 2, width // 2, factor, device)
        prediction = pipe.transformer(hidden_states=noisy, encoder_hidden_states=embeds, pooled_projections=pooled,
                                      timestep=sigma, img_ids=image_ids, txt_ids=txt_ids, return_dict=False)[0]
        loss = flow_loss = (prediction - (noise - x0)).pow(2).mean()
        if args.coarse_weight > 0:  # the clean-image prediction's quadrant means: where each colour goes, weighted up
            predicted = noisy - sigma[:, None, None] * prediction
            loss = loss + args.coarse_weight * (quadrant_means(predicted, height // 2, width // 2)
                                                - quadrant_means(x0, height // 2, width // 2)).pow(2).mean()
        if layout_head is not None:
            logits = layout_head(image_features.pop("tokens"))
            targets = labels[size][index].flatten().to(device)
            per_sample = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets,
                                                           reduction="none").view(batch, -1).mean(1)
            # Below ``layout_min_sigma`` the noisy image itself shows the layout: no pressure on the text binding.
            weights = (sigma >= args.layout_min_sigma).float()
            layout_loss = (per_sample * weights).sum() / weights.sum().clamp(min=1)
            loss = loss + args.layout_weight * layout_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        lr = cosine_lr(args.lr, step, args.transformer_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        decay = min(args.ema, (step + 1) / (step + 10))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in parameters], 1 - decay)
        if step % 100 == 0 or step == args.transformer_steps - 1:
            layout = f" layout {layout_loss.item():.4f}" if layout_head is not None else ""
            log(f"transformer step {step}/{args.transformer_steps} {size}px loss {flow_loss.item():.4f}{layout} "
                f"lr {lr:.2e}")
    with torch.no_grad():
        for p, average in zip(parameters, ema):
            p.copy_(average)
    for module in modules:
        module.eval().requires_grad_(False)


@torch.no_grad()
def sample(pipe, prompts: list[str], size: int, cfg: float, steps: int = 50, seed: int = 1000,
           position_factor: int = 1) -> list[np.ndarray]:
    """50-step samples; ``position_factor=2`` gives a 64-pixel run the positions it was trained with (a Fresco sketch's
    ``position_units="final"``) in place of the stock integer grid."""
    with grid_positions(pipe, position_factor):
        return _sample(pipe, prompts, size, cfg, steps, seed)


@contextmanager
def grid_positions(pipe, factor: int):
    """The pipeline's calls place image tokens as :func:`image_positions` with ``factor`` does (1: stock)."""
    if factor != 1:  # an instance attribute shadows the static method for this pipeline only
        pipe._prepare_latent_image_ids = lambda batch, rows, cols, device, dtype: image_positions(
            rows, cols, factor, device).to(dtype)
    try:
        yield
    finally:
        pipe.__dict__.pop("_prepare_latent_image_ids", None)


def _sample(pipe, prompts: list[str], size: int, cfg: float, steps: int, seed: int) -> list[np.ndarray]:
    images = []
    for start in range(0, len(prompts), 32):
        chunk = prompts[start:start + 32]
        guided = dict(true_cfg_scale=cfg, negative_prompt=[""] * len(chunk)) if cfg > 1 else {}
        out = pipe(chunk, height=size, width=size, num_inference_steps=steps, max_sequence_length=TEXT_TOKENS,
                   generator=[torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))],
                   output_type="np", **guided)
        images.extend(out.images)
    return images


def checker_rates(images: list[np.ndarray], prompts: list[str]) -> dict[str, float]:
    specs = [parse_prompt(p) for p in prompts]
    checks = [check_adherence(img, spec) for img, spec in zip(images, specs)]
    return dict(whole=float(np.mean([c.passed(s) for c, s in zip(checks, specs)])),
                objects=float(np.mean([all(c.found) for c in checks])),
                shapes=float(np.mean([all(c.shapes_ok(s)) for c, s in zip(checks, specs)])),
                relation=float(np.mean([c.relation_ok for c in checks])))


@torch.no_grad()
def adherence_report(pipe, rng: np.random.Generator, prompts_per_split: int, cfg_scales: list[float],
                     position_factor: int, device: torch.device, log) -> dict:
    """Checker pass rates on true renders, on their VAE round trip, and on the model's 50-step samples (unguided and
    with true CFG at each scale), for training and held-out prompts, at 128 pixels and (unguided) 64 pixels."""
    report = {}
    for split, held_out in (("train", False), ("held_out", True)):
        scenes = [sample_scene(rng, held_out=held_out) for _ in range(prompts_per_split)]
        prompts = [s.prompt for s in scenes]
        truth = [render(s, SIZE) for s in scenes]
        roundtrip = pipe.vae.decode(pipe.vae.encode(to_tensor(truth).to(device)).latent_dist.mean).sample
        roundtrip = list(((roundtrip.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy())
        results = {"ground_truth": truth, "vae_roundtrip": roundtrip}
        for cfg in cfg_scales:
            results["generated" if cfg <= 1 else f"generated_cfg{cfg:g}"] = sample(pipe, prompts, SIZE, cfg)
        results["generated_64px"] = sample(pipe, prompts, SIZE // 2, 1.0, position_factor=position_factor)
        for name, pictures in results.items():
            rates = checker_rates(pictures, prompts)
            report[f"{split}/{name}"] = rates
            log(f"adherence {split}/{name}: " + " ".join(f"{k} {v:.3f}" for k, v in rates.items())
                + f" over {len(prompts)} prompts")
    return report


def run_environment() -> dict[str, str]:
    """What a rerun must match to hope for the same weights: library versions, and the CPU and the vector kernels torch
    picks on it (two runs of this script in different sessions did not give the same weights)."""
    import platform

    import diffusers
    import transformers

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return dict(torch=torch.__version__, diffusers=diffusers.__version__, transformers=transformers.__version__,
                numpy=np.__version__, cpu=cpu, cpu_capability=torch.backends.cpu.get_cpu_capability())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--scenes", type=int, default=20000, help="training scenes encoded at 128 and 64 pixels")
    parser.add_argument("--transformer-steps", type=int, default=9000)
    parser.add_argument("--text-steps", type=int, default=400, help="grammar pre-training of the text encoders")
    parser.add_argument("--heads", type=int, default=4, help="attention heads of 32 channels (width = 32 x heads)")
    parser.add_argument("--double-blocks", type=int, default=2)
    parser.add_argument("--single-blocks", type=int, default=4)
    parser.add_argument("--text-width", type=int, default=TEXT_WIDTH)
    parser.add_argument("--rope-axes", type=int, nargs=3, default=(16, 8, 8),
                        help="rotary channels per axis (frame, row, column), summing to 32; 8 gives a row or column "
                        "the frequencies 1, 0.1, 0.01 and 0.001, 12 gives 1, 0.22, 0.046, ... (shipped: 16 8 8)")
    parser.add_argument("--batch", type=int, default=16, help="batch at 128 pixels (twice this at 64)")
    parser.add_argument("--large-per-cycle", type=int, default=1, help="128-pixel steps per cycle")
    parser.add_argument("--small-per-cycle", type=int, default=2, help="64-pixel steps per cycle")
    parser.add_argument("--sketch-positions", choices=("final", "stage"), default="final",
                        help="64-pixel batches at the 128-pixel grid's coordinates (final, shipped) or the stock "
                        "integer grid")
    parser.add_argument("--layout-weight", type=float, default=0.5,
                        help="weight of the auxiliary per-token layout loss (0: off; shipped: 0.5)")
    parser.add_argument("--layout-min-sigma", type=float, default=0.0,
                        help="the layout loss only on samples at least this noisy (0: every sample)")
    parser.add_argument("--coarse-weight", type=float, default=0.0,
                        help="weight of a loss on the clean-image prediction's quadrant means (0: off)")
    parser.add_argument("--high-noise-share", type=float, default=0.0,
                        help=f"share of each batch drawn uniformly in sigma [{HIGH_NOISE}, 1] instead of logit-normal")
    parser.add_argument("--text-roles", choices=("order", "spatial"), default="spatial",
                        help="grammar pre-training names object slots by place (shipped) or by word order")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--report-prompts", type=int, default=64)
    parser.add_argument("--report-cfg", type=float, nargs="+", default=(1.0, 2.0, 3.0, 4.0))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu for the shipped weights; cuda for quick explorations")
    args = parser.parse_args()

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:7.0f}s] {message}", flush=True)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    clip_tokenizer, t5_tokenizer = build_tokenizers()
    clip, t5 = build_text_encoders(clip_tokenizer, t5_tokenizer, args.text_width)
    vae = AutoencoderKL(**VAE)
    transformer = FluxTransformer2DModel(**transformer_config(args.heads, args.double_blocks, args.single_blocks,
                                                              args.text_width, args.rope_axes))
    log(f"transformer {sum(p.numel() for p in transformer.parameters()) / 1e6:.2f}M parameters, text encoders "
        f"{sum(p.numel() for m in (clip, t5) for p in m.parameters()) / 1e6:.2f}M")
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae, text_encoder=clip,
                        tokenizer=clip_tokenizer, text_encoder_2=t5, tokenizer_2=t5_tokenizer, transformer=transformer)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)

    train_vae(vae, args.vae_steps, rng, device, log)
    with torch.no_grad():  # a cheap early read of the VAE: does the checker still read its round trips?
        scenes = [sample_scene(rng) for _ in range(32)]
        decoded = vae.decode(vae.encode(to_tensor([render(s, SIZE) for s in scenes]).to(device)).latent_dist.mean)
        pictures = ((decoded.sample.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
        log(f"vae round trip: checker passes {checker_rates(list(pictures), [s.prompt for s in scenes])['whole']:.3f}"
            " of 32 scenes")
    raw, prompts, labels = encode_dataset(vae, args.scenes, rng, device, log)
    # FLUX normalises latents as (z - shift) * scale; measured on the data so the model sees unit variance.
    vae.register_to_config(shift_factor=float(raw[SIZE].mean()), scaling_factor=float(1.0 / raw[SIZE].std()))
    log(f"vae shift_factor {vae.config.shift_factor:.4f} scaling_factor {vae.config.scaling_factor:.4f}")
    latents = {size: (z - vae.config.shift_factor) * vae.config.scaling_factor for size, z in raw.items()}
    tokens = PromptTokens(clip_tokenizer, t5_tokenizer, prompts)
    prompt_ids = torch.tensor([tokens.index[p] for p in prompts])
    log(f"{len(tokens.prompts) - 1} distinct training prompts")
    pretrain_text_encoders(pipe, tokens, args.text_steps, torch.Generator().manual_seed(args.seed), device, log,
                           spatial_roles=args.text_roles == "spatial")
    train_transformer(pipe, latents, prompt_ids, tokens, args, device, log, labels)
    training_minutes = round((time.time() - started) / 60, 1)  # the 90-minute budget covers training, not the report

    args.output.mkdir(parents=True, exist_ok=True)
    pipe.to("cpu").save_pretrained(args.output, safe_serialization=True)
    trained = FluxPipeline.from_pretrained(args.output).to(device)
    trained.set_progress_bar_config(disable=True)
    with torch.no_grad():  # the pipeline's own prompt encoding is what training used
        ids = [tokens.index[p] for p in tokens.prompts[:8]]
        embeds, pooled = encode_text(trained, tokens.clip[ids].to(device), tokens.t5[ids].to(device))
        stock_embeds, stock_pooled, _ = trained.encode_prompt(tokens.prompts[:8], prompt_2=None,
                                                              max_sequence_length=TEXT_TOKENS)
        assert torch.equal(embeds, stock_embeds) and torch.equal(pooled, stock_pooled), "prompt encoding differs"
    sketch_factor = 2 if args.sketch_positions == "final" else 1
    report = dict(adherence=adherence_report(trained, rng, args.report_prompts, list(args.report_cfg), sketch_factor,
                                             device, log))
    report.update(seed=args.seed, arguments={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                             if k != "output"},
                  training_minutes=training_minutes, minutes=round((time.time() - started) / 60, 1),
                  **run_environment())
    (args.output / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"saved to {args.output}")


if __name__ == "__main__":
    main()
