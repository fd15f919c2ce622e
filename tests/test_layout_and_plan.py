import pytest
import torch

from fresco_plugin import FrescoConfig
from fresco_plugin.layout import TokenGeometry, TokenLayout, pack, unpack
from fresco_plugin.schedule import flux_mu, plan_stages, shift_sigmas, static_schedules
from fresco_plugin.selection import divisible_count, select_promotions

GEOMETRY = TokenGeometry(channels=16, patch=2, rows=8, cols=6)
CPU = torch.device("cpu")


def test_pack_unpack_round_trip_matches_flux_packing():
    latents = torch.randn(2, 16, 16, 12)
    tokens = pack(latents, 2)
    assert tokens.shape == (2, 48, 64)
    assert torch.equal(unpack(tokens, 8, 6, 2), latents)
    # FLUX's own packing: channel-major (C, dy, dx) inside a token
    assert torch.equal(tokens[0, 0].view(16, 2, 2), latents[0, :, :2, :2])


def test_uniform_stage_positions_are_the_integer_grid():
    layout = TokenLayout.uniform(1, GEOMETRY, 1, CPU)
    positions = layout.positions(1)
    assert torch.equal(positions[0, :, 1], torch.arange(4).repeat_interleave(3).float())
    assert torch.equal(positions[0, :, 2], torch.arange(3).repeat(4).float())
    assert torch.equal(positions[0, :, 0], torch.zeros(12))
    full = TokenLayout.uniform(1, GEOMETRY, 0, CPU).positions(0, "anchor")
    assert torch.equal(full, TokenLayout.uniform(1, GEOMETRY, 0, CPU).positions(0, "center"))


def test_children_sit_around_their_parent():
    layout = TokenLayout.uniform(1, GEOMETRY, 1, CPU)
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, 4] = True  # row 1, col 1 on the half-resolution grid
    mixed, kept, promoted = layout.promote(mask)
    assert mixed.num_tokens == 11 + 4 and promoted.tolist() == [[4]]
    children = mixed.positions(1, "center")[0, -4:, 1:]
    assert torch.allclose(children.mean(0), torch.tensor([1.0, 1.0]))
    assert sorted(children[:, 0].tolist()) == [0.75, 0.75, 1.25, 1.25]
    assert mixed.positions(1, "anchor")[0, -4:, 1:].tolist() == [[1.0, 1.0], [1.0, 1.5], [1.5, 1.0], [1.5, 1.5]]


def test_promoting_everything_gives_raster_order_back():
    layout = TokenLayout.uniform(2, GEOMETRY, 1, CPU)
    full, _, _ = layout.promote(torch.ones(2, 12, dtype=torch.bool))
    order = full.raster_order()
    assert torch.equal(full.gather(order).row, TokenLayout.uniform(2, GEOMETRY, 0, CPU).row)
    assert torch.equal(full.gather(order).col, TokenLayout.uniform(2, GEOMETRY, 0, CPU).col)


def test_promotion_needs_equal_counts_per_image():
    layout = TokenLayout.uniform(2, GEOMETRY, 1, CPU)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, 0] = True
    with pytest.raises(ValueError, match="same number of tokens"):
        layout.promote(mask)


def test_selection_by_ratio_threshold_and_order():
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.3]])
    candidates = torch.ones(1, 4, dtype=torch.bool)
    low = select_promotions(scores, candidates, ratio=0.5, threshold=None, order="settled_first")
    high = select_promotions(scores, candidates, ratio=0.5, threshold=None, order="unsettled_first")
    assert low.tolist() == [[False, True, False, True]]
    assert high.tolist() == [[True, False, True, False]]
    by_threshold = select_promotions(scores, candidates, ratio=1.0, threshold=0.4, order="settled_first")
    assert by_threshold.tolist() == [[False, True, False, True]]
    candidates[0, 1] = False  # finer tokens are never candidates
    assert not select_promotions(scores, candidates, ratio=0.5, threshold=None, order="settled_first")[0, 1]


