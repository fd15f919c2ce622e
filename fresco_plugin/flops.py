"""Transformer FLOPs of a Fresco plan against the full-resolution baseline, priced on the real architectures.

A forward's FLOPs depend only on how many image and text tokens it sees (positions and coarse/fine mixtures change no
matrix shape), and for these transformers they are an exact polynomial of degree 2 in the two counts (torch's FLOP
counter, 2 FLOPs per multiply-add, matrix products and attention). Each named model's coefficients are stored in
``fresco_plugin/model_configs/forward_flops.json``, derived from its public config by tracing the architecture
(:mod:`fresco_plugin.tools.flops_trace`, which a test holds them to), so pricing a plan is arithmetic: no diffusers,
no model. A plan is summed step by step from its token counts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from .config import FrescoConfig
from .schedule import grid_tokens, plan_stages, plan_token_counts

__all__ = ["FORWARD_FLOPS_FILE", "ModelSpec", "MODELS", "FlopsReport", "count_plan_flops", "forward_flops",
           "model_spec"]

FORWARD_FLOPS_FILE = "model_configs/forward_flops.json"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "flux" | "flux2" | "qwen-image" | "z-image" | "hunyuan-video" | "hunyuan-video15" | "wan"
    text_tokens: int  # the pipeline's default max_sequence_length
    classifier_free_guidance: bool  # True: two forwards per step unless guidance_scale <= 1
    baseline: str  # the model whose 50-step full-resolution run is the reference
    default_size: tuple[int, int, int]  # height, width, frames
    default_steps: int = 50
    # Kontext: every forward also carries the reference image's tokens (priced at the output's size, what a same-size
    # edit gives), for Fresco and the baseline alike
    reference_image: bool = False
    # the guidance scale at or below which a CFG model runs one branch (Z-Image guides at any scale above 0)
    guidance_off_at: float = 1.0
    # the transformer pads its image and text sequences to a multiple of this (Z-Image: 32), and computes the pads
    sequence_multiple: int = 1
    # a checkpoint that runs another's transformer (a distilled one): priced with that model's config and forward costs
    architecture: str | None = None
    # the guidance scale the checkpoint is run at when the caller gives none (None: the pipeline's default, guidance on)
    default_guidance_scale: float | None = None

    @property
    def priced_as(self) -> str:
        """The model whose transformer config and stored forward costs price this one."""
        return self.architecture or self.name

    def forwards_per_step(self, guidance_scale: float | None, true_cfg_scale: float) -> int:
        """Guidance-distilled models embed guidance (one forward); true CFG or a CFG model with scale > 1 needs two."""
        scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        cfg = self.classifier_free_guidance and (scale is None or scale > self.guidance_off_at)
        return 2 if cfg or true_cfg_scale > 1.0 else 1

    @property
    def video(self) -> bool:
        return self.family in ("hunyuan-video", "hunyuan-video15", "wan")

    def token_grid(self, height: int, width: int, frames: int) -> tuple[int, int, int]:
        """(latent frames, token rows, token cols): VAE 8x spatial (4x temporal for video), 2x2 patches."""
        if self.video:
            if (frames - 1) % 4:
                raise ValueError(f"frames={frames}: video models need 4k + 1 frames (for example 125 or 129)")
            return (frames - 1) // 4 + 1, height // 16, width // 16
        if height % 16 or width % 16:
            raise ValueError(f"height={height}, width={width}: FLUX needs multiples of 16")
        return 1, height // 16, width // 16

    def config(self) -> dict[str, Any]:
        text = resources.files("fresco_plugin").joinpath(f"model_configs/{self.priced_as}.json").read_text()
        return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


MODELS: dict[str, ModelSpec] = {
    "flux-dev": ModelSpec("flux-dev", "flux", 512, False, "flux-dev", (1024, 1024, 1)),
    # schnell is measured against FLUX.1-dev at 50 steps, the paper's comparison for its 22x figure
    "flux-schnell": ModelSpec("flux-schnell", "flux", 512, False, "flux-dev", (1024, 1024, 1), default_steps=4),
    # FLUX.1-Kontext-dev: FLUX.1-dev's architecture, 28 steps by default, plus the reference tokens
    "flux-kontext": ModelSpec("flux-kontext", "flux", 512, False, "flux-kontext", (1024, 1024, 1), default_steps=28,
                              reference_image=True),
    # FLUX.2-dev (32B): guidance-distilled like FLUX.1-dev (one forward per step), Mistral-3 text of 512 tokens
    "flux2-dev": ModelSpec("flux2-dev", "flux2", 512, False, "flux2-dev", (1024, 1024, 1)),
    # FLUX.2 [klein] 4B and 9B: the pipeline's defaults (50 steps, true CFG at guidance_scale 4 against an empty
    # prompt: two forwards a step; 512 Qwen3 tokens); the step-distilled checkpoints run one forward a step at any
    # scale, priced with --guidance-scale 1 (and their 4 steps)
    "flux2-klein-4b": ModelSpec("flux2-klein-4b", "flux2", 512, True, "flux2-klein-4b", (1024, 1024, 1)),
    "flux2-klein-9b": ModelSpec("flux2-klein-9b", "flux2", 512, True, "flux2-klein-9b", (1024, 1024, 1)),
    # Qwen-Image (20B): true CFG by default (true_cfg_scale 4 with a negative prompt), so two forwards per step
    "qwen-image": ModelSpec("qwen-image", "qwen-image", 512, True, "qwen-image", (1024, 1024, 1)),
    # Z-Image (6B, the base model; Turbo is the same architecture): CFG by default (guidance_scale 5), one forward
    # holding both branches, so two forwards' FLOPs; image and caption each padded to a multiple of 32 tokens
    "z-image": ModelSpec("z-image", "z-image", 512, True, "z-image", (1024, 1024, 1), guidance_off_at=0.0,
                         sequence_multiple=32),
    "hunyuan-video": ModelSpec("hunyuan-video", "hunyuan-video", 256, False, "hunyuan-video", (720, 1280, 125)),
    # HunyuanVideo-1.5 (8.3B, the 480p text-to-video checkpoint): classifier-free guidance (scale 6) as two forwards;
    # 1000 Qwen tokens plus the fixed glyph and image streams in every forward; 16x VAE with 1x1 patches (16 pixels
    # a token, as above); 848x480, what the pipeline picks for this checkpoint's target size without height/width
    "hunyuan-video15": ModelSpec("hunyuan-video15", "hunyuan-video15", 1000, True, "hunyuan-video15",
                                 (480, 848, 121)),
    "wan2.1-t2v-14b": ModelSpec("wan2.1-t2v-14b", "wan", 512, True, "wan2.1-t2v-14b", (720, 1280, 81)),
    # two 14B experts split at a timestep, one per step: a forward costs what Wan2.1-14B's does; 40 steps by default
    "wan2.2-t2v-a14b": ModelSpec("wan2.2-t2v-a14b", "wan", 512, True, "wan2.2-t2v-a14b", (720, 1280, 81),
                                 default_steps=40),
    # Step-distilled checkpoints on the architectures above, each measured against its own run at its recommended
    # steps and guidance (docs/distilled.md has their sources): Z-Image-Turbo, 8 steps at guidance 0
    "z-image-turbo": ModelSpec("z-image-turbo", "z-image", 512, True, "z-image-turbo", (1024, 1024, 1),
                               default_steps=8, guidance_off_at=0.0, sequence_multiple=32, architecture="z-image",
                               default_guidance_scale=0.0),
    # the Qwen-Image-Lightning LoRAs: 8 steps (4 for the 4-step ones) at true_cfg_scale 1
    "qwen-image-lightning": ModelSpec("qwen-image-lightning", "qwen-image", 512, True, "qwen-image-lightning",
                                      (1024, 1024, 1), default_steps=8, architecture="qwen-image",
                                      default_guidance_scale=1.0),
    # FLUX.2 [klein] 4B and 9B (the distilled ones; the "base" ones are the entries above): 4 steps, and the pipeline
    # ignores the guidance scale (is_distilled), so one forward at any scale
    "flux2-klein-4b-distilled": ModelSpec("flux2-klein-4b-distilled", "flux2", 512, False, "flux2-klein-4b-distilled",
                                          (1024, 1024, 1), default_steps=4, architecture="flux2-klein-4b"),
    "flux2-klein-9b-distilled": ModelSpec("flux2-klein-9b-distilled", "flux2", 512, False, "flux2-klein-9b-distilled",
                                          (1024, 1024, 1), default_steps=4, architecture="flux2-klein-9b"),
    # HunyuanVideo-1.5's step-distilled 480p image-to-video checkpoint: 8 steps (12 also recommended) at guidance 1;
    # priced as the text-to-video transformer (the same blocks and streams; its mean-flow second time embedding is
    # a few small matrix products a forward, left out)
    "hunyuan-video15-i2v-distilled": ModelSpec("hunyuan-video15-i2v-distilled", "hunyuan-video15", 1000, True,
                                               "hunyuan-video15-i2v-distilled", (480, 848, 121), default_steps=8,
                                               architecture="hunyuan-video15", default_guidance_scale=1.0),
    # the Wan2.2-Lightning LoRA pair on Wan2.2-T2V-A14B's two experts: 4 steps at guidance 1 on both
    "wan2.2-lightning": ModelSpec("wan2.2-lightning", "wan", 512, True, "wan2.2-lightning", (720, 1280, 81),
                                  default_steps=4, architecture="wan2.2-t2v-a14b", default_guidance_scale=1.0),
}


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


@cache
def _stored_coefficients() -> dict[str, list[list[int]]]:
    text = resources.files("fresco_plugin").joinpath(FORWARD_FLOPS_FILE).read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def forward_flops(model: str, image_tokens: int, text_tokens: int | None = None) -> int:
    """FLOPs of one forward of ``model``'s transformer at these token counts (text: the pipeline's default)."""
    spec = model_spec(model)
    text = spec.text_tokens if text_tokens is None else text_tokens
    image_tokens, text = (-(-n // spec.sequence_multiple) * spec.sequence_multiple for n in (image_tokens, text))
    coefficients = _stored_coefficients()[spec.priced_as]
    return sum(c * image_tokens ** i * text ** j for i, row in enumerate(coefficients) for j, c in enumerate(row))


@dataclass
class StageFlops:
    stage: int
    scale: float
    steps: int
    tokens_per_step: list[int]
    flops: int


@dataclass
class FlopsReport:
    model: str
    height: int
    width: int
    frames: int
    text_tokens: int
    forwards_per_step: int
    stages: list[StageFlops]
    total_flops: int
    baseline_model: str
    baseline_steps: int
    baseline_tokens: int
    baseline_flops: int
    speedup: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        tera = 1e12
        lines = [
            f"{self.model} {self.height}x{self.width}" + (f"x{self.frames}f" if self.frames > 1 else "")
            + f", {self.text_tokens} text tokens, {self.forwards_per_step} forward(s) per step",
            f"{'stage':>5} {'scale':>6} {'steps':>5} {'image tokens per step':<32} {'TFLOPs':>10}",
        ]
        for s in self.stages:
            tokens = ",".join(str(t) for t in sorted(set(s.tokens_per_step), key=s.tokens_per_step.index))
            lines.append(f"{s.stage:>5} {s.scale:>6.3g} {s.steps:>5} {tokens:<32} {s.flops / tera:>10.1f}")
        lines.append(f"{'Fresco total':<52} {self.total_flops / tera:>10.1f}")
        baseline = f"baseline: {self.baseline_model}, {self.baseline_steps} steps x {self.baseline_tokens} tokens"
        lines.append(f"{baseline:<52}"
                     f" {self.baseline_flops / tera:>10.1f}")
        lines.append(f"speedup (transformer FLOPs): {self.speedup:.2f}x")
        return "\n".join(lines)


def count_plan_flops(
    config: FrescoConfig | str,
    model: str = "flux-dev",
    *,
    height: int | None = None,
    width: int | None = None,
    frames: int | None = None,
    steps: int | None = None,
    baseline_steps: int = 50,
    text_tokens: int | None = None,
    guidance_scale: float | None = None,
    true_cfg_scale: float = 1.0,
) -> FlopsReport:
    """FLOPs of Fresco's plan for ``model`` and of that model's 50-step full-resolution baseline.

    Guidance settings decide the forwards per step, for Fresco and the baseline alike: ``true_cfg_scale > 1`` doubles
    them; a classifier-free-guidance model (Wan) runs two unless ``guidance_scale <= 1``. ``steps`` is the call's
    ``num_inference_steps`` for a config that follows them (its plan may run fewer: ``target_speedup``).
    """
    if isinstance(config, str):
        config = FrescoConfig.preset(config)
    spec = model_spec(model)
    h, w, f = spec.default_size
    height, width = height or h, width or w
    frames = frames or f if spec.video else 1
    latent_frames, rows, cols = spec.token_grid(height, width, frames)
    if not spec.video:
        coarsest = 1 << max(config.stage_levels)
        if rows % coarsest or cols % coarsest:
            raise ValueError(f"height={height}, width={width}: the token grid {rows}x{cols} has no whole 1/{coarsest} "
                             f"grid; use multiples of {16 * coarsest}")
    stages = plan_stages(config, steps if steps is not None or config.stage_steps else spec.default_steps,
                         min_score_history=1)
    counts = plan_token_counts(config, stages, rows, cols, latent_frames)
    full = grid_tokens(rows, cols, 0, latent_frames)
    reference = full if spec.reference_image else 0
    forwards = spec.forwards_per_step(guidance_scale, true_cfg_scale)
    text = spec.text_tokens if text_tokens is None else text_tokens
    stage_reports = []
    for stage in stages:
        tokens = counts[stage.first_step:stage.last_step]
        flops = forwards * sum(forward_flops(spec.name, n + reference, text) for n in tokens)
        stage_reports.append(StageFlops(stage.index, config.stage_scales[stage.index], stage.num_steps, tokens, flops))
    total = sum(s.flops for s in stage_reports)
    baseline = model_spec(spec.baseline)
    baseline_forwards = baseline.forwards_per_step(guidance_scale, true_cfg_scale)
    baseline_flops = baseline_steps * baseline_forwards * forward_flops(baseline.name, full + reference, text)
    return FlopsReport(
        model=spec.name, height=height, width=width, frames=frames, text_tokens=text,
        forwards_per_step=forwards, stages=stage_reports, total_flops=total, baseline_model=baseline.name,
        baseline_steps=baseline_steps, baseline_tokens=full, baseline_flops=baseline_flops,
        speedup=baseline_flops / total, config=_config_dict(config),
    )


def _config_dict(config: FrescoConfig) -> dict[str, Any]:
    return {name: (list(v) if isinstance(v, tuple) else v) for name, v in asdict(config).items()}
