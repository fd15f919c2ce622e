"""FrescoConfig: the one object a user builds (or takes from a preset) to turn Fresco on."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

__all__ = ["FrescoConfig", "PRESETS", "PRESET_BASELINES"]

PromotionOrder = Literal["settled_first", "unsettled_first"]
Expansion = Literal["hadamard", "nearest", "dct", "bilinear"]
NoiseSource = Literal["generator", "hash"]
PositionMode = Literal["center", "anchor"]
PositionUnits = Literal["stage", "final"]
PromotionUnit = Literal["token", "tube"]
RestartSpacing = Literal["shifted", "own"]

# Bounds that keep planning linear and every sigma finite; far beyond any real use.
MAX_STAGES = 8
MAX_STEPS = 10_000
MAX_TOKEN_MULTIPLE = 1 << 16
SHIFT_RANGE = (1e-2, 1e3)
MAX_TARGET_SPEEDUP = 1e3


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"FrescoConfig.{name}={value!r}: give a number")
    if not math.isfinite(value):
        raise ValueError(f"FrescoConfig.{name}={value!r}: give a finite number")
    return float(value)


def _count(name: str, value: Any) -> int:
    number = _number(name, value)
    if not number.is_integer():
        raise ValueError(f"FrescoConfig.{name}={value!r}: give a whole number")
    return int(number)


def _sequence(name: str, value: Any, convert) -> tuple:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ValueError(f"FrescoConfig.{name}={value!r}: give one value per stage, as a tuple or list")
    values = tuple(value)
    if len(values) > MAX_STAGES:
        raise ValueError(f"FrescoConfig.{name} has {len(values)} entries; at most {MAX_STAGES} stages")
    return tuple(convert(name, v) for v in values)


def _numbers(name: str, value: Any, optional: bool = False) -> tuple[float, ...] | None:
    return None if optional and value is None else _sequence(name, value, _number)


def _optional_number(name: str, value: Any) -> float | None:
    return None if value is None else _number(name, value)


def _counts(name: str, value: Any, optional: bool = False) -> tuple[int, ...] | None:
    return None if optional and value is None else _sequence(name, value, _count)


@dataclass(frozen=True)
class FrescoConfig:
    """How a generation is split into resolution stages and how tokens move between them.

    Every field has a default; see the README's table for why each default is what it is.
    """

    stage_scales: tuple[float, ...] = (0.5, 1.0)
    """Resolution of each stage's base grid, coarse to fine, each double the previous, ending at 1.0. One
    half-resolution sketch stage is the paper's basic case: 4x fewer tokens, and the Hadamard expansion is 2x per
    axis, so each stage doubles the last."""
    stage_steps: tuple[int, ...] | None = None
    """Denoising steps per stage. ``None`` follows the call's ``num_inference_steps`` (by ``target_speedup``, or by
    ``stage_fractions`` when given), so a config respects the step count a call already passes; presets fix it
    (their budget is part of them)."""
    stage_fractions: tuple[float, ...] | None = None
    """Share of the call's steps per stage when ``stage_steps`` is None (only the ratios matter); ``None`` lets
    ``target_speedup`` plan the stages instead."""
    target_speedup: float | None = 3.0
    """With ``stage_steps`` and ``stage_fractions`` None: the plan for a call's N steps is the measured preset shape
    aimed at N/``target_speedup`` full-resolution steps' worth of image tokens: every stage before the last runs a
    3-step sketch (more if its promotion rounds need them), the last stage the most full-resolution steps that keep
    the image tokens of the whole plan within that budget (at least 1). In [1, 1000]; ``None`` splits N into equal
    shares. At 50 steps the default is the ``flux-dev-3x`` preset's plan, at 28 it is 3 + 8; with too few steps for
    the target the sketch shrinks and a warning says what runs. 3 was measured against 5 at 28 and 50 steps
    (BENCHMARKS.md, "The default"): level with fewer steps at equal FLOPs except unguided realism at 28 steps."""
    stage_shifts: tuple[float | None, ...] | None = None
    """Per-stage sigma shift, in [0.01, 1000]. ``None`` (the whole field or one stage's entry): the stage's own
    resolution decides (FLUX's ``mu`` from its token count, or the scheduler's static shift), as the pipeline would
    for a stock run at that resolution. The video presets below 4x run their sketch at 0.5 and their last stage at its
    own shift: on the shipped video model (static shift 3) that moved every 3x figure the right way on two prompt
    sets (unguided frame KID over fewer steps +3880 to +3189, still above 0; guided flicker +0.3 to +0.1;
    BENCHMARKS.md, "A lower sketch shift")."""
    promotion_rounds: int = 1
    """Rounds of partial promotion inside every stage but the last (0: whole stages only). One round per
    low-resolution stage is the smallest progressive plan (the paper promotes tokens before the whole latent); the
    video presets use 0, which had lower unguided KID and less flicker on the shipped video model (BENCHMARKS.md,
    "Video")."""
    promotion_ratio: float = 0.5
    """Share of the stage's base-level tokens promoted per round, in (0, 1]. 0.5 is the ``flux-dev-3x`` preset's,
    chosen by the preset sweep (BENCHMARKS.md; the 5x and 10x presets promote 0.1: differences within noise)."""
    promotion_threshold: float | None = None
    """If set, promote the tokens whose score passes this threshold instead of a fixed ratio. A threshold's scale
    depends on the model and makes the cost depend on the image; a ratio fixes the cost in advance."""
    promotion_order: PromotionOrder = "settled_first"
    """``settled_first`` promotes the lowest scores (converged tokens, the paper); ``unsettled_first`` the highest
    (AViTS' reading)."""
    promotion_unit: PromotionUnit = "token"
    """What a promotion round decides on in a video: ``token``, each token alone, or ``tube``, the tokens at one place
    in every frame together (on their mean score; the ratio then counts places), so where the resolution changes stays
    put from frame to frame. Pictures have one frame: both are the same."""
    score: str = "x0_step_variance"
    """Convergence score, by name in the score registry. ``x0_step_variance``: the variance of each token's
    predicted clean latent over recent steps (on the clean prediction, so the steady fall of the noise level does
    not dominate it); ``latent_step_variance`` the same on the noisy latent; ``channel_variance`` across channels."""
    score_window: int = 3
    """How many recent steps a step-variance score looks at (at least the score's own minimum, 2 for the step
    variances): enough for a variance, short enough for a 3-step sketch stage."""
    strategy: str = "fresco"
    """Transition rule, by name in the strategy registry: ``fresco`` (the method), ``fresh-noise`` (Bottleneck-style),
    ``ralu``, ``dct-rewind`` (SGLang), there for comparison."""
    strategy_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """Keyword arguments for the strategy: ``ralu`` takes ``noise_ratio`` (Z >= 2, default 2.0, Pyramid Flow's
    equivalent; RALU fits about 6.3); ``fresco`` takes ``renoise``, ``field`` (default: the coordinate-bound noise) or
    ``trajectory`` (back along each token's own velocity, the field's detail bands for new sub-tokens)."""
    expansion: Expansion = "hadamard"
    """How a promoted token becomes four: ``hadamard`` (variance- and field-consistent 1->4), ``nearest`` (copies
    the re-noised parent: the paper's interpolation ablation), ``dct`` (block-DCT interpolation of the signal),
    ``bilinear`` (the signal interpolated across token borders, each 2x2 group still averaging to its parent; the
    field noise as with ``hadamard``)."""
    noise_source: NoiseSource = "generator"
    """Where the coordinate-bound field comes from: ``generator``, the pipeline's own initial noise for your seed (so
    Fresco and the stock pipeline start from the same noise, and a one-stage plan is the stock result bit for bit), or
    ``hash``, a counter-based hash (device- and batch-independent noise)."""
    position_mode: PositionMode = "center"
    """Where a finer token sits in a mixed set: ``center`` of the area it covers (its four children average to their
    parent's position), or ``anchor``, its top-left corner (RALU's convention)."""
    position_units: PositionUnits = "stage"
    """The grid token positions are counted in: ``stage``, each stage's own (a sketch token sits on the integer grid a
    stock run at the sketch resolution uses: what FLUX, Wan and HunyuanVideo, trained at many sizes, expect), or
    ``final``, the full-resolution grid at every stage (a sketch token at the centre of the full-resolution tokens it
    covers), for a model whose low-resolution training batches used full-resolution coordinates
    (``training/train_scenes_model.py --sketch-positions final`` trains one)."""
    token_multiple: int = 1
    """Keep every step's image-token count a multiple of this (promotion counts round to fit), in [1, 65536].
    Context parallelism raises it to its degree by itself; set it to reproduce a parallel run's plan on one
    process."""
    restart_shift_scale: float = 2.0
    """Multiplies the sigma shift of every stage after the first, in [0.01, 100] (1: each stage's own shift, as its
    resolution or ``stage_shifts`` gives it). Above 1, a stage restarts at a higher noise level and stays higher, so
    it redraws the coarse stage's picture instead of inheriting its artefacts. The FLUX.1-dev presets use 2: on the
    scenes model it cut the realism cost against fewer steps at equal FLOPs at every budget, most at 10x (KID +24180
    to +3879 unguided), and kept the adherence gain (BENCHMARKS.md, "A higher restart")."""
    unguided_restart_shift_scale: float | None = None
    """``restart_shift_scale`` for a call that runs without guidance (no negative branch, no guidance embedded in the
    transformer), in [0.01, 100]; ``None``: the same as guided. The video presets use 3 (4 for ``wan2.1-10x``): on
    the shipped video model a higher restart cut the unguided frame-realism cost at every budget (most at 10x) but
    made guided clips flicker more, so it applies where guidance is off (BENCHMARKS.md, "Video")."""
    restart_spacing: RestartSpacing = "shifted"
    """How a stage restarted by a shift scale spaces its steps: ``shifted``, by the scaled shift (it starts higher and
    stays higher down to its last step), or ``own``, from the level the scaled shift starts it at down by the stage's
    own shift (it starts as high, then reaches the low noise levels, where texture forms, as a stock run does). The 5x
    video presets use ``own``: on the shipped video model, guided, it cut flicker at every budget (at 5x from +0.77 over
    fewer steps at equal FLOPs, beyond noise, to +0.33, inside it) but cost frame realism at 3x and, in the point
    estimate, at 10x; without guidance it was level at 5x. On the scenes model it cost realism at every budget (the
    retrained model: both regimes, each inside noise against the presets; the one before: unguided, KID +764 to
    +4537), so the picture presets keep ``shifted`` (BENCHMARKS.md, "Restart spacing")."""
    unguided_restart_spacing: RestartSpacing | None = None
    """``restart_spacing`` for a call without guidance (as ``unguided_restart_shift_scale`` decides it); ``None``: the
    same as guided. The video presets below 4x use ``own``: on the shipped video model it closed most of the unguided
    3x frame-realism gap to fewer steps at equal FLOPs (KID over them +2201 to +250, paired -1951 [-3861, -382]); at
    10x it was clearly worse (BENCHMARKS.md, "Restart spacing")."""

    def __post_init__(self) -> None:
        # Normalise what a user may reasonably pass (lists, numpy numbers, whole-number floats for counts) and
        # refuse anything else with the field named, before any range check reads it.
        object.__setattr__(self, "stage_scales", _numbers("stage_scales", self.stage_scales))
        object.__setattr__(self, "stage_steps", _counts("stage_steps", self.stage_steps, optional=True))
        object.__setattr__(self, "stage_fractions", _numbers("stage_fractions", self.stage_fractions, optional=True))
        if self.stage_shifts is not None:
            object.__setattr__(self, "stage_shifts", _sequence("stage_shifts", self.stage_shifts, _optional_number))
        if self.target_speedup is not None:
            object.__setattr__(self, "target_speedup", _number("target_speedup", self.target_speedup))
        object.__setattr__(self, "restart_shift_scale", _number("restart_shift_scale", self.restart_shift_scale))
        if self.unguided_restart_shift_scale is not None:
            object.__setattr__(self, "unguided_restart_shift_scale",
                               _number("unguided_restart_shift_scale", self.unguided_restart_shift_scale))
        for name in ("promotion_rounds", "token_multiple", "score_window"):
            object.__setattr__(self, name, _count(name, getattr(self, name)))
        object.__setattr__(self, "promotion_ratio", _number("promotion_ratio", self.promotion_ratio))
        if self.promotion_threshold is not None:
            object.__setattr__(self, "promotion_threshold", _number("promotion_threshold", self.promotion_threshold))
        for name in ("promotion_order", "promotion_unit", "score", "strategy", "expansion", "noise_source",
                     "position_mode", "position_units", "restart_spacing"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"FrescoConfig.{name}={getattr(self, name)!r}: give a name (a string)")
        if self.unguided_restart_spacing is not None and not isinstance(self.unguided_restart_spacing, str):
            raise ValueError(f"FrescoConfig.unguided_restart_spacing={self.unguided_restart_spacing!r}: give a name (a "
                             "string) or None")
        if not isinstance(self.strategy_options, Mapping) or not all(isinstance(k, str) for k in self.strategy_options):
            raise ValueError(f"FrescoConfig.strategy_options={self.strategy_options!r}: give a dict of keyword "
                             "arguments for the strategy, e.g. {'noise_ratio': 6.3} for 'ralu'")
        object.__setattr__(self, "strategy_options", dict(self.strategy_options))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        scales = self.stage_scales
        if not scales:
            raise ValueError("FrescoConfig.stage_scales is empty; give at least (1.0,)")
        if len(scales) > MAX_STAGES:
            raise ValueError(f"FrescoConfig.stage_scales has {len(scales)} stages; at most {MAX_STAGES} "
                             f"(scales down to 1/{2 ** (MAX_STAGES - 1)})")
        if scales[-1] != 1.0:
            raise ValueError(f"FrescoConfig.stage_scales must end at full resolution 1.0; got {scales}")
        for scale in scales:
            if scale <= 0 or scale > 1 or not math.log2(scale).is_integer():
                raise ValueError(
                    f"FrescoConfig.stage_scales holds {scale}; every scale must be 1, 1/2, 1/4, ... (a power of 1/2)"
                )
        for coarse, fine in zip(scales, scales[1:]):
            if fine != 2 * coarse:
                hint = "increasing" if fine <= coarse else f"doubling (insert {2 * coarse} after {coarse})"
                raise ValueError(
                    f"FrescoConfig.stage_scales={scales} must be {hint}: each stage doubles the resolution, since the "
                    "Hadamard expansion turns one token into 2x2"
                )
        n = len(scales)
        for name in ("stage_steps", "stage_fractions", "stage_shifts"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"FrescoConfig.{name} has {len(value)} entries for {n} stages; give one per stage")
        if self.stage_steps is not None and not all(1 <= s <= MAX_STEPS for s in self.stage_steps):
            raise ValueError(f"FrescoConfig.stage_steps={self.stage_steps}: every stage needs a whole number of "
                             f"steps in [1, {MAX_STEPS}]")
        if self.stage_fractions is not None and not all(0 < f <= 1e6 for f in self.stage_fractions):
            raise ValueError(f"FrescoConfig.stage_fractions={self.stage_fractions}: every share must be a finite "
                             "number in (0, 1e6] (only their ratios matter)")
        low, high = SHIFT_RANGE
        if self.stage_shifts is not None and not all(s is None or low <= s <= high for s in self.stage_shifts):
            raise ValueError(f"FrescoConfig.stage_shifts={self.stage_shifts}: every shift must be in [{low}, {high}] "
                             "(1 is no shift; FLUX's resolution shifts are 1.6-3.2, HunyuanVideo's 7-17)")
        if self.target_speedup is not None and not 1 <= self.target_speedup <= MAX_TARGET_SPEEDUP:
            raise ValueError(f"FrescoConfig.target_speedup={self.target_speedup}: give a factor in "
                             f"[1, {MAX_TARGET_SPEEDUP}] (3 for a third of the call's image tokens), or None to split "
                             "the steps into equal shares")
        for name in ("restart_shift_scale", "unguided_restart_shift_scale"):
            value = getattr(self, name)
            if value is not None and not 1e-2 <= value <= 1e2:
                raise ValueError(f"FrescoConfig.{name}={value}: give a finite factor in [0.01, 100] (1 keeps each "
                                 "stage's own shift)" + (", or None" if name.startswith("unguided") else ""))
        for name in ("restart_spacing", "unguided_restart_spacing"):
            value = getattr(self, name)
            if value not in ("shifted", "own") and not (value is None and name.startswith("unguided")):
                raise ValueError(f"FrescoConfig.{name}={value!r}; use 'shifted' (a restarted stage's steps follow its "
                                 "scaled shift) or 'own' (they start where the scaled shift starts and follow the "
                                 "stage's own shift)" + (", or None" if name.startswith("unguided") else ""))
        if not 0 <= self.promotion_rounds <= MAX_STEPS:
            raise ValueError(f"FrescoConfig.promotion_rounds={self.promotion_rounds}: use a whole number in "
                             f"[0, {MAX_STEPS}] (and fewer than the steps of each non-final stage)")
        if not 0 < self.promotion_ratio <= 1:
            raise ValueError(f"FrescoConfig.promotion_ratio={self.promotion_ratio} is outside (0, 1]")
        if self.promotion_order not in ("settled_first", "unsettled_first"):
            raise ValueError(
                f"FrescoConfig.promotion_order={self.promotion_order!r}; use 'settled_first' or 'unsettled_first'"
            )
        if self.promotion_unit not in ("token", "tube"):
            raise ValueError(f"FrescoConfig.promotion_unit={self.promotion_unit!r}; use 'token' (each token decides "
                             "alone) or 'tube' (a place decides for every frame of a video)")
        if not 1 <= self.token_multiple <= MAX_TOKEN_MULTIPLE:
            raise ValueError(f"FrescoConfig.token_multiple={self.token_multiple}: use a whole number in "
                             f"[1, {MAX_TOKEN_MULTIPLE}] (a context-parallel degree)")
        if self.expansion not in ("hadamard", "nearest", "dct", "bilinear"):
            raise ValueError(f"FrescoConfig.expansion={self.expansion!r}; use 'hadamard', 'nearest', 'dct' or "
                             "'bilinear'")
        if self.noise_source not in ("generator", "hash"):
            raise ValueError(f"FrescoConfig.noise_source={self.noise_source!r}; use 'generator' or 'hash'")
        if self.position_mode not in ("center", "anchor"):
            raise ValueError(f"FrescoConfig.position_mode={self.position_mode!r}; use 'center' or 'anchor'")
        if self.position_units not in ("stage", "final"):
            raise ValueError(f"FrescoConfig.position_units={self.position_units!r}; use 'stage' (each stage's own "
                             "grid, as stock runs at that size) or 'final' (the full-resolution grid throughout)")
        from .registry import get_score, get_strategy  # late: the registries import this module's neighbours

        history = int(getattr(get_score(self.score), "min_history", 1))
        if not history <= self.score_window <= MAX_STEPS:
            raise ValueError(f"FrescoConfig.score_window={self.score_window}: the score {self.score!r} needs at least "
                             f"{history} recorded step(s); use a whole number in [{history}, {MAX_STEPS}]")
        factory = get_strategy(self.strategy)
        try:
            factory(**self.strategy_options)
        except (TypeError, ValueError) as error:
            raise ValueError(f"FrescoConfig.strategy_options={self.strategy_options} do not fit the strategy "
                             f"{self.strategy!r}: {error}") from None

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> FrescoConfig:
        """A named preset, optionally with some fields overridden."""
        if name not in PRESETS:
            known = ", ".join(sorted(PRESETS))
            raise ValueError(f"unknown Fresco preset {name!r}; known presets: {known}")
        return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]

    @classmethod
    def for_speedup(cls, target: float, *, model: str = "flux-dev", height: int | None = None,
                    width: int | None = None, frames: int | None = None, steps_budget: int = 50) -> FrescoConfig:
        """The best measured plan that reaches a transformer-FLOPs ``target`` (5 for 5x) over ``model``'s
        ``steps_budget``-step full-resolution run at this size (``fresco flops`` counts it); ``ValueError`` with the
        reachable range when it cannot. The FLUX.1-dev presets are points of it."""
        from .speedup import plan_for_speedup

        return plan_for_speedup(target, model=model, height=height, width=width, frames=frames,
                                baseline_steps=steps_budget)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @property
    def num_stages(self) -> int:
        return len(self.stage_scales)

    @property
    def stage_levels(self) -> tuple[int, ...]:
        """Level of each stage's base grid: 0 is full resolution, 1 half, 2 quarter."""
        return tuple(int(round(-math.log2(s))) for s in self.stage_scales)


def _rule_plan(sketch_ratio: float, full_steps: int) -> FrescoConfig:
    """The measured preset shape: 3 half-resolution steps with one promotion round of ``sketch_ratio``, then
    ``full_steps`` at full resolution restarting at twice its own shift."""
    return FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(3, full_steps), promotion_ratio=sketch_ratio,
                        restart_shift_scale=2.0)


