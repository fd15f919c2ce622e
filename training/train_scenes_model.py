"""Trains the shipped demo model: a small FLUX-architecture text-to-image pipeline on procedural scenes.

    python training/train_scenes_model.py            # about an hour on 2 CPU cores, fp32, fixed seed

Writes a diffusers folder (``FluxPipeline.from_pretrained`` loads it) to ``fresco_plugin/models/scenes-flux``, with
``training_report.json`` beside the weights. Every random draw comes from the seed, so a rerun reproduces the weights
up to float summation order across threads. Components:

- tokenizers built from the scene grammar's words (a CLIP BPE and a T5 unigram, saved as ``tokenizer.json``);
- text encoders: a 2-layer CLIP text model and a 2-layer T5 encoder, randomly initialised from the seed and frozen
  (the transformer learns to read their features; the grammar is small enough that it needs nothing more);
- a VAE (``AutoencoderKL``, 4x downsampling, 4 latent channels) trained on scene renders;
- a ``FluxTransformer2DModel`` (about 2.3M parameters) trained by rectified flow at 64, 96 and 128 pixels, with FLUX's
  resolution-dependent timestep shift, so it can sample at the low resolutions Fresco starts from.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from fresco_plugin.scenes import (BACKGROUNDS, COLORS, RELATIONS, SHAPES, check_adherence, parse_prompt, render,
                                  sample_scene)
from fresco_plugin.schedule import flux_mu

OUTPUT = Path(__file__).resolve().parents[1] / "fresco_plugin" / "models" / "scenes-flux"
TEXT_TOKENS = 32  # T5 sequence length the model is trained with (pass max_sequence_length=32 to the pipeline)
SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                 base_image_seq_len=64, max_image_seq_len=256)
VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
           up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32), layers_per_block=1,
           latent_channels=4, norm_num_groups=8, sample_size=128, mid_block_add_attention=False)
TRANSFORMER = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=32,
                   num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=False,
                   axes_dims_rope=(8, 12, 12))
# (pixels, batch size): each training step draws one resolution, in this repeating order.
RESOLUTION_CYCLE = ((128, 32), (64, 64), (128, 32), (96, 48))


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


def build_text_encoders(clip_tokenizer, t5_tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=64,
        bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id,
        pad_token_id=clip_tokenizer.pad_token_id))
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        pad_token_id=t5_tokenizer.pad_token_id, eos_token_id=t5_tokenizer.eos_token_id, decoder_start_token_id=0))
    return clip.eval().requires_grad_(False), t5.eval().requires_grad_(False)


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) * 2 - 1


def train_vae(vae, steps: int, rng: np.random.Generator, log) -> None:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    vae.train()
    for step in range(steps):
        # 64-pixel views: whole 64-pixel scenes, or crops of 128-pixel scenes (their finer textures, cheaply)
        if step % 2:
            images = to_tensor([render(sample_scene(rng), 64) for _ in range(16)])
        else:
            corners = rng.integers(0, 65, size=(16, 2))
            images = to_tensor([render(sample_scene(rng), 128)[y:y + 64, x:x + 64] for y, x in corners])
        posterior = vae.encode(images).latent_dist
        # Trained as a plain autoencoder on the posterior mean (sampling at the initial unit variance drowns the
        # signal for hundreds of steps); only the mean is ever used (dataset encoding, decoding). L1 keeps edges and
        # textures sharp; a tiny KL keeps the latent scale bounded.
        decoded = vae.decode(posterior.mean).sample
        loss = (decoded - images).abs().mean() + 1e-6 * posterior.kl().mean()
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 200 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} l1 {loss.item():.4f}")
    vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_dataset(pipe, counts: dict[int, int], rng: np.random.Generator, log):
    """Latents (VAE posterior means, FLUX-normalised) and text embeddings of fresh training scenes."""
    data = {}
    for size, count in counts.items():
        latents, prompts = [], []
        for start in range(0, count, 32):
            scenes = [sample_scene(rng) for _ in range(min(32, count - start))]
            latents.append(pipe.vae.encode(to_tensor([render(s, size) for s in scenes])).latent_dist.mean)
            prompts += [s.prompt for s in scenes]
        log(f"encoded {count} scenes at {size}px")
        data[size] = (torch.cat(latents), prompts)
    return data


@torch.no_grad()
def embed_prompts(pipe, prompts: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    unique = sorted(set(prompts))
    table = {}
    for start in range(0, len(unique), 256):
        chunk = unique[start:start + 256]
        embeds, pooled, _ = pipe.encode_prompt(chunk, prompt_2=None, max_sequence_length=TEXT_TOKENS)
        for prompt, e, p in zip(chunk, embeds, pooled):
            table[prompt] = (e, p)
    return table


def train_transformer(pipe, data, embeddings, steps: int, seed: int, log) -> dict[str, torch.Tensor]:
    from diffusers import FluxPipeline

    transformer = pipe.transformer
    transformer.train()
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=6e-4, weight_decay=0.01, betas=(0.9, 0.99))
    ema = {name: p.detach().clone() for name, p in transformer.named_parameters()}
    generator = torch.Generator().manual_seed(seed)
    scale, shift = pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor
    txt_ids = torch.zeros(TEXT_TOKENS, 3)
    for step in range(steps):
        size, batch = RESOLUTION_CYCLE[step % len(RESOLUTION_CYCLE)]
        latents, prompts = data[size]
        index = torch.randint(len(prompts), (batch,), generator=generator)
        x0 = (latents[index] - shift) * scale
        _, channels, height, width = x0.shape
        x0 = FluxPipeline._pack_latents(x0, batch, channels, height, width)
        tokens = x0.shape[1]
        # Logit-normal times, shifted towards noise with FLUX's token-count rule (the pipeline samples the same way).
        mu = flux_mu(tokens, SCHEDULER["base_image_seq_len"], SCHEDULER["max_image_seq_len"],
                     SCHEDULER["base_shift"], SCHEDULER["max_shift"])
        u = torch.sigmoid(torch.randn(batch, generator=generator))
        sigma = math.exp(mu) * u / (1 + (math.exp(mu) - 1) * u)
        noise = torch.randn(x0.shape, generator=generator)
        noisy = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        embeds = torch.stack([embeddings[prompts[i]][0] for i in index])
        pooled = torch.stack([embeddings[prompts[i]][1] for i in index])
        image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, "cpu", torch.float32)
        prediction = transformer(hidden_states=noisy, encoder_hidden_states=embeds, pooled_projections=pooled,
                                 timestep=sigma, img_ids=image_ids, txt_ids=txt_ids, return_dict=False)[0]
        loss = (prediction - (noise - x0)).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        lr = 6e-4 * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        decay = min(0.999, (step + 1) / (step + 10))
        with torch.no_grad():
            for name, p in transformer.named_parameters():
                ema[name].lerp_(p.detach(), 1 - decay)
        if step % 100 == 0 or step == steps - 1:
            log(f"transformer step {step}/{steps} {size}px loss {loss.item():.4f} lr {lr:.2e}")
    transformer.eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            p.copy_(ema[name])
    return ema


@torch.no_grad()
def adherence_report(pipe, rng: np.random.Generator, prompts_per_split: int, log) -> dict:
    """Checker accuracy on ground-truth renders, on their VAE round trip, and on the model's 50-step samples."""
    report = {}
    for split, held_out in (("train", False), ("held_out", True)):
        scenes = [sample_scene(rng, held_out=held_out) for _ in range(prompts_per_split)]
        prompts = [s.prompt for s in scenes]
        truth = [render(s, 128) for s in scenes]
        roundtrip = pipe.vae.decode(pipe.vae.encode(to_tensor(truth)).latent_dist.mean).sample
        roundtrip = ((roundtrip.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        images = []
        for start in range(0, len(prompts), 16):
            chunk = prompts[start:start + 16]
            out = pipe(chunk, height=128, width=128, num_inference_steps=50, max_sequence_length=TEXT_TOKENS,
                       generator=[torch.Generator().manual_seed(1000 + start + i) for i in range(len(chunk))],
                       output_type="np")
            images.extend(out.images)
        for name, pictures in (("ground_truth", truth), ("vae_roundtrip", roundtrip), ("generated", images)):
            checks = [check_adherence(p, prompt) for p, prompt in zip(pictures, prompts)]
            report[f"{split}/{name}"] = float(np.mean([c.passed(parse_prompt(q)) for c, q in zip(checks, prompts)]))
            log(f"adherence {split}/{name}: {report[f'{split}/{name}']:.3f} over {len(prompts)} prompts")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--transformer-steps", type=int, default=2600)
    parser.add_argument("--scenes", type=int, nargs=3, default=(12000, 4000, 8000), metavar=("AT64", "AT96", "AT128"))
    parser.add_argument("--report-prompts", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.set_num_threads(args.threads)
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:7.0f}s] {message}", flush=True)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    clip_tokenizer, t5_tokenizer = build_tokenizers()
    clip, t5 = build_text_encoders(clip_tokenizer, t5_tokenizer)
    vae = AutoencoderKL(**VAE)
    transformer = FluxTransformer2DModel(**TRANSFORMER)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae, text_encoder=clip,
                        tokenizer=clip_tokenizer, text_encoder_2=t5, tokenizer_2=t5_tokenizer, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)

    train_vae(vae, args.vae_steps, rng, log)
    with torch.no_grad():  # a cheap early read of the VAE: does the checker still read its round trips?
        scenes = [sample_scene(rng) for _ in range(32)]
        decoded = vae.decode(vae.encode(to_tensor([render(s, 128) for s in scenes])).latent_dist.mean).sample
        pictures = ((decoded.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        passed = np.mean([check_adherence(p, s.prompt).passed(parse_prompt(s.prompt)) for p, s in zip(pictures, scenes)])
        log(f"vae round trip: checker passes {passed:.3f} of 32 scenes")
    counts = dict(zip((64, 96, 128), args.scenes))
    raw = encode_dataset(pipe, {128: min(2000, counts[128])}, rng, log)[128][0]
    # FLUX normalises latents as (z - shift) * scale; measured on the data so the model sees unit variance.
    vae.register_to_config(shift_factor=float(raw.mean()), scaling_factor=float(1.0 / raw.std()))
    log(f"vae shift_factor {vae.config.shift_factor:.4f} scaling_factor {vae.config.scaling_factor:.4f}")
    data = encode_dataset(pipe, counts, rng, log)
    embeddings = embed_prompts(pipe, [p for _, prompts in data.values() for p in prompts])
    log(f"{len(embeddings)} distinct training prompts embedded")
    train_transformer(pipe, data, embeddings, args.transformer_steps, args.seed, log)

    args.output.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(args.output, safe_serialization=True)
    trained = FluxPipeline.from_pretrained(args.output)
    trained.set_progress_bar_config(disable=True)
    report = adherence_report(trained, rng, args.report_prompts, log)
    report.update(seed=args.seed, vae_steps=args.vae_steps, transformer_steps=args.transformer_steps,
                  scenes=counts, minutes=round((time.time() - started) / 60, 1), torch=torch.__version__)
    (args.output / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"saved to {args.output}")


if __name__ == "__main__":
    main()