def test_selection_by_tube_ranks_places_on_their_mean_score():
    # two frames of three places: place 0 is settled in one frame only, place 1 in both (lowest mean), place 2 in none
    scores = torch.tensor([[0.0, 0.2, 0.9, 1.0, 0.2, 0.9]])
    tubes = torch.tensor([[0, 1, 2, 0, 1, 2]])
    candidates = torch.ones(1, 6, dtype=torch.bool)
    by_token = select_promotions(scores, candidates, ratio=1 / 3, threshold=None, order="settled_first")
    assert by_token.tolist() == [[True, True, False, False, False, False]]  # two tokens of two different places
    by_tube = select_promotions(scores, candidates, ratio=1 / 3, threshold=None, order="settled_first", tubes=tubes)
    assert by_tube.tolist() == [[False, True, False, False, True, False]]
    by_threshold = select_promotions(scores, candidates, ratio=1.0, threshold=0.6, order="settled_first", tubes=tubes)
    assert by_threshold.tolist() == [[True, True, False, True, True, False]]  # means 0.5 and 0.2 pass
    # a promoted place adds 3 tokens per frame: 6 + 6k is a multiple of 8 first at k = 3 places (6 + 3k never is)
    multiple = select_promotions(scores, candidates, ratio=1 / 3, threshold=None, order="settled_first",
                                 tubes=tubes, token_multiple=8)
    assert multiple.all() and divisible_count(1, 3, 6, 8, unit=2) == 3 and divisible_count(1, 3, 6, 8) == 0


def test_plan_lays_out_stages_and_rounds():
    config = FrescoConfig(stage_scales=(0.25, 0.5, 1.0), stage_steps=(4, 4, 6), promotion_rounds=1)
    plans = plan_stages(config, None, min_score_history=2)
    assert [(p.level, p.first_step, p.num_steps, p.promotion_after) for p in plans] == [
        (2, 0, 4, (2,)), (1, 4, 4, (2,)), (0, 8, 6, ()),
    ]
    split = plan_stages(FrescoConfig(stage_fractions=(1, 3), promotion_rounds=0), 20, min_score_history=2)
    assert [p.num_steps for p in split] == [5, 15]


def test_static_schedules_space_a_restart_by_the_own_shift_when_asked():
    """The sampler-only schedules follow ``restart_spacing`` as the pipelines do: same start as the scaled shift,
    same last sigma as the unscaled one."""
    def last_stage(**kwargs):
        config = FrescoConfig(stage_steps=(3, 6), promotion_rounds=0, **kwargs)
        return static_schedules(plan_stages(config, None, min_score_history=2), shift=3.0)[-1].sigmas

    shifted, own = last_stage(restart_shift_scale=3.0), last_stage(restart_shift_scale=3.0, restart_spacing="own")
    plain = last_stage(restart_shift_scale=1.0)
    assert own[0] == pytest.approx(float(shifted[0]), abs=1e-6) and own[-2] == pytest.approx(float(plain[-2]), abs=1e-6)
    assert (own[1:-1] < shifted[1:-1]).all() and (own[:-2] > plain[:-2]).all()


