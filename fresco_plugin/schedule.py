"""Stage plans and sigma schedules (pure arithmetic, no model)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from .config import MAX_STEPS, FrescoConfig

__all__ = ["StagePlan", "StageSchedule", "fit_plan", "for_guidance", "plan_stages", "base_sigmas", "flux_mu",
           "restart_spaced", "shift_sigmas", "static_schedules"]


@dataclass(frozen=True)
class StagePlan:
    """One stage: its base level, its global step range, and after which of its steps a promotion round runs."""

    index: int
    level: int
    first_step: int
    num_steps: int
    promotion_after: tuple[int, ...]  # local step counts (1-based: after that many steps of the stage)
    shift: float | None  # explicit shift, or None for the resolution-dependent default
    shift_scale: float = 1.0  # multiplies whichever shift the stage gets (FrescoConfig.restart_shift_scale)
    own_spacing: bool = False  # a scaled shift sets only where the stage starts (FrescoConfig.restart_spacing)

    @property
    def last_step(self) -> int:
        return self.first_step + self.num_steps


# the measured preset shape's sketch: the score needs 2 steps of history before a round and 1 step after it
SKETCH_STEPS = 3


def _plans_by_target(config: FrescoConfig) -> bool:
    return config.stage_fractions is None and config.target_speedup is not None and config.num_stages > 1


def _split_steps(config: FrescoConfig, total: int, min_score_history: int) -> tuple[int, ...]:
    n = config.num_stages
    if _plans_by_target(config):
        return _steps_for_speedup(config, total, min_score_history)
    shares = config.stage_fractions or (1.0,) * n
    weight = sum(shares)
    steps = [max(1, math.floor(total * share / weight)) for share in shares]
    steps[-1] = total - sum(steps[:-1])
    return tuple(steps)


def _steps_for_speedup(config: FrescoConfig, total: int, min_score_history: int) -> tuple[int, ...]:
    """``config.target_speedup``'s plan for a call of ``total`` steps: a sketch per coarse stage (3 steps, or the
    fewest that host its promotion rounds), then the most full-resolution steps that keep the plan's image tokens
    within ``total / target_speedup`` full-resolution steps' worth, at least 1. When even one full-resolution step
    after that sketch costs as much as the call's ``total`` stock steps, shorter sketches without rounds (2, then 1
    step) are tried; ``fit_plan`` drops the rounds such a sketch cannot host."""
    coarse_stages = config.num_stages - 1
    rounds = config.promotion_rounds
    hosted = next((n for n in range(max(SKETCH_STEPS, rounds + 1), MAX_STEPS + 1)
                   if _rounds_fit(n, rounds, min_score_history)), None)
    if hosted is None:  # more rounds than any stage can host: fit_plan drops them
        hosted, rounds = SKETCH_STEPS, 0
    shapes = [(hosted, rounds), *((n, 0) for n in (2, 1) if n < hosted)]
    for sketch, sketch_rounds in shapes:
        steps = (sketch,) * coarse_stages + (1,)
        coarse = _image_token_cost(replace(config, stage_steps=steps, promotion_rounds=sketch_rounds)) - 1
        if coarse + 1 < total or sketch == 1:
            budget = total / config.target_speedup - coarse
            return steps[:-1] + (max(1, math.floor(budget + 1e-9)),)
    raise AssertionError("unreachable: the 1-step sketch is always returned")


def _rounds_fit(steps: int, rounds: int, min_score_history: int) -> bool:
    after = [math.ceil(steps * (j + 1) / (rounds + 1)) for j in range(rounds)]
    return not rounds or (len(set(after)) == rounds and after[0] >= min_score_history and after[-1] < steps)


def _image_token_cost(config: FrescoConfig) -> float:
    """Image tokens of a fixed-step plan, in full-resolution steps (the same at any grid the coarsest stage divides;
    text tokens and attention's quadratic term are left out: ``fresco flops`` prices a plan exactly). A threshold's
    share depends on the image, so ``promotion_ratio`` stands in for it."""
    side = 1 << (max(config.stage_levels) + 6)
    config = replace(config, promotion_threshold=None)
    stages = plan_stages(config, None, min_score_history=1)
    return sum(plan_token_counts(config, stages, side, side)) / grid_tokens(side, side, 0)


def plan_stages(config: FrescoConfig, num_inference_steps: int | None, *, min_score_history: int) -> list[StagePlan]:
    """Validate ``config`` against a call's step count and lay the stages out on the global step axis.

    ``num_inference_steps`` is what the user passed explicitly (``None`` when they did not); a config with fixed
    ``stage_steps`` then decides the total.
    """
    if config.stage_steps is not None:
        steps = config.stage_steps
        if num_inference_steps is not None and num_inference_steps != sum(steps):
            raise ValueError(
                f"num_inference_steps={num_inference_steps} does not match FrescoConfig.stage_steps={steps} "
                f"(sum {sum(steps)}); leave num_inference_steps out, or set stage_steps=None to split it by "
                "stage_fractions"
            )
    else:
        total = 28 if num_inference_steps is None else num_inference_steps
        if total < config.num_stages:
            raise ValueError(
                f"num_inference_steps={total} is fewer than the {config.num_stages} stages of "
                f"stage_scales={config.stage_scales}; give at least one step per stage"
            )
        steps = _split_steps(config, total, min_score_history)
        if min(steps) < 1:
            raise ValueError(f"stage_fractions={config.stage_fractions} leave a stage without steps at {total} steps")

    plans, first = [], 0
    last = config.num_stages - 1
    for index, (level, n) in enumerate(zip(config.stage_levels, steps)):
        rounds = config.promotion_rounds if index < last else 0
        after = tuple(math.ceil(n * (j + 1) / (rounds + 1)) for j in range(rounds))
        if not _rounds_fit(n, rounds, min_score_history):
            raise ValueError(
                f"stage {index} (scale {config.stage_scales[index]}) has {n} steps, too few for "
                f"promotion_rounds={rounds} with score {config.score!r} (it needs {min_score_history} step(s) before "
                f"the first round and one step after the last); give that stage more steps or lower promotion_rounds"
            )
        shift = config.stage_shifts[index] if config.stage_shifts is not None else None
        plans.append(StagePlan(index, level, first, n, after, shift,
                               config.restart_shift_scale if index > 0 else 1.0,
                               own_spacing=config.restart_spacing == "own"))
        first += n
    return plans


def fit_plan(config: FrescoConfig, num_inference_steps: int | None, *,
             min_score_history: int) -> tuple[list[StagePlan], list[str]]:
    """The plan a call runs, for any step count the call passes, and what was changed to fit it (for a warning).

    The rule, so that existing call sites keep working when Fresco is turned on:

    - a config that fixes ``stage_steps`` (every preset) runs its own plan: its step budget is what it is for, so a
      different ``num_inference_steps`` is not used;
    - a config that splits the call's steps (``stage_steps=None``) follows ``num_inference_steps``: with fewer steps
      than stages it drops the coarsest stages (1 step: the stock full-resolution step), and a stage too short for its
      promotion rounds keeps as many rounds as fit (possibly none).
    """
    notes: list[str] = []
    if config.stage_steps is not None:
        if num_inference_steps is not None and num_inference_steps != sum(config.stage_steps):
            notes.append(
                f"FrescoConfig.stage_steps={config.stage_steps} fixes {sum(config.stage_steps)} steps (a preset's "
                f"budget); num_inference_steps={num_inference_steps} is not used. For a plan that follows your step "
                "count, use FrescoConfig(target_speedup=...)"
            )
        return plan_stages(config, None, min_score_history=min_score_history), notes
    total = 28 if num_inference_steps is None else num_inference_steps
    if total < 1:
        raise ValueError(f"num_inference_steps={total}: give at least 1")
    if total < config.num_stages:
        kept = config.stage_scales[-total:]
        notes.append(f"num_inference_steps={total} is fewer than the {config.num_stages} stages of stage_scales="
                     f"{config.stage_scales}; running stages {kept}")
        config = replace(config, stage_scales=kept, stage_fractions=_last(config.stage_fractions, total),
                         stage_shifts=_last(config.stage_shifts, total))
    steps = _split_steps(config, total, min_score_history)
    rounds = config.promotion_rounds
    while rounds > 0:
        try:
            plans = plan_stages(replace(config, stage_steps=steps, promotion_rounds=rounds), None,
                                min_score_history=min_score_history)
        except ValueError:
            rounds -= 1
            continue
        break
    else:
        plans = plan_stages(replace(config, stage_steps=steps, promotion_rounds=0), None,
                            min_score_history=min_score_history)
    if rounds != config.promotion_rounds:
        notes.append(f"num_inference_steps={total} gives the stages {steps} steps, too few for promotion_rounds="
                     f"{config.promotion_rounds}; running {rounds} round(s)")
    if _plans_by_target(config):
        reached = total / _image_token_cost(replace(config, stage_steps=steps, promotion_rounds=rounds))
        if reached < config.target_speedup * (1 - 1e-9):
            notes.append(f"num_inference_steps={total} is too few for target_speedup={config.target_speedup:g}: "
                         f"running {steps} steps per stage, {reached:.2f}x fewer image tokens than {total} "
                         "full-resolution steps")
    return plans, notes


def for_guidance(stages: Sequence[StagePlan], config: FrescoConfig, guided: bool) -> list[StagePlan]:
    """The stages a call runs: without guidance, the stages after the first restart at
    ``config.unguided_restart_shift_scale`` and with ``config.unguided_restart_spacing`` where the config sets them."""
    scale, spacing = config.unguided_restart_shift_scale, config.unguided_restart_spacing
    if guided or (scale is None and spacing is None):
        return list(stages)
    return [replace(stage, shift_scale=stage.shift_scale if scale is None else scale,
                    own_spacing=stage.own_spacing if spacing is None else spacing == "own")
            if stage.index > 0 else stage for stage in stages]


def _last(values: tuple | None, count: int) -> tuple | None:
    return None if values is None else values[-count:]


def base_sigmas(num_steps: int) -> np.ndarray:
    """The stock FLUX base schedule ``linspace(1, 1/n, n)`` before shifting (one entry per step)."""
    return np.linspace(1.0, 1.0 / num_steps, num_steps)


def flux_mu(seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
            max_shift: float = 1.15) -> float:
    """FLUX's resolution-dependent shift exponent, linear in the image token count."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return seq_len * slope + base_shift - slope * base_seq_len


def shift_sigmas(sigmas: np.ndarray, *, shift: float | None = None, mu: float | None = None) -> np.ndarray:
    """Static shift ``s*t / (1 + (s-1)*t)`` or FLUX's exponential shift ``e^mu / (e^mu + 1/t - 1)``."""
    if mu is not None:
        return math.exp(mu) / (math.exp(mu) + (1.0 / sigmas - 1.0))
    if shift is None:
        raise ValueError("shift_sigmas needs a shift or a mu")
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


@dataclass(frozen=True)
class StageSchedule:
    """A stage's sigmas (``num_steps + 1`` entries: the last is where its final step lands) and model timesteps."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor
    timestep_scale: float = 1000.0  # timestep = sigma * timestep_scale (the scheduler's num_train_timesteps)


def restart_spaced(base: np.ndarray, *, start: float, own_shift: float) -> np.ndarray:
    """Base points that ``own_shift`` maps to a schedule starting at sigma ``start`` (a restart's level) and ending
    where it maps ``base``'s last point, evenly spaced between: the stage's own step spacing from the restart down. The
    shift is static (``shift_sigmas``' ``s*t / (1 + (s-1)*t)``; FLUX's ``mu`` is the static shift ``e^mu``)."""
    first = start / (own_shift - (own_shift - 1.0) * start)  # the inverse of the own shift
    return np.linspace(first, float(base[-1]), len(base)).astype(base.dtype)


def stage_base_sigmas(stage: StagePlan, total_steps: int) -> list[float]:
    """The stage's slice of the global base schedule, plus the point its last step lands on (none for the last)."""
    sigmas = base_sigmas(total_steps)
    end = stage.last_step + 1 if stage.last_step < total_steps else stage.last_step
    return sigmas[stage.first_step:end].tolist()


def static_schedules(stages: Sequence[StagePlan], *, shift: float = 1.0,
                     timestep_scale: float = 1000.0) -> list[StageSchedule]:
    """Stage schedules without a pipeline: each stage's slice of the base schedule under a static shift
    (the stage's own ``shift`` when it has one), for using the sampler on its own."""
    total = stages[-1].last_step
    schedules = []
    for stage in stages:
        base = np.array(stage_base_sigmas(stage, total), dtype=np.float32)
        stage_shift = (stage.shift or shift) * stage.shift_scale
        if stage.own_spacing and stage.shift_scale != 1:
            start = float(shift_sigmas(base[:1], shift=stage_shift)[0])
            base = restart_spaced(base, start=start, own_shift=stage.shift or shift)
            stage_shift = stage.shift or shift
        shifted = torch.from_numpy(np.asarray(shift_sigmas(base, shift=stage_shift), dtype=np.float32))
        sigmas = torch.cat([shifted, torch.zeros(1)])[: stage.num_steps + 1]
        schedules.append(StageSchedule(sigmas, shifted[: stage.num_steps] * timestep_scale, timestep_scale))
    return schedules


def grid_tokens(rows: int, cols: int, level: int, frames: int = 1) -> int:
    """Tokens of a uniform grid at ``level``; a side that does not halve evenly rounds up (padded)."""
    factor = 1 << level
    return frames * -(-rows // factor) * -(-cols // factor)


def plan_token_counts(config: FrescoConfig, stages: Sequence[StagePlan], rows: int, cols: int,
                      frames: int = 1) -> list[int]:
    """Image tokens per image that each step's model call sees under a ratio-promotion plan."""
    from .selection import divisible_count

    if config.promotion_threshold is not None and config.promotion_rounds > 0:
        raise ValueError(
            "promotion_threshold makes the number of promoted tokens depend on the image; token counts (and FLOPs) "
            "can only be planned with promotion_ratio (set promotion_threshold=None)"
        )
    counts = {stages[0].level: grid_tokens(rows, cols, stages[0].level, frames)}
    per_step = []
    for stage in stages:
        for local in range(stage.num_steps):
            per_step.append(sum(counts.values()))
            if local + 1 in stage.promotion_after:
                unit = frames if config.promotion_unit == "tube" else 1  # tokens a promoted unit holds
                units = counts[stage.level] // unit
                promoted = unit * divisible_count(round(units * config.promotion_ratio), units,
                                                  sum(counts.values()), config.token_multiple, unit)
                counts[stage.level] -= promoted
                counts[stage.level - 1] = counts.get(stage.level - 1, 0) + 4 * promoted
        if stage.index + 1 < len(stages):
            counts[stage.level - 1] = counts.get(stage.level - 1, 0) + 4 * counts.pop(stage.level)
            if stage.level - 1 == 0:
                counts[0] = grid_tokens(rows, cols, 0, frames)  # padding, if any, is cropped at full resolution
    return per_step