# video plans restart higher without guidance (FrescoConfig.unguided_restart_shift_scale): 3 times their shift, 8 from
# UNGUIDED_VIDEO_HIGH_RESTART_FROM x up (the shipped video model's unguided sweeps: at 3x, 4 cost realism against 3; at
# 5x the two were level; at 10x 4 had clearly better realism than 3 but flickered more than five plain steps, and 8
# is the lowest that brought flicker level with them on the sweep's prompts (at the edge of noise on the bench's),
# realism still level with theirs; 7.5 splits the measured budgets)
UNGUIDED_VIDEO_RESTART_SHIFT_SCALE = 3.0
UNGUIDED_VIDEO_HIGH_RESTART_SHIFT_SCALE = 8.0
UNGUIDED_VIDEO_HIGH_RESTART_FROM = 7.5
# below VIDEO_LOW_BUDGET_BELOW x a video sketch runs at shift 0.5 whatever the model's own (the shipped video model's
# 3x sweep, shifts 2 to 0.25: the lowest unguided KID at 1 and 0.5, the least guided flicker at 0.5; 5x was not swept;
# at 10x, unguided, shifts 1 and 0.5 left realism and flicker where the restart level put them). Restart spacing (the
# restart-spacing sweep, "own" against the presets): below 4x "own" without guidance only (unguided KID better, guided
# KID worse); from 4x to UNGUIDED_VIDEO_HIGH_RESTART_FROM in both regimes (guided flicker better, everything else
# level); at 10x none (unguided KID worse, guided KID worse in the point estimate)
VIDEO_LOW_SHIFT_SKETCH = 0.5
VIDEO_LOW_BUDGET_BELOW = 4.0


