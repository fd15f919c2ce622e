"""Transformer FLOPs of a Fresco plan against the full-resolution baseline, counted on the real architectures.

Each named model's transformer is built on the meta device from its public config (embedded in
``fresco_plugin/model_configs``; no weights, no memory) and one forward is traced with torch's FLOP counter
(``torch.utils.flop_counter``: 2 FLOPs per multiply-add, matrix products and attention). A forward's FLOPs depend only
on how many image tokens it sees (positions and coarse/fine mixtures change no matrix shape), so a plan is summed
step by step from its token counts. Requires diffusers (imported on first use).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import cache
from importlib import resources
from typing import Any

import torch

from .config import FrescoConfig
from .schedule import grid_tokens, plan_stages, plan_token_counts

__all__ = ["ModelSpec", "MODELS", "TransformerFlops", "FlopsReport", "ForwardRecorder", "ForwardRecord",
           "count_plan_flops", "flux_closed_form_flops"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "flux" | "hunyuan-video" | "wan"
    text_tokens: int  # the pipeline's default max_sequence_length
    classifier_free_guidance: bool  # True: two forwards per step unless guidance_scale <= 1
    baseline: str  # the model whose 50-step full-resolution run is the reference
    default_size: tuple[int, int, int]  # height, width, frames
    default_steps: int = 50

    def forwards_per_step(self, guidance_scale: float | None, true_cfg_scale: float) -> int:
        """Guidance-distilled models embed guidance (one forward); true CFG or a CFG model with scale > 1 needs two."""
        cfg = self.classifier_free_guidance and (guidance_scale is None or guidance_scale > 1.0)
        return 2 if cfg or true_cfg_scale > 1.0 else 1

    @property
    def video(self) -> bool:
        return self.family != "flux"

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
        text = resources.files("fresco_plugin").joinpath(f"model_configs/{self.name}.json").read_text()
        return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


MODELS: dict[str, ModelSpec] = {
    "flux-dev": ModelSpec("flux-dev", "flux", 512, False, "flux-dev", (1024, 1024, 1)),
    # schnell is measured against FLUX.1-dev at 50 steps, the paper's comparison for its 22x figure
    "flux-schnell": ModelSpec("flux-schnell", "flux", 512, False, "flux-dev", (1024, 1024, 1), default_steps=4),
    "hunyuan-video": ModelSpec("hunyuan-video", "hunyuan-video", 256, False, "hunyuan-video", (720, 1280, 125)),
    "wan2.1-t2v-14b": ModelSpec("wan2.1-t2v-14b", "wan", 512, True, "wan2.1-t2v-14b", (720, 1280, 81)),
}


def _model(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


_Quadratic = tuple[Fraction, Fraction, Fraction]


class TransformerFlops:
    """FLOPs of one forward of a transformer as a function of its image-token count.

    Every matrix product in these transformers is linear in the token count (projections, MLPs, cross-attention)
    or quadratic (joint self-attention), so the count is an exact quadratic in ``n``: it is traced at three sizes and
    interpolated with exact rational arithmetic (``trace`` gives a direct count for checking that).
    """

    _FIT_SIZES = (256, 512, 1024)

    def __init__(self, family: str, config: dict[str, Any], text_tokens: int):
        self.family, self.config, self.text_tokens = family, dict(config), text_tokens
        self._transformer = None
        self._coefficients: tuple[_Quadratic, dict[str, _Quadratic]] | None = None  # whole forward, per block

    @classmethod
    def for_model(cls, name: str, text_tokens: int | None = None) -> TransformerFlops:
        spec = _model(name)
        return _shared_counter(spec.name, spec.text_tokens if text_tokens is None else text_tokens)

    def __call__(self, image_tokens: int) -> int:
        return self._evaluate(self._fit()[0], image_tokens)

    def block(self, kind: str, image_tokens: int) -> int:
        """FLOPs of one block of the block list ``kind`` (e.g. ``"single_transformer_blocks"``) in one forward."""
        blocks = self._fit()[1]
        if kind not in blocks:
            raise ValueError(f"{self.family} has no block list {kind!r}; it has {', '.join(blocks)}")
        return self._evaluate(blocks[kind], image_tokens)

    def block_counts(self) -> dict[str, int]:
        """How many blocks each block list holds."""
        if self._transformer is None:
            self._transformer = self._build()
        return {name: len(child) for name, child in self._transformer.named_children()
                if isinstance(child, torch.nn.ModuleList)}

    def trace(self, image_tokens: int) -> int:
        """FLOPs of one forward at ``image_tokens``, traced with torch's FLOP counter on the meta device."""
        return self._trace_parts(image_tokens)[0]

    def _trace_parts(self, image_tokens: int) -> tuple[int, dict[str, int]]:
        """A forward's total and the FLOPs of the first block of each block list (all blocks of a list are alike)."""
        from torch.utils.flop_counter import FlopCounterMode

        if self._transformer is None:
            self._transformer = self._build()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            self._transformer(**self._inputs(image_tokens), return_dict=False)
        per_module = counter.get_flop_counts()
        root = type(self._transformer).__name__
        blocks = {kind: int(sum(per_module.get(f"{root}.{kind}.0", {}).values())) for kind in self.block_counts()}
        return int(counter.get_total_flops()), blocks

    def _fit(self):
        if self._coefficients is None:
            traces = [(n, *self._trace_parts(n)) for n in self._FIT_SIZES]
            self._coefficients = (
                _quadratic_through([(n, total) for n, total, _ in traces]),
                {kind: _quadratic_through([(n, blocks[kind]) for n, _, blocks in traces]) for kind in traces[0][2]},
            )
        return self._coefficients

    def _evaluate(self, coefficients: tuple[Fraction, Fraction, Fraction], image_tokens: int) -> int:
        c0, c1, c2 = coefficients
        value = c0 + c1 * image_tokens + c2 * image_tokens * image_tokens
        if value.denominator != 1:
            raise RuntimeError(f"the FLOP count of {self.family} is not a quadratic in the token count")
        return int(value)

    def _build(self):
        import diffusers

        classes = {"flux": diffusers.FluxTransformer2DModel, "hunyuan-video": diffusers.HunyuanVideoTransformer3DModel,
                   "wan": diffusers.WanTransformer3DModel}
        with torch.device("meta"):
            return classes[self.family](**self.config)

    def _inputs(self, n: int) -> dict[str, Any]:
        c, t = self.config, self.text_tokens
        with torch.device("meta"):
            if self.family == "flux":
                inputs = dict(
                    hidden_states=torch.empty(1, n, c["in_channels"]),
                    encoder_hidden_states=torch.empty(1, t, c["joint_attention_dim"]),
                    pooled_projections=torch.empty(1, c["pooled_projection_dim"]), timestep=torch.empty(1),
                    img_ids=torch.empty(n, 3), txt_ids=torch.empty(t, 3),
                )
                if c.get("guidance_embeds"):
                    inputs["guidance"] = torch.empty(1)
                return inputs
            # video models take a latent grid: a 1-frame, 1 x n token strip
            patch = c["patch_size"] if self.family == "hunyuan-video" else c["patch_size"][-1]
            hidden = torch.empty(1, c["in_channels"], 1, patch, patch * n)
            if self.family == "hunyuan-video":
                return dict(hidden_states=hidden, timestep=torch.empty(1),
                            encoder_hidden_states=torch.empty(1, t, c["text_embed_dim"]),
                            encoder_attention_mask=torch.ones(1, t, dtype=torch.long),
                            pooled_projections=torch.empty(1, c["pooled_projection_dim"]), guidance=torch.empty(1))
            return dict(hidden_states=hidden, timestep=torch.empty(1),
                        encoder_hidden_states=torch.empty(1, t, c["text_dim"]))


