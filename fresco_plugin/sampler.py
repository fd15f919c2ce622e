"""The Fresco sampler: a k-diffusion-style Euler loop over ``(denoise, plan)`` whose token layout changes.

The loop knows nothing of any pipeline. ``denoise(latents, positions, step)`` returns the flow velocity for a
``(B, N, D)`` latent whose tokens sit at ``positions`` (``(B, N, 2)``, rows/cols in units of the stage's base grid,
or of the full-resolution grid with ``position_units="final"``);
``step`` carries the sigma, the model timestep, the sigma the step lands on and the token layout. The integration
supplies it, the stage schedules and the noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from .config import FrescoConfig
from .layout import TokenGeometry, TokenLayout, true_indices
from .noise import FreshNoise, NoiseField
from .registry import get_score, get_strategy
from .schedule import StagePlan, StageSchedule
from .selection import StepRecord, select_promotions
from .transitions import Transition

__all__ = ["Step", "SamplerResult", "sample", "min_score_history"]


@dataclass(frozen=True)
class Step:
    index: int  # global step index, 0-based
    stage: int
    sigma: torch.Tensor  # 0-dim float32
    timestep: torch.Tensor  # 0-dim float32, the scheduler's timestep (sigma * 1000 for FLUX)
    grid_level: int = 0  # the level whose token grid the positions count on (0: full resolution)
    next_sigma: torch.Tensor | None = None  # where this step's Euler update lands (a mean-flow model's second time)
    # the tokens' identities, in the latents' order: per-token side inputs (an image-to-video model's conditioning
    # latents) are read at the same coordinates as the noise field
    layout: TokenLayout | None = None
    # with ``grid_known``, ``grid`` says without reading the device whether the positions are one whole integer grid
    # of (frames, rows, cols) in raster order (a stage before its first round), or not (None)
    grid: tuple[int, int, int] | None = None
    grid_known: bool = False
    levels: tuple[int, ...] | None = None  # a set holding every token's level (the layout's, without reading it)


Denoiser = Callable[[torch.Tensor, torch.Tensor, Step], torch.Tensor]
StepCallback = Callable[[Step, torch.Tensor, TokenLayout], torch.Tensor | None]


@dataclass(frozen=True)
class SamplerResult:
    latents: torch.Tensor  # (B, N_full, D) in raster order
    tokens_per_step: tuple[int, ...]  # tokens per image that each step's model call saw
    sigmas_used: tuple[float, ...]
    layouts_run: tuple[tuple[int, TokenLayout], ...] = ()  # each layout the model saw, with its first step
    geometry: TokenGeometry | None = None

    @cached_property
    def resolution_maps(self) -> tuple[tuple[int, torch.Tensor], ...]:
        """(first step, map) each time the map changed: the map is (B, frames, rows, cols) int8, the level of the token
        that covered each full-resolution token's area from that step on (0: full resolution, 1: half, ...). Worked
        out when first asked for, not inside the generation: it reads the device."""
        maps: list[tuple[int, torch.Tensor]] = []
        for index, layout in self.layouts_run:
            levels = layout.level_map(self.geometry)
            if not maps or not torch.equal(levels, maps[-1][1]):  # a reordering alone leaves the map as it was
                maps.append((index, levels))
        return tuple(maps)


def min_score_history(config: FrescoConfig) -> int:
    return int(getattr(get_score(config.score), "min_history", 1))


def sample(
    denoise: Denoiser,
    noise: torch.Tensor,
    *,
    config: FrescoConfig,
    stages: Sequence[StagePlan],
    schedules: Sequence[StageSchedule],
    geometry: TokenGeometry,
    field: NoiseField,
    fresh: FreshNoise | None = None,
    callback: StepCallback | None = None,
    interrupted: Callable[[], bool] = lambda: False,
    agree: Callable[[torch.Tensor], torch.Tensor] = lambda promote: promote,
) -> SamplerResult:
    """Run every stage and return the full-resolution latent in raster order.

    ``noise`` is the initial latent of the first stage's layout (the field read at its tokens, or the user's latents).
    ``agree`` turns each promotion choice into the one every process uses (under parallelism: rank 0's).

    Between the first model call and the last nothing is read back from the device when each round promotes a count
    the host can work out (a ratio, by token, with no token multiple): what is known on the host (token counts,
    levels, grid sizes) is passed down, and what depends on the device's values is selected on the device.
    """
    rule = get_strategy(config.strategy)(**config.strategy_options)
    score = get_score(config.score)
    layout = TokenLayout.uniform(noise.shape[0], geometry, stages[0].level, noise.device)
    x = noise
    velocity = torch.zeros_like(x)
    history: list[StepRecord] = []
    tokens_per_step: list[int] = []
    sigmas_used: list[torch.Tensor] = []  # read back once at the end: a read per step would wait on the device
    # where a stage switch left the latent, and whether that is not where the plan said (a device bool)
    rewound_to: tuple[torch.Tensor, torch.Tensor] | None = None
    counts_on_host = (config.promotion_threshold is None and config.promotion_unit != "tube"
                      and config.token_multiple == 1)
    padded = not geometry.divides(stages[0].level)  # the sketch's grid covers more than the picture
    layouts_run: list[tuple[int, TokenLayout]] = []  # mapped when asked for: mapping reads the device

    for stage, schedule in zip(stages, schedules):
        sigmas, timesteps = schedule.sigmas.clone(), schedule.timesteps.clone()
        if rewound_to is not None:
            reached, moved = rewound_to
            sigmas[0] = torch.where(moved, reached, sigmas[0])
            timesteps[0] = torch.where(moved, reached * schedule.timestep_scale, timesteps[0])
            rewound_to = None
        candidates_left: int | None = layout.num_tokens  # every stage starts as one grid at its own level
        levels = tuple(range(max(stage.level - 1, 0), stage.level + 1))  # a token's, until the stage's end
        grid_level = stage.level if config.position_units == "stage" else 0  # the grid positions are counted on
        positions = layout.positions(grid_level, config.position_mode)
        # until its first round a stage is one grid, whole integer positions when counted on its own level. A padded
        # sketch's children can reach past that grid's size in a stage between the first and the last (3+ stages),
        # so there the runner reads the grid instead
        grid = (geometry.num_frames, *geometry.grid(stage.level)) if grid_level == stage.level else None
        grid_known = not padded or stage.level in (stages[0].level, 0)
        last_round = max(stage.promotion_after, default=0)
        # views of each step's values, taken once per stage (an index per step is an operation per step); they see
        # the writes a round makes below
        sigma_at, timestep_at = sigmas.unbind(), timesteps.unbind()
        dt_at = (sigmas[1:] - sigmas[:-1]).unbind()
        for local in range(stage.num_steps):
            step = Step(stage.first_step + local, stage.index, sigma_at[local], timestep_at[local], grid_level,
                        next_sigma=sigma_at[local + 1], layout=layout, grid=grid, grid_known=grid_known,
                        levels=levels)
            if not interrupted():
                if not layouts_run or layouts_run[-1][1] is not layout:
                    layouts_run.append((step.index, layout))
                velocity = denoise(x, positions, step)
                tokens_per_step.append(layout.num_tokens)
                sigmas_used.append(step.sigma)
                if local < last_round:  # only rounds still ahead in this stage read the history
                    history.append(StepRecord(latents=x, denoised=x - step.sigma * velocity))
                    del history[: -config.score_window]
                x = (x.to(torch.float32) + dt_at[local] * velocity).to(velocity.dtype)  # the scheduler's Euler step
                if callback is not None:
                    x = _checked(callback(step, x, layout), x, step)
            round_here = (local + 1) in stage.promotion_after
            stage_end = local + 1 == stage.num_steps and stage.index + 1 < len(stages)
            if not (round_here or stage_end):
                continue
            candidates = layout.level == stage.level
            if stage_end:
                promote, count = candidates, candidates_left
                restart = schedules[stage.index + 1].sigmas[0]
            else:
                scores = score(history) if history else torch.zeros(candidates.shape, device=x.device)
                promote = agree(select_promotions(
                    scores, candidates, ratio=config.promotion_ratio, threshold=config.promotion_threshold,
                    order=config.promotion_order, token_multiple=config.token_multiple,
                    tubes=layout.places() if config.promotion_unit == "tube" else None,
                ))
                restart = sigmas[local + 1]
                # select_promotions' own count, round(ratio * candidates), worked out on the host
                count = None
                if counts_on_host and candidates_left is not None:
                    count = min(candidates_left, round(candidates_left * config.promotion_ratio))
                if count == 0 or (count is None and not bool(promote.any())):
                    continue
            transition = Transition(
                latents=x, velocity=velocity, sigma=sigmas[local + 1], restart_sigma=restart, layout=layout,
                promote=promote, geometry=geometry, field=field, fresh=fresh, expansion=config.expansion,
                promote_count=count, levels=levels,
            )
            num_tokens = layout.num_tokens
            x, layout, reached = rule(transition)
            velocity = torch.zeros_like(x)  # no velocity exists for the new layout until the next model call
            moved = reached != restart  # rules like dct-rewind pick their own sigma
            if stage_end:
                history.clear()
                rewound_to = reached, moved
                x, layout = _next_stage_order(x, layout, geometry, stages[stage.index + 1].level, padded)
            else:
                if local + 1 < last_round:  # a later round of this stage reads the history: carry it over
                    kept = true_indices(~promote, None if count is None else num_tokens - count)
                    history = [_keep(record, kept, x.shape[1]) for record in history]
                else:
                    history.clear()
                positions = layout.positions(grid_level, config.position_mode)
                grid = None  # a round mixes levels
                sigmas[local + 1] = torch.where(moved, reached, sigmas[local + 1])
                timesteps[local + 1] = torch.where(moved, reached * schedule.timestep_scale, timesteps[local + 1])
                dt_at = (sigmas[1:] - sigmas[:-1]).unbind()  # the next step starts where the rule left it
                candidates_left = None if count is None else candidates_left - count  # None: known on the device only

    if layout.coarsest_level != 0:
        raise RuntimeError("the plan ended before every token reached full resolution")
    sigmas_read = tuple(torch.stack(sigmas_used).tolist()) if sigmas_used else ()
    return SamplerResult(x, tuple(tokens_per_step), sigmas_read, tuple(layouts_run), geometry)


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _next_stage_order(x: torch.Tensor, layout: TokenLayout, geometry: TokenGeometry, level: int,
                      padded: bool) -> tuple[torch.Tensor, TokenLayout]:
    """A new stage starts as a whole grid in raster order at ``level``; at full resolution, the padding of a sketch
    grid that covered more than the picture (``padded``) is dropped."""
    if level == 0 and padded:
        keep = true_indices(layout.inside(geometry), geometry.num_tokens)
        x, layout = _gather(x, keep), layout.gather(keep)
    # any bound above every row and col gives the same order; a sketch's padded grid reaches at most one row past
    order = layout.raster_order(extent=(geometry.rows + 2, geometry.cols + 2))
    return _gather(x, order), layout.gather(order)


def _checked(replaced: torch.Tensor | None, latents: torch.Tensor, step: Step) -> torch.Tensor:
    if replaced is None:
        return latents
    if replaced.shape != latents.shape:
        raise ValueError(
            f"callback_on_step_end returned latents of shape {tuple(replaced.shape)} at step {step.index}; Fresco's "
            f"latents at this step have shape {tuple(latents.shape)} (low-resolution stages hold fewer tokens)"
        )
    return replaced


def _keep(record: StepRecord, kept: torch.Tensor, num_tokens: int) -> StepRecord:
    """Carry a step record over a partial promotion: kept tokens keep their history, new ones start empty (NaN)."""

    def carry(values: torch.Tensor) -> torch.Tensor:
        out = values.new_full((values.shape[0], num_tokens, values.shape[-1]), float("nan"))
        out[:, : kept.shape[1]] = values.gather(1, kept.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
        return out

    return StepRecord(latents=carry(record.latents), denoised=carry(record.denoised))
