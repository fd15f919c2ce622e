"""The core sampler on its own, against an oracle whose exact answer is known."""

import pytest
import torch

from fresco_plugin import FrescoConfig
from fresco_plugin.layout import TokenGeometry, TokenLayout, pack
from fresco_plugin.noise import FreshNoise, NoiseField
from fresco_plugin.sampler import min_score_history, sample
from fresco_plugin.schedule import plan_stages, plan_token_counts, static_schedules

GEOMETRY = TokenGeometry(channels=4, patch=2, rows=16, cols=12)


def _target() -> torch.Tensor:
    """A clean latent that is constant on 4x4-token blocks, so its value at any token, coarse or fine, is known."""
    g = torch.Generator().manual_seed(0)
    blocks = torch.randn(1, GEOMETRY.channels, GEOMETRY.rows // 4, GEOMETRY.cols // 4, generator=g)
    pixels = blocks.repeat_interleave(8, -2).repeat_interleave(8, -1)  # 4 tokens x 2 latent pixels per block
    return pack(pixels, GEOMETRY.patch)  # (1, rows*cols, D) in raster order


def _oracle(target: torch.Tensor, stages, config):
    """The exact flow velocity for a point mass at ``target``: v = (x - x*) / sigma.

    It finds each token's target through the positions it is given, so wrong positions, a wrong layout or a wrong
    final ordering would all show in the result.
    """

    def denoise(latents, positions, step):
        base = stages[step.stage].level if config.position_units == "stage" else 0
        scale = 2.0**base
        centre = positions[..., 1:] * scale + (scale - 1) / 2  # full-resolution coordinates of each token's centre
        row = (centre[..., 0] // 4).long().clamp(0, GEOMETRY.rows // 4 - 1) * 4
        col = (centre[..., 1] // 4).long().clamp(0, GEOMETRY.cols // 4 - 1) * 4
        expected = target[0, row * GEOMETRY.cols + col]  # the block's value (any token inside it)
        return (latents - expected) / step.sigma

    return denoise


@pytest.mark.parametrize(
    "config",
    [
        FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(4, 4), promotion_rounds=1),
        FrescoConfig(stage_scales=(0.25, 0.5, 1.0), stage_steps=(4, 4, 3), promotion_rounds=1, expansion="dct"),
        FrescoConfig(stage_scales=(0.25, 0.5, 1.0), stage_steps=(4, 4, 3), promotion_rounds=1, expansion="bilinear"),
        FrescoConfig(stage_scales=(0.25, 0.5, 1.0), stage_steps=(5, 5, 2), promotion_rounds=2,
                     strategy_options={"renoise": "trajectory"}),
        FrescoConfig(stage_scales=(0.25, 0.5, 1.0), stage_steps=(5, 5, 2), promotion_rounds=2,
                     promotion_order="unsettled_first", score="channel_variance"),
        FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(4, 3), strategy="dct-rewind"),
        FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(4, 3), strategy="fresh-noise", expansion="nearest"),
        FrescoConfig(stage_scales=(0.25, 0.5, 1.0), stage_steps=(4, 4, 3), promotion_rounds=1,
                     position_units="final"),
    ],
)
def test_every_plan_reaches_the_oracle_target(config):
    target = _target()
    stages = plan_stages(config, None, min_score_history=min_score_history(config))
    field = NoiseField.from_hash([3, 4], GEOMETRY.channels, GEOMETRY.rows * 2, GEOMETRY.cols * 2)
    first = field.tokens(TokenLayout.uniform(2, GEOMETRY, stages[0].level, torch.device("cpu")), GEOMETRY)
    result = sample(_oracle(target, stages, config), first, config=config, stages=stages,
                    schedules=static_schedules(stages, shift=3.0), geometry=GEOMETRY, field=field,
                    fresh=FreshNoise([3, 4]))
    assert result.latents.shape == (2, GEOMETRY.num_tokens, GEOMETRY.token_dim)
    # Euler with the exact point-mass velocity lands on x* whatever the noise: only bookkeeping errors remain
    assert torch.allclose(result.latents, target.expand(2, -1, -1), atol=1e-4)
    assert result.tokens_per_step[-1] == GEOMETRY.num_tokens
    assert len(result.tokens_per_step) == sum(config.stage_steps)