def test_flux_shift_helpers_match_the_published_formula():
    assert flux_mu(256) == pytest.approx(0.5) and flux_mu(4096) == pytest.approx(1.15)
    assert shift_sigmas(torch.tensor([0.5]).numpy(), shift=3.0)[0] == pytest.approx(0.75)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"stage_scales": (0.5, 0.25, 1.0)}, "increasing"),
        ({"stage_scales": (0.25, 1.0)}, "insert 0.5"),
        ({"stage_scales": (0.5,)}, "end at full resolution"),
        ({"stage_scales": (0.3, 1.0)}, "power of 1/2"),
        ({"stage_steps": (3,)}, "one per stage"),
        ({"stage_steps": (0, 4)}, r"whole number of steps in \[1, 10000\]"),
        ({"stage_steps": (3.5, 4)}, r"stage_steps=3.5: give a whole number"),
        ({"stage_steps": 3}, "one value per stage"),
        ({"stage_shifts": (float("nan"), 1.0)}, "stage_shifts=nan: give a finite number"),
        ({"stage_shifts": (1e-30, 2.0)}, r"in \[0.01, 1000.0\]"),
        ({"stage_shifts": (None, "x")}, r"stage_shifts='x': give a number"),
        ({"stage_fractions": (1e308, 1e308)}, r"stage_fractions.*\(0, 1e6\]"),
        ({"promotion_rounds": 10**9, "stage_steps": (3, 4)}, r"promotion_rounds=1000000000"),
        ({"token_multiple": 10**9}, r"token_multiple=1000000000"),
        ({"score_window": 1}, r"score_window=1: the score 'x0_step_variance' needs at least 2"),
        ({"strategy": "ralu", "strategy_options": {"noise_ratio": float("nan")}}, "finite Z >= 2"),
        ({"strategy_options": {"noise_ratio": 3.0}}, r"strategy_options=.* do not fit the strategy 'fresco'"),
        ({"promotion_threshold": "x"}, r"promotion_threshold='x': give a number"),
        ({"promotion_ratio": None}, "promotion_ratio=None: give a number"),
        ({"score": ["x0_step_variance"]}, r"score=\['x0_step_variance'\]: give a name"),
        ({"promotion_ratio": 0.0}, r"outside \(0, 1\]"),
        ({"promotion_ratio": 1.5}, r"outside \(0, 1\]"),
        ({"promotion_order": "random"}, "settled_first"),
        ({"score": "nope"}, "unknown Fresco score"),
        ({"strategy": "nope"}, "unknown Fresco strategy"),
        ({"expansion": "bicubic"}, "hadamard"),
        ({"restart_spacing": "linear"}, r"restart_spacing='linear'; use 'shifted'"),
        ({"unguided_restart_spacing": "linear"}, r"unguided_restart_spacing='linear'; use .*, or None"),
        ({"unguided_restart_spacing": 1}, r"unguided_restart_spacing=1: give a name"),
    ],
)
def test_bad_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FrescoConfig(**kwargs)


def test_whole_number_floats_and_lists_are_taken_as_counts_and_tuples():
    config = FrescoConfig(stage_steps=[3.0, 4], promotion_rounds=2.0, token_multiple=2.0, score_window=3.0)
    assert config.stage_steps == (3, 4) and config.promotion_rounds == 2 and config.token_multiple == 2
    assert all(type(v) is int for v in (*config.stage_steps, config.promotion_rounds, config.score_window))


def test_plan_errors_name_the_fix():
    with pytest.raises(ValueError, match="does not match FrescoConfig.stage_steps"):
        plan_stages(FrescoConfig(stage_steps=(4, 4)), 10, min_score_history=2)
    with pytest.raises(ValueError, match="too few for promotion_rounds"):
        plan_stages(FrescoConfig(stage_steps=(2, 4)), None, min_score_history=2)
    with pytest.raises(ValueError, match="fewer than the 2 stages"):
        plan_stages(FrescoConfig(), 1, min_score_history=2)


def test_presets():
    assert FrescoConfig.preset("flux-dev-10x").stage_steps == (3, 4)
    assert sum(FrescoConfig.preset("flux-schnell-22x").stage_steps) == 4
    assert FrescoConfig.preset("flux-dev-10x", promotion_ratio=0.5).promotion_ratio == 0.5
    with pytest.raises(ValueError, match="unknown Fresco preset 'flux-dev-99x'; known presets: flux-dev-10x"):
        FrescoConfig.preset("flux-dev-99x")


def test_step_variance_scores_match_torch_var():
    from fresco_plugin.selection import StepRecord, latent_step_variance, x0_step_variance

    history = [StepRecord(latents=torch.randn(2, 5, 8), denoised=torch.randn(2, 5, 8)) for _ in range(3)]
    expected = torch.stack([r.denoised for r in history]).var(dim=0).mean(-1)
    assert torch.allclose(x0_step_variance(history), expected, atol=1e-6)
    assert torch.allclose(latent_step_variance(history),
                          torch.stack([r.latents for r in history]).var(dim=0).mean(-1), atol=1e-6)


def test_level_map_paints_each_token_over_the_area_it_covers():
    layout = TokenLayout.uniform(1, GEOMETRY, 1, CPU)
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, 4] = True  # row 1, col 1 on the half-resolution grid: full-resolution rows 2-3, cols 2-3
    mixed, _, _ = layout.promote(mask)
    levels = mixed.level_map(GEOMETRY)
    assert levels.shape == (1, 1, GEOMETRY.rows, GEOMETRY.cols) and levels.dtype == torch.int8
    expected = torch.ones(GEOMETRY.rows, GEOMETRY.cols, dtype=torch.int8)
    expected[2:4, 2:4] = 0
    assert torch.equal(levels[0, 0], expected)
    odd = TokenGeometry(channels=16, patch=2, rows=5, cols=3)  # the coarse grid pads past the picture
    assert torch.equal(TokenLayout.uniform(2, odd, 1, CPU).level_map(odd), torch.ones(2, 1, 5, 3, dtype=torch.int8))