@dataclass
class ForwardRecord:
    """One transformer forward as it really ran."""

    batch: int
    image_tokens: int
    text_tokens: int
    blocks_run: dict[str, int]  # per block list, how many blocks computed (a feature cache may skip the others)


class ForwardRecorder:
    """Records every forward of a FLUX transformer while it is active: batch, token counts, and which blocks really
    computed. A feature cache (FirstBlockCache, TaylorSeer, ...) that reuses a block's output never calls that block's
    layers, so a block counts as run only when one of its own sub-modules is called. ``flops()`` then prices the run
    exactly with the per-block counts of :class:`TransformerFlops`::

        with ForwardRecorder(pipe.transformer) as recorder:
            pipe(prompt)
        print(recorder.flops())
    """

    def __init__(self, transformer: torch.nn.Module):
        if type(transformer).__name__ != "FluxTransformer2DModel":
            raise ValueError(f"ForwardRecorder reads FLUX transformers (tokens are hidden_states.shape[1]); got "
                             f"{type(transformer).__name__}")
        self.transformer = transformer
        self.records: list[ForwardRecord] = []
        self._handles: list[Any] = []
        self._computed: set[tuple[str, int]] = set()

    def __enter__(self) -> ForwardRecorder:
        self._handles.append(self.transformer.register_forward_pre_hook(self._on_forward, with_kwargs=True))
        for kind, blocks in self.transformer.named_children():
            if isinstance(blocks, torch.nn.ModuleList):
                for index, block in enumerate(blocks):
                    for layer in block.children():
                        self._handles.append(layer.register_forward_pre_hook(self._on_layer(kind, index)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        text = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[1]
        kinds = [name for name, child in module.named_children() if isinstance(child, torch.nn.ModuleList)]
        self.records.append(ForwardRecord(hidden.shape[0], hidden.shape[1], text.shape[1], dict.fromkeys(kinds, 0)))
        self._computed = set()

    def _on_layer(self, kind: str, index: int):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            if self.records and (kind, index) not in self._computed:
                self._computed.add((kind, index))
                self.records[-1].blocks_run[kind] += 1

        return hook

    def flops(self) -> int:
        """Transformer FLOPs of everything recorded, skipped blocks excluded."""
        return recorded_flops(self.records, {k: v for k, v in self.transformer.config.items() if not k.startswith("_")})

    def to_dict(self) -> dict[str, Any]:
        config = {k: v for k, v in self.transformer.config.items() if not k.startswith("_")}
        return {"family": "flux", "config": json.loads(json.dumps(config, default=list)),
                "forwards": [asdict(r) for r in self.records]}


def recorded_flops(records: list[ForwardRecord], config: dict[str, Any], family: str = "flux") -> int:
    """Prices recorded forwards: the full forward at each size, less the blocks that did not compute."""
    total = 0
    for record in records:
        counter = _counter_for(family, json.dumps(config, sort_keys=True, default=list), record.text_tokens)
        n = record.image_tokens
        skipped = sum((counter.block_counts()[kind] - run) * counter.block(kind, n)
                      for kind, run in record.blocks_run.items())
        total += record.batch * (counter(n) - skipped)
    return total


@cache
def _counter_for(family: str, config_json: str, text_tokens: int) -> TransformerFlops:
    return TransformerFlops(family, json.loads(config_json), text_tokens)


def _quadratic_through(points: list[tuple[int, int]]) -> tuple[Fraction, Fraction, Fraction]:
    """Exact coefficients (c0, c1, c2) of the quadratic through three points (Lagrange, in rationals)."""
    (x0, y0), (x1, y1), (x2, y2) = points
    c2 = Fraction(y0, (x0 - x1) * (x0 - x2)) + Fraction(y1, (x1 - x0) * (x1 - x2)) + Fraction(y2, (x2 - x0) * (x2 - x1))
    c1 = Fraction(y1 - y0, x1 - x0) - c2 * (x0 + x1)
    c0 = y0 - c1 * x0 - c2 * x0 * x0
    return c0, c1, c2


@cache
def _shared_counter(name: str, text_tokens: int) -> TransformerFlops:
    spec = _model(name)
    return TransformerFlops(spec.family, spec.config(), text_tokens)


def flux_closed_form_flops(config: dict[str, Any], image_tokens: int, text_tokens: int) -> int:
    """FLOPs of one FLUX transformer forward by hand (2 per multiply-add), for cross-checking the counter.

    Double block: q/k/v/out and the 4x MLP for both streams, ``24 S D^2``, attention ``4 S^2 D``, two adaLN
    projections ``24 D^2``. Single block: q/k/v, MLP in and the fused output ``24 S D^2``, attention ``4 S^2 D``,
    adaLN ``6 D^2``. Plus embedders and the output head. ``S`` = image + text tokens, ``D`` = model width.
    """
    d = config["num_attention_heads"] * config["attention_head_dim"]
    n, t = image_tokens, text_tokens
    s = n + t
    channels = config["in_channels"]
    blocks = config["num_layers"] * (24 * s * d * d + 4 * s * s * d + 24 * d * d)
    blocks += config["num_single_layers"] * (24 * s * d * d + 4 * s * s * d + 6 * d * d)
    conditioning = 2 * (256 * d + d * d) * (2 if config.get("guidance_embeds") else 1)
    conditioning += 2 * (config["pooled_projection_dim"] * d + d * d)
    embed = 2 * n * channels * d + 2 * t * config["joint_attention_dim"] * d
    head = 2 * d * 2 * d + 2 * n * d * channels * config["patch_size"] ** 2
    return blocks + conditioning + embed + head


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
    them; a classifier-free-guidance model (Wan) runs two unless ``guidance_scale <= 1``. ``steps`` is the Fresco step
    count when the config does not fix it.
    """
    if isinstance(config, str):
        config = FrescoConfig.preset(config)
    spec = _model(model)
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
    forwards = spec.forwards_per_step(guidance_scale, true_cfg_scale)
    counter = TransformerFlops.for_model(spec.name, text_tokens)
    stage_reports = []
    for stage in stages:
        tokens = counts[stage.first_step:stage.last_step]
        flops = forwards * sum(counter(n) for n in tokens)
        stage_reports.append(StageFlops(stage.index, config.stage_scales[stage.index], stage.num_steps, tokens, flops))
    total = sum(s.flops for s in stage_reports)
    baseline = _model(spec.baseline)
    full = grid_tokens(rows, cols, 0, latent_frames)
    baseline_forwards = baseline.forwards_per_step(guidance_scale, true_cfg_scale)
    base_counter = TransformerFlops.for_model(baseline.name, text_tokens)
    baseline_flops = baseline_steps * baseline_forwards * base_counter(full)
    return FlopsReport(
        model=spec.name, height=height, width=width, frames=frames, text_tokens=counter.text_tokens,
        forwards_per_step=forwards, stages=stage_reports, total_flops=total, baseline_model=baseline.name,
        baseline_steps=baseline_steps, baseline_tokens=full, baseline_flops=baseline_flops,
        speedup=baseline_flops / total, config=_config_dict(config),
    )


def _config_dict(config: FrescoConfig) -> dict[str, Any]:
    return {name: (list(v) if isinstance(v, tuple) else v) for name, v in asdict(config).items()}