def test_the_oracle_notices_misplaced_tokens():
    """Guard for the test above: with positions from the wrong convention the result is off."""
    config = FrescoConfig(stage_scales=(0.25, 0.5, 1.0), stage_steps=(4, 4, 3), promotion_rounds=1)
    target = _target()
    stages = plan_stages(config, None, min_score_history=2)
    field = NoiseField.from_hash([3], GEOMETRY.channels, GEOMETRY.rows * 2, GEOMETRY.cols * 2)
    first = field.tokens(TokenLayout.uniform(1, GEOMETRY, stages[0].level, torch.device("cpu")), GEOMETRY)
    oracle = _oracle(target, stages, config)
    shifted = lambda latents, positions, step: oracle(latents, positions + torch.tensor([0.0, 1.0, 1.0]), step)  # noqa: E731
    result = sample(shifted, first, config=config, stages=stages, schedules=static_schedules(stages, shift=3.0),
                    geometry=GEOMETRY, field=field)
    assert not torch.allclose(result.latents, target, atol=1e-2)


def test_resolution_maps_say_which_tokens_ran_at_full_resolution_from_which_step():
    config = FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(4, 3), promotion_rounds=1, promotion_ratio=0.25)
    stages = plan_stages(config, None, min_score_history=min_score_history(config))
    field = NoiseField.from_hash([3], GEOMETRY.channels, GEOMETRY.rows * 2, GEOMETRY.cols * 2)
    first = field.tokens(TokenLayout.uniform(1, GEOMETRY, stages[0].level, torch.device("cpu")), GEOMETRY)
    result = sample(_oracle(_target(), stages, config), first, config=config, stages=stages,
                    schedules=static_schedules(stages, shift=3.0), geometry=GEOMETRY, field=field)
    round_step = stages[0].promotion_after[0]
    assert [step for step, _ in result.resolution_maps] == [0, round_step, 4]
    sketch, mixed, full = (levels[0, 0] for _, levels in result.resolution_maps)
    assert bool((sketch == 1).all()) and bool((full == 0).all())
    promoted_area = int((mixed == 0).sum())  # a quarter of the 48 half-resolution tokens, 4 children each
    assert promoted_area == 4 * 12
    # each promoted token covers a whole 2x2 block of the full grid
    blocks = (mixed == 0).view(GEOMETRY.rows // 2, 2, GEOMETRY.cols // 2, 2).sum((1, 3))
    assert set(blocks.unique().tolist()) == {0, 4}


@pytest.mark.parametrize("unit", ["token", "tube"])
def test_tube_promotion_keeps_each_place_at_one_resolution_in_every_frame(unit):
    video = TokenGeometry(channels=4, patch=2, rows=8, cols=8, frames=3)
    config = FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(4, 2), promotion_ratio=0.25, promotion_unit=unit)
    stages = plan_stages(config, None, min_score_history=min_score_history(config))
    field = NoiseField.from_hash([5], video.channels, video.rows * 2, video.cols * 2, frames=3)
    first = field.tokens(TokenLayout.uniform(1, video, stages[0].level, torch.device("cpu")), video)

    def frame_dependent(latents, positions, step):  # each frame settles at its own pace, so frames rank differently
        return latents * (1.0 + 0.3 * positions[..., :1]) / step.sigma

    result = sample(frame_dependent, first, config=config, stages=stages,
                    schedules=static_schedules(stages, shift=3.0), geometry=video, field=field)
    mixed = result.resolution_maps[1][1][0] == 0  # (frames, rows, cols): ran at full resolution after the round
    assert list(result.tokens_per_step) == plan_token_counts(config, stages, video.rows, video.cols, 3)
    if unit == "tube":  # a quarter of the 16 sketch places, each in all 3 frames
        assert all(torch.equal(mixed[0], frame) for frame in mixed) and int(mixed[0].sum()) == 4 * 4
    else:  # a quarter of the 48 sketch tokens, chosen frame by frame
        assert not all(torch.equal(mixed[0], frame) for frame in mixed) and int(mixed.sum()) == 12 * 4


@pytest.mark.parametrize("units, sketch_cols", [("stage", [0.0, 1.0, 2.0]), ("final", [0.5, 2.5, 4.5])])
def test_position_units_say_which_grid_a_sketch_token_is_counted_on(units, sketch_cols):
    config = FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(2, 1), promotion_rounds=0, position_units=units)
    stages = plan_stages(config, None, min_score_history=min_score_history(config))
    field = NoiseField.from_hash([3], GEOMETRY.channels, GEOMETRY.rows * 2, GEOMETRY.cols * 2)
    first = field.tokens(TokenLayout.uniform(1, GEOMETRY, stages[0].level, torch.device("cpu")), GEOMETRY)
    seen = {}

    def denoise(latents, positions, step):
        seen.setdefault(step.stage, positions[0])
        return torch.zeros_like(latents)

    sample(denoise, first, config=config, stages=stages, schedules=static_schedules(stages, shift=3.0),
           geometry=GEOMETRY, field=field)
    assert seen[0][:3, 2].tolist() == sketch_cols  # a half-resolution token covers 2x2 full-resolution ones
    assert seen[1][:13, 1:].tolist() == [[0.0, float(c)] for c in range(12)] + [[1.0, 0.0]]  # full stage: as stock