def _video_plan(full_steps: int, budget: float) -> FrescoConfig:
    """The video models' shape for a FLOPs speedup of about ``budget``: the rule's 3-step sketch without its
    promotion round (every token switches at the sketch's end), then ``full_steps`` at full resolution restarting at
    twice its own shift (3 or 8 times without guidance), with the sketch shift and restart spacing of the budget's
    band."""
    low, high = budget < VIDEO_LOW_BUDGET_BELOW, budget >= UNGUIDED_VIDEO_HIGH_RESTART_FROM
    return FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(3, full_steps), promotion_rounds=0,
                        stage_shifts=(VIDEO_LOW_SHIFT_SKETCH, None) if low else None, restart_shift_scale=2.0,
                        unguided_restart_shift_scale=(UNGUIDED_VIDEO_HIGH_RESTART_SHIFT_SCALE if high
                                                      else UNGUIDED_VIDEO_RESTART_SHIFT_SCALE),
                        restart_spacing="shifted" if low or high else "own",
                        unguided_restart_spacing="own" if low else None)


def _distilled_plan(steps: int) -> FrescoConfig:
    """A step-distilled checkpoint's plan: its own step count, the first half at half resolution (no promotion round:
    too few steps for the score), the rest at full resolution restarting at twice its own shift."""
    return FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(steps // 2, steps - steps // 2), promotion_rounds=0,
                        restart_shift_scale=2.0)