def _fitted(config, steps):
    from fresco_plugin.schedule import fit_plan

    stages, notes = fit_plan(config, steps, min_score_history=2)
    return tuple(s.num_steps for s in stages), tuple(len(s.promotion_after) for s in stages), notes


@pytest.mark.parametrize("target,preset", [(3, "flux-dev-3x"), (5, "flux-dev-5x"), (10, "flux-dev-10x")])
def test_a_target_speedup_plan_of_fifty_steps_is_the_flux_dev_preset(target, preset):
    from dataclasses import replace

    from fresco_plugin.flops import count_plan_flops

    config = FrescoConfig(target_speedup=target, promotion_ratio=FrescoConfig.preset(preset).promotion_ratio)
    steps, _, notes = _fitted(config, 50)
    assert steps == FrescoConfig.preset(preset).stage_steps and not notes
    assert replace(config, stage_steps=steps) == replace(FrescoConfig.preset(preset), target_speedup=target)
    assert count_plan_flops(config, "flux-dev", steps=50).speedup >= target


def test_the_default_config_is_the_3x_preset_at_fifty_steps():
    from dataclasses import replace

    assert replace(FrescoConfig(), stage_steps=(3, 15)) == FrescoConfig.preset("flux-dev-3x")


def test_a_target_speedup_plan_spends_the_most_full_steps_within_its_image_token_budget():
    from dataclasses import replace

    from fresco_plugin.schedule import plan_token_counts

    def tokens(plan):  # full-resolution grid 16x16
        fixed = replace(FrescoConfig(), stage_steps=plan)
        return sum(plan_token_counts(fixed, plan_stages(fixed, None, min_score_history=2), 16, 16)) / 256

    for steps in range(3, 201):
        plan, rounds, notes = _fitted(FrescoConfig(), steps)
        assert plan[0] == 3 and rounds == (1, 0), steps
        if not notes:
            assert tokens(plan) <= steps / 3 < tokens((3, plan[1] + 1)), steps
        else:  # only where one full-resolution step is already over a third
            assert plan == (3, 1) and steps / 3 < tokens(plan), steps
            assert "too few for target_speedup=3" in notes[0], steps


def test_too_few_steps_for_the_target_shrink_the_sketch_and_say_so():
    assert _fitted(FrescoConfig(), 28)[:2] == ((3, 8), (1, 0))
    plan, rounds, notes = _fitted(FrescoConfig(), 4)
    assert (plan, rounds) == ((3, 1), (1, 0)) and "1.88x fewer image tokens" in notes[0]
    plan, rounds, notes = _fitted(FrescoConfig(), 2)  # a 3-step sketch would cost more than the stock call
    assert (plan, rounds) == ((2, 1), (0, 0)) and "running 0 round(s)" in notes[0]
    assert _fitted(FrescoConfig(), 1)[0] == (1,)  # the stock step
    # a threshold's share is unknown before the call: the ratio stands in for it when the plan is sized
    assert _fitted(FrescoConfig(promotion_threshold=0.1), 28)[:2] == ((3, 8), (1, 0))


def test_fractions_or_no_target_split_the_call_steps_and_one_stage_runs_them_all():
    assert _fitted(FrescoConfig(stage_fractions=(1, 3)), 28)[0] == (7, 21)
    assert _fitted(FrescoConfig(target_speedup=None), 28)[0] == (14, 14)
    assert _fitted(FrescoConfig(stage_scales=(1.0,)), 28)[0] == (28,)
    assert _fitted(FrescoConfig(stage_scales=(0.25, 0.5, 1.0)), 50)[0] == (3, 3, 15)


@pytest.mark.parametrize("value", [0.5, 1e4, float("nan"), "3"])
def test_target_speedup_out_of_range_is_refused_by_name(value):
    with pytest.raises(ValueError, match="FrescoConfig.target_speedup"):
        FrescoConfig(target_speedup=value)
