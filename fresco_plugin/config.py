"""FrescoConfig: the one object a user builds (or takes from a preset) to turn Fresco on."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

__all__ = ["FrescoConfig", "PRESETS"]

PromotionOrder = Literal["settled_first", "unsettled_first"]
Expansion = Literal["hadamard", "nearest", "dct"]
NoiseSource = Literal["generator", "hash"]
PositionMode = Literal["center", "anchor"]


@dataclass(frozen=True)
class FrescoConfig:
    """How a generation is split into resolution stages and how tokens move between them.

    Every field has a default; see the README's table for why each default is what it is.
    """

    stage_scales: tuple[float, ...] = (0.5, 1.0)
    """Resolution of each stage's base grid, coarse to fine, each double the previous, ending at 1.0."""
    stage_steps: tuple[int, ...] | None = None
    """Denoising steps per stage. ``None`` splits the call's ``num_inference_steps`` by ``stage_fractions``."""
    stage_fractions: tuple[float, ...] | None = None
    """Share of the call's steps per stage when ``stage_steps`` is None; ``None`` means equal shares."""
    stage_shifts: tuple[float, ...] | None = None
    """Per-stage sigma shift. ``None``: each stage's own resolution decides (FLUX's ``mu`` from its token count,
    or the scheduler's static shift)."""
    promotion_rounds: int = 1
    """Rounds of partial promotion inside every stage but the last (0: whole stages only)."""
    promotion_ratio: float = 0.3
    """Share of the stage's base-level tokens promoted per round, in (0, 1]."""
    promotion_threshold: float | None = None
    """If set, promote the tokens whose score passes this threshold instead of a fixed ratio."""
    promotion_order: PromotionOrder = "settled_first"
    """``settled_first`` promotes the lowest scores (converged tokens, the paper); ``unsettled_first`` the highest."""
    score: str = "x0_step_variance"
    """Convergence score, by name in the score registry."""
    score_window: int = 3
    """How many recent steps a step-variance score looks at."""
    strategy: str = "fresco"
    """Transition rule, by name in the strategy registry (``fresco``, ``fresh-noise``, ``ralu``, ``dct-rewind``)."""
    strategy_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """Keyword arguments for the strategy (for example ``{"noise_ratio": 6.3}`` for ``ralu``)."""
    expansion: Expansion = "hadamard"
    """How a promoted token becomes four: ``hadamard`` (variance-consistent 1->4), ``nearest``, ``dct``."""
    noise_source: NoiseSource = "generator"
    """Where the coordinate-bound field comes from: the pipeline's own initial noise, or a counter-based hash."""
    position_mode: PositionMode = "center"
    """Where a finer token sits in a mixed set: the centre of its area, or its top-left corner (RALU)."""
    token_multiple: int = 1
    """Keep every step's image-token count a multiple of this (promotion counts round to fit). Context parallelism
    raises it to its degree by itself; set it to reproduce a parallel run's plan on one process."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage_scales", tuple(float(s) for s in self.stage_scales))
        for name in ("stage_steps", "stage_fractions", "stage_shifts"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "strategy_options", dict(self.strategy_options))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        scales = self.stage_scales
        if not scales:
            raise ValueError("FrescoConfig.stage_scales is empty; give at least (1.0,)")
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
        if self.stage_steps is not None and any(int(s) != s or s < 1 for s in self.stage_steps):
            raise ValueError(f"FrescoConfig.stage_steps={self.stage_steps}: every stage needs a whole number >= 1")
        if self.stage_fractions is not None and any(f <= 0 for f in self.stage_fractions):
            raise ValueError(f"FrescoConfig.stage_fractions={self.stage_fractions}: every share must be > 0")
        if self.stage_shifts is not None and any(s <= 0 for s in self.stage_shifts):
            raise ValueError(f"FrescoConfig.stage_shifts={self.stage_shifts}: every shift must be > 0")
        if self.promotion_rounds < 0 or int(self.promotion_rounds) != self.promotion_rounds:
            raise ValueError(f"FrescoConfig.promotion_rounds={self.promotion_rounds}: use a whole number >= 0")
        if not 0 < self.promotion_ratio <= 1:
            raise ValueError(f"FrescoConfig.promotion_ratio={self.promotion_ratio} is outside (0, 1]")
        if self.promotion_order not in ("settled_first", "unsettled_first"):
            raise ValueError(
                f"FrescoConfig.promotion_order={self.promotion_order!r}; use 'settled_first' or 'unsettled_first'"
            )
        if self.token_multiple < 1 or int(self.token_multiple) != self.token_multiple:
            raise ValueError(f"FrescoConfig.token_multiple={self.token_multiple}: use a whole number >= 1")
        if self.score_window < 1:
            raise ValueError(f"FrescoConfig.score_window={self.score_window}: use 1 or more")
        if self.expansion not in ("hadamard", "nearest", "dct"):
            raise ValueError(f"FrescoConfig.expansion={self.expansion!r}; use 'hadamard', 'nearest' or 'dct'")
        if self.noise_source not in ("generator", "hash"):
            raise ValueError(f"FrescoConfig.noise_source={self.noise_source!r}; use 'generator' or 'hash'")
        if self.position_mode not in ("center", "anchor"):
            raise ValueError(f"FrescoConfig.position_mode={self.position_mode!r}; use 'center' or 'anchor'")
        from .registry import get_score, get_strategy  # late: the registries import this module's neighbours

        get_score(self.score)
        get_strategy(self.strategy)

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> FrescoConfig:
        """A named preset, optionally with some fields overridden."""
        if name not in PRESETS:
            known = ", ".join(sorted(PRESETS))
            raise ValueError(f"unknown Fresco preset {name!r}; known presets: {known}")
        return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]

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


# Presets. Each meets its named transformer-FLOPs speedup against the named model's 50-step full-resolution run as
# `fresco flops` counts it (schnell against FLUX.1-dev, the paper's comparison); tests/test_flops.py holds them to it.
# The FLUX.1-dev plans were chosen by `benchmarks/preset_sweep.py` on the shipped scenes model (BENCHMARKS.md,
# "Choosing the presets"): fidelity to the stock picture rose steadily as steps moved out of the half-resolution
# stage, so each plan keeps the shortest sketch that still has a promotion round (3 steps: the score needs 2 before
# it) and spends the rest of the budget at full resolution; the ratio is the measured best (differences within noise).
# flux-schnell-22x and hunyuan-video-5x follow the paper's NFE (4 and 18) and are not measured: no distilled or video
# model ships with the repo.
PRESETS: dict[str, FrescoConfig] = {
    "flux-dev-3x": FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(3, 15), promotion_ratio=0.5),
    "flux-dev-5x": FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(3, 9), promotion_ratio=0.1),
    "flux-dev-10x": FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(3, 4), promotion_ratio=0.1),
    "flux-schnell-22x": FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(3, 1), promotion_ratio=0.25),
    "hunyuan-video-5x": FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(10, 8), promotion_ratio=0.25),
}