# Presets. Each meets its named transformer-FLOPs speedup against its PRESET_BASELINES entry as `fresco flops` counts
# it; tests/test_flops.py holds them to it.
# The FLUX.1-dev plans were chosen by `benchmarks/preset_sweep.py` on the shipped scenes model (BENCHMARKS.md,
# "Choosing the presets"): fidelity to the stock picture rose steadily as steps moved out of the half-resolution
# stage, so each plan keeps the shortest sketch that still has a promotion round (3 steps: the score needs 2 before
# it) and spends the rest of the budget at full resolution; the ratio is the measured best (differences within noise).
# The full-resolution stage restarts at twice its own shift (`benchmarks/unguided_sweep.py --set presets`: better
# realism at every budget in both regimes, adherence kept).
# flux-schnell-22x follows the paper's NFE (4). On the shipped model's step-distilled student the 22x plan fails
# realism: its one full-resolution step cannot draw the texture the sketch could not
# (BENCHMARKS.md, "The distilled students"); it is kept until a replacement is measured on a schnell-like model.
# hunyuan-video-5x followed the paper's NFE too (10 + 8 steps, a quarter promoted, restart at the stock shift) until
# the shipped video model measured it: it lost frame realism to fewer steps at equal FLOPs in both regimes, and the
# rule's plan did not (`benchmarks/video_plan_sweep.py --set 5x`, BENCHMARKS.md "Video").
# The video presets (HunyuanVideo, Wan, HunyuanVideo-1.5) drop the rule's promotion round (`_video_plan`): on the
# shipped video model the same plans without it had lower frame KID unguided and less flicker guided at every budget,
# paired on 64 prompts (`benchmarks/video_plan_sweep.py --set no-round`, BENCHMARKS.md "Video"). On the scenes model
# the round's removal pointed the same way within noise, so the picture presets keep the paper's round.
# The other models' presets are `FrescoConfig.for_speedup(target, model=..., steps_budget=...)` at each model's usual
# size and step count: the FLUX.1-dev rule carried over by FLOPs, not measured on those models. Kontext's reference
# tokens stay whole at every step, so a sketch saves less there.
# The step-distilled checkpoints' presets keep the checkpoint's own steps and sketch the first half
# (`_distilled_plan`), measured against the checkpoint at those steps. The shape is the one the shipped students
# measured least bad (BENCHMARKS.md, "Why the 22x plan fails"): one full-resolution step cannot draw the texture a
# sketch misses, two can on the guidance-distilled student, and the higher restart helped on both students; on the
# reflow student every such plan still lost realism to fewer plain steps. flux-schnell-19x is that 2 + 2 plan on
# FLUX.1-schnell (the paper's comparison, FLUX.1-dev at 50 steps). None is measured on the real checkpoints.
PRESETS: dict[str, FrescoConfig] = {
    "flux-dev-3x": _rule_plan(0.5, 15), "flux-dev-5x": _rule_plan(0.1, 9), "flux-dev-10x": _rule_plan(0.1, 4),
    "flux-schnell-22x": FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(3, 1), promotion_ratio=0.25,
                                     restart_shift_scale=1.0),
    "hunyuan-video-5x": _video_plan(9, 5),
    "flux-kontext-2x": _rule_plan(0.5, 12), "flux-kontext-3x": _rule_plan(0.5, 7),
    "flux2-dev-3x": _rule_plan(0.5, 15), "flux2-dev-5x": _rule_plan(0.1, 9), "flux2-dev-10x": _rule_plan(0.1, 4),
    "qwen-image-3x": _rule_plan(0.5, 15), "qwen-image-5x": _rule_plan(0.1, 9), "qwen-image-10x": _rule_plan(0.1, 4),
    "z-image-3x": _rule_plan(0.5, 15), "z-image-5x": _rule_plan(0.1, 9), "z-image-10x": _rule_plan(0.1, 4),
    "wan2.1-3x": _video_plan(16, 3), "wan2.1-5x": _video_plan(9, 5), "wan2.1-10x": _video_plan(4, 10),
    "wan2.2-3x": _video_plan(12, 3), "wan2.2-5x": _video_plan(7, 5),
    "hunyuan-video15-3x": _video_plan(16, 3), "hunyuan-video15-5x": _video_plan(9, 5),
    "flux-schnell-19x": _distilled_plan(4), "z-image-turbo-1.5x": _distilled_plan(8),
    "qwen-image-lightning-1.5x": _distilled_plan(8), "qwen-image-lightning-4step-1.5x": _distilled_plan(4),
    "flux2-klein-4b-distilled-1.5x": _distilled_plan(4), "flux2-klein-9b-distilled-1.5x": _distilled_plan(4),
    "wan2.2-lightning-1.75x": _distilled_plan(4), "hunyuan-video15-i2v-distilled-1.75x": _distilled_plan(8),
}

