"""Plans for any FLOPs target: ``FrescoConfig.for_speedup`` and ``fresco plan``.

A plan here has the shape the preset sweep measured best on the shipped scenes model
(``benchmarks/preset_sweep.py``, BENCHMARKS.md): a short half-resolution sketch with one promotion round, then the
rest of the budget at full resolution, restarting at twice that stage's own shift. Video models skip the round: on
the shipped video model it cost unguided realism and added guided flicker at every budget
(``benchmarks/video_plan_sweep.py --set no-round``); without guidance their full-resolution stage restarts at three
times its shift (``--set round-free``), eight times from 7.5x up (``--set unguided-restart`` and ``--set
10x-restart``); below 4x their sketch runs at shift 0.5 (``--set 3x-sketch-shift``). For a target, the sketch is
fixed by the budget's band and the full-resolution stage gets the most steps that still reach the target on the
named architecture and size, counted exactly as ``fresco flops`` counts (so the presets are points of this function,
a test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import (
    UNGUIDED_VIDEO_HIGH_RESTART_FROM,
    UNGUIDED_VIDEO_HIGH_RESTART_SHIFT_SCALE,
    UNGUIDED_VIDEO_RESTART_SHIFT_SCALE,
    VIDEO_LOW_BUDGET_BELOW,
    VIDEO_LOW_SHIFT_SKETCH,
    FrescoConfig,
)

__all__ = ["SketchShape", "most_full_steps", "plan_for_speedup"]


@dataclass(frozen=True)
class SketchShape:
    """The low-resolution part of a plan: steps at half resolution and the share promoted after its second-to-last
    step (a round needs two steps of score history before it and one step after); ``None``: no round, every token
    switches at the stage's end. ``shift``: the sketch's sigma shift (``None``: its resolution's own); the restart
    fields are ``FrescoConfig``'s."""

    steps: int
    promotion_ratio: float | None
    unguided_restart_shift_scale: float | None = None
    shift: float | None = None
    restart_spacing: str = "shifted"
    unguided_restart_spacing: str | None = None

    def config(self, full_steps: int) -> FrescoConfig:
        if self.promotion_ratio is None:
            return FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(self.steps, full_steps), promotion_rounds=0,
                                stage_shifts=None if self.shift is None else (self.shift, None),
                                restart_shift_scale=RESTART_SHIFT_SCALE,
                                unguided_restart_shift_scale=self.unguided_restart_shift_scale,
                                restart_spacing=self.restart_spacing,
                                unguided_restart_spacing=self.unguided_restart_spacing)
        rounds = 1 if self.steps >= 3 else 0
        return FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(self.steps, full_steps), promotion_rounds=rounds,
                            promotion_ratio=self.promotion_ratio, restart_shift_scale=RESTART_SHIFT_SCALE)


# the full-resolution stage restarts at twice its own shift, so it redraws the sketch rather than inheriting it
# (measured by benchmarks/unguided_sweep.py --set presets)
RESTART_SHIFT_SCALE = 2.0
# (lowest target of the band, sketch): measured on the shipped model by the preset sweep; beyond the last band the
# sketch shrinks until the target fits.
BANDS = ((0.0, SketchShape(3, 0.5)), (4.0, SketchShape(3, 0.1)))
FALLBACKS = (SketchShape(2, 0.1), SketchShape(1, 0.1))
VIDEO_BANDS = ((0.0, SketchShape(3, None, UNGUIDED_VIDEO_RESTART_SHIFT_SCALE, VIDEO_LOW_SHIFT_SKETCH,
                                  unguided_restart_spacing="own")),
               (VIDEO_LOW_BUDGET_BELOW, SketchShape(3, None, UNGUIDED_VIDEO_RESTART_SHIFT_SCALE,
                                                    restart_spacing="own")),
               (UNGUIDED_VIDEO_HIGH_RESTART_FROM, SketchShape(3, None, UNGUIDED_VIDEO_HIGH_RESTART_SHIFT_SCALE)))
VIDEO_FALLBACKS = (SketchShape(2, None, UNGUIDED_VIDEO_HIGH_RESTART_SHIFT_SCALE),
                   SketchShape(1, None, UNGUIDED_VIDEO_HIGH_RESTART_SHIFT_SCALE))


def plan_for_speedup(target: float, *, model: str = "flux-dev", height: int | None = None, width: int | None = None,
                     frames: int | None = None, baseline_steps: int = 50) -> FrescoConfig:
    """The plan of the measured shape with the most full-resolution steps whose transformer-FLOPs speedup over
    ``model``'s ``baseline_steps``-step full-resolution run is at least ``target``. Raises ``ValueError`` with the
    reachable range when no plan of that shape gets there."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target) or target <= 0:
        raise ValueError(f"target={target!r}: give a FLOPs speedup above 0 (for example 5 for 5x)")
    from .flops import model_spec

    video = model_spec(model).video
    band = next(shape for low, shape in reversed(VIDEO_BANDS if video else BANDS) if target >= low)
    best = 0.0
    for shape in (band, *(VIDEO_FALLBACKS if video else FALLBACKS)):
        full_steps, reachable = most_full_steps(shape, target, model=model, height=height, width=width,
                                                frames=frames, baseline_steps=baseline_steps)
        if full_steps is not None:
            return shape.config(full_steps)
        best = max(best, reachable)
    raise ValueError(f"target={target:g}x is out of reach for {model} at this size: plans of this shape reach at most "
                     f"{best:.2f}x (1 half-resolution step and 1 full-resolution step); ask for {math.floor(best):g}x "
                     "or less")


def most_full_steps(shape: SketchShape, target: float, *, model: str = "flux-dev", height: int | None = None,
                    width: int | None = None, frames: int | None = None,
                    baseline_steps: int = 50) -> tuple[int | None, float]:
    """The most full-resolution steps after ``shape``'s sketch that still reach ``target`` (``None`` if even one
    does not), and the speedup with one full-resolution step (the most this sketch can reach)."""
    from .flops import count_plan_flops

    def speedup(full_steps: int) -> float:
        return count_plan_flops(shape.config(full_steps), model, height=height, width=width, frames=frames,
                                baseline_steps=baseline_steps).speedup

    low, high = 1, baseline_steps  # speedup falls as full-resolution steps rise: bisect the last that reaches it
    fastest = speedup(low)
    if fastest < target:
        return None, fastest
    while low < high:
        middle = (low + high + 1) // 2
        if speedup(middle) >= target:
            low = middle
        else:
            high = middle - 1
    return low, fastest
