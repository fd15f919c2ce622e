"""Distils the shipped scenes model into the two kinds of checkpoint FLUX users run.

    python training/distill_scenes_model.py dev        # about 50 minutes on 2 CPU cores
    python training/distill_scenes_model.py schnell    # needs the dev student; about 50 minutes

- **dev** (``tools/models/scenes-flux-dev``): guidance-distilled, as FLUX.1-dev is. A ``FluxTransformer2DModel`` with
  ``guidance_embeds=True`` starts from the teacher's weights (its guidance embedder's last layer zeroed, so it begins
  as the teacher's conditional model) and learns to give, in one forward, the teacher's true-CFG velocity
  ``u + g (c - u)`` for a scale ``g`` drawn from [1, 5]. The pipeline's ``guidance_scale`` is that input, exactly as
  on FLUX.1-dev.
- **schnell** (``tools/models/scenes-flux-schnell``): step-distilled by rectified-flow *reflow* (InstaFlow's route).
  The dev student at guidance 3 maps seeded noise to pictures (16 Euler steps, at 128 and at 64 pixels); a
  ``guidance_embeds=False`` transformer, started from the teacher, is trained on the straight lines between each
  noise and its picture, so a few Euler steps follow them. Why reflow: on two CPU cores it costs one batch of
  inference plus plain flow-matching training, with no discriminator (adversarial post-training), no second model
  stepping alongside (consistency distillation) and no chain of halving rounds (progressive distillation). Its
  scheduler is FLUX.1-schnell's (no time shift) and it is sampled in 4 steps. ``--objective data-states`` trains it
  instead from training scenes noised to a random sigma towards where the dev student takes them (an experiment:
  BENCHMARKS.md, "A student trained on noisy data states"; the shipped student is reflow's).

Both are saved as whole diffusers folders (``FluxPipeline.from_pretrained`` loads them; the VAE, tokenizers and text
encoders are the teacher's, unchanged) with ``training_report.json`` beside them. Every draw comes from the seed and
the run is single-process fp32 with a fixed thread count, so a rerun reproduces the weights.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from train_scenes_model import (
    SCHEDULER,
    PromptTokens,
    checker_rates,
    cosine_lr,
    encode_dataset,
    encode_text,
    grid_positions,
    image_positions,
    run_environment,
    sample_scene,
)

from fresco_plugin.schedule import flux_mu
from fresco_plugin.tools.shipped_model import GUIDANCE_SCALE, MODEL_DIR, SIZE, TEXT_TOKENS, sketch_position_units_of

OUTPUTS = {"dev": MODEL_DIR.parent / "scenes-flux-dev", "schnell": MODEL_DIR.parent / "scenes-flux-schnell"}
GUIDANCE_RANGE = (1.0, 5.0)
SCHNELL_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)  # FLUX.1-schnell's
SCHNELL_STEPS = 4
PAIR_STEPS = 16  # Euler steps of the dev student that draw each reflow pair
UNUSED = {"dev": ("output", "teacher", "dev_student", "pairs", "objective"),  # not reported
          "schnell": ("output", "teacher", "dev_student", "scenes")}


def load(folder: Path, device: torch.device) -> FluxPipeline:
    pipe = FluxPipeline.from_pretrained(folder).to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.requires_grad_(False).eval()
    return pipe


def student_from(teacher: FluxTransformer2DModel, guidance: bool) -> FluxTransformer2DModel:
    """The teacher's weights in a transformer with or without a guidance embedder; a new embedder's last layer is
    zeroed so the student starts as the teacher's conditional model."""
    student = FluxTransformer2DModel(**{**dict(teacher.config), "guidance_embeds": guidance})
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("time_text_embed.guidance_embedder") for k in missing), missing
    if guidance:
        torch.nn.init.zeros_(student.time_text_embed.guidance_embedder.linear_2.weight)
        torch.nn.init.zeros_(student.time_text_embed.guidance_embedder.linear_2.bias)
    return student