# What each preset's name is measured against: a `fresco flops` model (its architecture and usual size) and the stock
# step count of the full-resolution run (schnell: FLUX.1-dev's 50 steps, the paper's comparison).
PRESET_BASELINES: dict[str, tuple[str, int]] = {
    "flux-dev-3x": ("flux-dev", 50), "flux-dev-5x": ("flux-dev", 50), "flux-dev-10x": ("flux-dev", 50),
    "flux-schnell-22x": ("flux-schnell", 50), "hunyuan-video-5x": ("hunyuan-video", 50),
    "flux-kontext-2x": ("flux-kontext", 28), "flux-kontext-3x": ("flux-kontext", 28),
    "flux2-dev-3x": ("flux2-dev", 50), "flux2-dev-5x": ("flux2-dev", 50), "flux2-dev-10x": ("flux2-dev", 50),
    "qwen-image-3x": ("qwen-image", 50), "qwen-image-5x": ("qwen-image", 50), "qwen-image-10x": ("qwen-image", 50),
    "z-image-3x": ("z-image", 50), "z-image-5x": ("z-image", 50), "z-image-10x": ("z-image", 50),
    "wan2.1-3x": ("wan2.1-t2v-14b", 50), "wan2.1-5x": ("wan2.1-t2v-14b", 50), "wan2.1-10x": ("wan2.1-t2v-14b", 50),
    "wan2.2-3x": ("wan2.2-t2v-a14b", 40), "wan2.2-5x": ("wan2.2-t2v-a14b", 40),
    "hunyuan-video15-3x": ("hunyuan-video15", 50), "hunyuan-video15-5x": ("hunyuan-video15", 50),
    "flux-schnell-19x": ("flux-schnell", 50), "z-image-turbo-1.5x": ("z-image-turbo", 8),
    "qwen-image-lightning-1.5x": ("qwen-image-lightning", 8),
    "qwen-image-lightning-4step-1.5x": ("qwen-image-lightning", 4),
    "flux2-klein-4b-distilled-1.5x": ("flux2-klein-4b-distilled", 4),
    "flux2-klein-9b-distilled-1.5x": ("flux2-klein-9b-distilled", 4),
    "wan2.2-lightning-1.75x": ("wan2.2-lightning", 4),
    "hunyuan-video15-i2v-distilled-1.75x": ("hunyuan-video15-i2v-distilled", 8),
}