def position_factor(size: int, sketch_positions: str) -> int:
    """How :func:`image_positions` spaces a ``size``-pixel picture's tokens for a teacher trained with
    ``--sketch-positions``: its 64-pixel tokens at the 128-pixel grid's coordinates (``final``) or the stock grid."""
    return SIZE // size if sketch_positions == "final" else 1


def training_sigmas(tokens: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """The teacher's training times: logit-normal, shifted towards noise by FLUX's token-count rule."""
    mu = flux_mu(tokens, SCHEDULER["base_image_seq_len"], SCHEDULER["max_image_seq_len"], SCHEDULER["base_shift"],
                 SCHEDULER["max_shift"])
    u = torch.sigmoid(torch.randn(batch, generator=generator))
    return math.exp(mu) * u / (1 + (math.exp(mu) - 1) * u)


class Trainer:
    """AdamW with a cosine schedule and an EMA copy that becomes the saved weights."""

    def __init__(self, model: torch.nn.Module, lr: float, steps: int, ema: float):
        self.model, self.lr, self.steps, self.decay = model.train().requires_grad_(True), lr, steps, ema
        self.parameters = list(model.parameters())
        self.optimizer = torch.optim.AdamW(self.parameters, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
        self.ema = [p.detach().clone() for p in self.parameters]

    def step(self, step: int, loss: torch.Tensor) -> float:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        lr = cosine_lr(self.lr, step, self.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        decay = min(self.decay, (step + 1) / (step + 10))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.parameters], 1 - decay)
        return lr

    def finish(self) -> torch.nn.Module:
        with torch.no_grad():
            for p, average in zip(self.parameters, self.ema):
                p.copy_(average)
        return self.model.eval().requires_grad_(False)


def packed(latents: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = latents.shape
    return FluxPipeline._pack_latents(latents, batch, channels, height, width)


def distil_guidance(teacher: FluxPipeline, args, device: torch.device, log) -> FluxTransformer2DModel:
    rng = np.random.default_rng(args.seed)
    raw, prompts, _ = encode_dataset(teacher.vae, args.scenes, rng, device, log)
    latents = {size: (z - teacher.vae.config.shift_factor) * teacher.vae.config.scaling_factor
               for size, z in raw.items()}
    tokens = PromptTokens(teacher.tokenizer, teacher.tokenizer_2, prompts)
    prompt_ids = torch.tensor([tokens.index[p] for p in prompts])
    student = student_from(teacher.transformer, guidance=True).to(device)
    trainer = Trainer(student, args.lr, args.steps, args.ema)
    generator = torch.Generator().manual_seed(args.seed)
    txt_ids = torch.zeros(TEXT_TOKENS, 3, device=device)
    cycle = [(SIZE, args.batch), (SIZE // 2, args.batch * 2)]  # both sizes: a Fresco sketch runs at 64 pixels
    for step in range(args.steps):
        size, batch = cycle[step % len(cycle)]
        index = torch.randint(len(prompt_ids), (batch,), generator=generator)
        x0 = packed(latents[size][index].to(device))
        sigma = training_sigmas(x0.shape[1], batch, generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        noisy = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        scale = GUIDANCE_RANGE[0] + (GUIDANCE_RANGE[1] - GUIDANCE_RANGE[0]) * torch.rand(batch, generator=generator)
        scale = scale.to(device)
        image_ids = image_positions(size // 8, size // 8, position_factor(size, args.sketch_positions), device)
        with torch.no_grad():
            ids = torch.cat([prompt_ids[index], torch.zeros_like(prompt_ids[index])])
            embeds, pooled = encode_text(teacher, tokens.clip[ids].to(device), tokens.t5[ids].to(device))
            both = teacher.transformer(hidden_states=noisy.repeat(2, 1, 1), encoder_hidden_states=embeds,
                                       pooled_projections=pooled, timestep=sigma.repeat(2), img_ids=image_ids,
                                       txt_ids=txt_ids, return_dict=False)[0]
            conditional, unconditional = both.chunk(2)
            target = unconditional + scale[:, None, None] * (conditional - unconditional)
        prediction = student(hidden_states=noisy, encoder_hidden_states=embeds[:batch],
                             pooled_projections=pooled[:batch], timestep=sigma, guidance=scale, img_ids=image_ids,
                             txt_ids=txt_ids, return_dict=False)[0]
        loss = (prediction - target).pow(2).mean()
        lr = trainer.step(step, loss)
        if step % 100 == 0 or step == args.steps - 1:
            log(f"guidance step {step}/{args.steps} {size}px loss {loss.item():.5f} lr {lr:.2e}")
    return trainer.finish()


@torch.no_grad()
def reflow_pairs(dev: FluxPipeline, count: int, size: int, rng: np.random.Generator, seed: int, device, log,
                 factor: int = 1):
    """(noise, picture latents, prompt) triples: the dev student's guided samples from seeded noise."""
    noises, pictures, prompts = [], [], []
    for start in range(0, count, 64):
        chunk = [sample_scene(rng).prompt for _ in range(min(64, count - start))]
        generator = torch.Generator().manual_seed(seed + start)
        latents = dev.prepare_latents(len(chunk), dev.transformer.config.in_channels // 4, size, size, torch.float32,
                                      device, generator)[0]
        with grid_positions(dev, factor):
            out = dev(chunk, height=size, width=size, num_inference_steps=PAIR_STEPS, guidance_scale=GUIDANCE_SCALE,
                      max_sequence_length=TEXT_TOKENS, latents=latents.clone(), output_type="latent").images
        noises.append(latents.cpu())
        pictures.append(out.cpu())
        prompts += chunk
        if start % 1024 == 0:
            log(f"reflow pairs at {size}px: {start}/{count}")
    return torch.cat(noises), torch.cat(pictures), prompts


@torch.no_grad()
def data_state_pairs(dev: FluxPipeline, count: int, size: int, rng: np.random.Generator, seed: int, device, log,
                     factor: int = 1):
    """(start, end, top sigma, prompt): a training scene's latents noised to a sigma ``s`` (a quarter at 1, the rest
    uniform in [0.05, 1]), and where ``PAIR_STEPS`` guided Euler steps of the dev student, evenly spaced from ``s`` to
    0, take that state. ``start`` is the line through the two extended back to sigma 1, so the reflow loss trains the
    student on the segment from the state to the picture."""
    raw, prompts, _ = encode_dataset(dev.vae, count, rng, device, log)
    latents = (raw[size] - dev.vae.config.shift_factor) * dev.vae.config.scaling_factor
    tokens = PromptTokens(dev.tokenizer, dev.tokenizer_2, prompts)
    generator = torch.Generator().manual_seed(seed)
    txt_ids = torch.zeros(TEXT_TOKENS, 3, device=device)
    image_ids = image_positions(size // 8, size // 8, factor, device)
    starts, ends, tops = [], [], []
    for first in range(0, count, 64):
        x0 = packed(latents[first:first + 64]).to(device)
        batch = x0.shape[0]
        top = torch.where(torch.rand(batch, generator=generator) < 0.25, torch.ones(batch),
                          0.05 + 0.95 * torch.rand(batch, generator=generator)).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        state = (1 - top[:, None, None]) * x0 + top[:, None, None] * noise
        ids = torch.tensor([tokens.index[p] for p in prompts[first:first + batch]])
        embeds, pooled = encode_text(dev, tokens.clip[ids].to(device), tokens.t5[ids].to(device))
        guidance = torch.full((batch,), GUIDANCE_SCALE, device=device)
        latent = state
        for index in range(PAIR_STEPS):  # each sample's own sigmas, evenly from its top to 0
            sigma, following = top * (1 - index / PAIR_STEPS), top * (1 - (index + 1) / PAIR_STEPS)
            velocity = dev.transformer(hidden_states=latent, encoder_hidden_states=embeds, pooled_projections=pooled,
                                       timestep=sigma, guidance=guidance, img_ids=image_ids, txt_ids=txt_ids,
                                       return_dict=False)[0]
            latent = latent + (following - sigma)[:, None, None] * velocity
        starts.append((latent + (state - latent) / top[:, None, None]).cpu())
        ends.append(latent.cpu())
        tops.append(top.cpu())
        if first % 1024 == 0:
            log(f"data-state pairs at {size}px: {first}/{count}")
    return torch.cat(starts), torch.cat(ends), torch.cat(tops), prompts


def distil_steps(teacher: FluxPipeline, dev: FluxPipeline, args, device: torch.device, log) -> FluxTransformer2DModel:
    rng = np.random.default_rng(args.seed)
    if args.objective == "reflow":
        pairs = {size: reflow_pairs(dev, count, size, rng, args.seed * 1000 + size * 100000, device, log,
                                    position_factor(size, args.sketch_positions))
                 for size, count in ((SIZE, args.pairs), (SIZE // 2, args.pairs))}
        pairs = {size: (noise, x0, torch.ones(len(x0)), prompts) for size, (noise, x0, prompts) in pairs.items()}
    else:
        pairs = {size: data_state_pairs(dev, count, size, rng, args.seed * 1000 + size * 100000, device, log,
                                        position_factor(size, args.sketch_positions))
                 for size, count in ((SIZE, args.pairs), (SIZE // 2, args.pairs))}
    tokens = PromptTokens(teacher.tokenizer, teacher.tokenizer_2, pairs[SIZE][3] + pairs[SIZE // 2][3])
    prompt_ids = {size: torch.tensor([tokens.index[p] for p in pair[3]]) for size, pair in pairs.items()}
    student = student_from(teacher.transformer, guidance=False).to(device)
    trainer = Trainer(student, args.lr, args.steps, args.ema)
    generator = torch.Generator().manual_seed(args.seed)
    txt_ids = torch.zeros(TEXT_TOKENS, 3, device=device)
    cycle = [(SIZE, args.batch), (SIZE // 2, args.batch * 2)]
    for step in range(args.steps):
        size, batch = cycle[step % len(cycle)]
        noises, pictures, tops, _ = pairs[size]
        index = torch.randint(len(noises), (batch,), generator=generator)
        noise, x0 = noises[index].to(device), pictures[index].to(device)
        # Uniform times over the straight line up to the pair's top sigma (1 for reflow), plus a share at the top:
        # the first of few steps starts there.
        sigma = torch.rand(batch, generator=generator)
        sigma = torch.where(torch.rand(batch, generator=generator) < 0.1, torch.ones_like(sigma), sigma)
        sigma = (sigma * tops[index]).to(device)
        noisy = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        with torch.no_grad():
            embeds, pooled = encode_text(teacher, tokens.clip[prompt_ids[size][index]].to(device),
                                         tokens.t5[prompt_ids[size][index]].to(device))
        image_ids = image_positions(size // 8, size // 8, position_factor(size, args.sketch_positions), device)
        prediction = student(hidden_states=noisy, encoder_hidden_states=embeds, pooled_projections=pooled,
                             timestep=sigma, img_ids=image_ids, txt_ids=txt_ids, return_dict=False)[0]
        loss = (prediction - (noise - x0)).pow(2).mean()
        lr = trainer.step(step, loss)
        if step % 100 == 0 or step == args.steps - 1:
            log(f"reflow step {step}/{args.steps} {size}px loss {loss.item():.5f} lr {lr:.2e}")
    return trainer.finish()


@torch.no_grad()
def report(pipe: FluxPipeline, variant: str, rng: np.random.Generator, prompts_per_split: int, log) -> dict:
    """Checker pass rates of the student's own samples at its usual settings, training and held-out prompts."""
    settings = dict(dev=dict(num_inference_steps=50, guidance_scale=GUIDANCE_SCALE),
                    schnell=dict(num_inference_steps=SCHNELL_STEPS, guidance_scale=0.0))[variant]
    rates = {}
    for split, held_out in (("train", False), ("held_out", True)):
        prompts = [sample_scene(rng, held_out=held_out).prompt for _ in range(prompts_per_split)]
        images = []
        for start in range(0, len(prompts), 32):
            chunk = prompts[start:start + 32]
            images += list(pipe(chunk, height=SIZE, width=SIZE, max_sequence_length=TEXT_TOKENS, output_type="np",
                                generator=[torch.Generator().manual_seed(1000 + start + i) for i in range(len(chunk))],
                                **settings).images)
        rates[split] = checker_rates(images, prompts)
        log(f"adherence {split}: " + " ".join(f"{k} {v:.3f}" for k, v in rates[split].items()))
    return dict(settings=settings, adherence=rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=tuple(OUTPUTS))
    parser.add_argument("--output", type=Path, help="default: tools/models/scenes-flux-<variant>")
    parser.add_argument("--teacher", type=Path, default=MODEL_DIR,
                        help="the scenes model to distil (default: the shipped one, %(default)s)")
    parser.add_argument("--dev-student", type=Path, default=OUTPUTS["dev"],
                        help="schnell: the dev student whose samples it learns (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="training steps (default: dev 2000, schnell 2500)")
    parser.add_argument("--scenes", type=int, default=8000, help="dev: training scenes encoded at 128 and 64 pixels")
    parser.add_argument("--pairs", type=int, default=2048, help="schnell: reflow pairs at each size")
    parser.add_argument("--objective", choices=("reflow", "data-states"), default="reflow",
                        help="schnell: reflow (the shipped student: straight lines from seeded noise to the dev "
                        "student's pictures) or data-states (from training scenes noised to a random sigma to where "
                        "the dev student takes them)")
    parser.add_argument("--batch", type=int, default=16, help="batch at 128 pixels (twice this at 64)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--report-prompts", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    args.steps = args.steps or dict(dev=2000, schnell=2500)[args.variant]
    args.sketch_positions = sketch_position_units_of(args.teacher)  # reported, so tools sample students alike
    output = args.output or OUTPUTS[args.variant]

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:7.0f}s] {message}", flush=True)

    teacher = load(args.teacher, device)
    if args.variant == "dev":
        transformer = distil_guidance(teacher, args, device, log)
        scheduler = teacher.scheduler
    else:
        if not (args.dev_student / "model_index.json").is_file():
            raise SystemExit(f"the schnell student is distilled from the dev student: train it first "
                             f"(`python training/distill_scenes_model.py dev`; {args.dev_student} is missing)")
        transformer = distil_steps(teacher, load(args.dev_student, device), args, device, log)
        scheduler = FlowMatchEulerDiscreteScheduler(**SCHNELL_SCHEDULER)
    student = FluxPipeline(scheduler=scheduler, vae=teacher.vae, text_encoder=teacher.text_encoder,
                           tokenizer=teacher.tokenizer, text_encoder_2=teacher.text_encoder_2,
                           tokenizer_2=teacher.tokenizer_2, transformer=transformer)
    output.mkdir(parents=True, exist_ok=True)
    student.to("cpu").save_pretrained(output, safe_serialization=True)
    saved = load(output, device)
    results = report(saved, args.variant, np.random.default_rng(args.seed + 1), args.report_prompts, log)
    results.update(variant=args.variant, seed=args.seed, minutes=round((time.time() - started) / 60, 1),
                   **run_environment(),
                   arguments={k: v for k, v in vars(args).items() if k not in UNUSED[args.variant]})
    (output / "training_report.json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"saved to {output}")


if __name__ == "__main__":
    main()
