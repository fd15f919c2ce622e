"""Property tests: any FrescoConfig is either refused at construction with a ValueError naming its field, or plans
and samples to finite full-resolution latents (on a synthetic denoiser; the pipeline calls are fuzzed in
test_call_fuzz.py)."""

import math
import re

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fresco_plugin import FrescoConfig
from fresco_plugin.layout import TokenGeometry, TokenLayout
from fresco_plugin.noise import FreshNoise, NoiseField
from fresco_plugin.sampler import min_score_history, sample
from fresco_plugin.schedule import for_guidance, plan_stages, static_schedules

GEOMETRY = TokenGeometry(channels=4, patch=2, rows=8, cols=6)
FIELDS = set(FrescoConfig.field_names())

weird = st.one_of(st.none(), st.text(max_size=3), st.booleans(), st.just(float("nan")), st.just(float("inf")),
                  st.just([1, 2]), st.just({"a": 1}), st.just(10**12), st.just(-1))
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-5, 12), weird)
count = st.one_of(st.integers(-2, 12), st.floats(-2, 12).map(lambda v: round(v * 2) / 2), st.just(10**9), weird)
tuple_of = lambda element: st.one_of(st.lists(element, min_size=0, max_size=4).map(tuple), weird)  # noqa: E731

field_values = {
    "stage_scales": st.one_of(st.sampled_from([(1.0,), (0.5, 1.0), (0.25, 0.5, 1.0), (0.5,), (1.0, 0.5),
                                               (0.25, 1.0), (0.3, 1.0)]), tuple_of(number)),
    "stage_steps": st.one_of(st.none(), tuple_of(count)),
    "stage_fractions": st.one_of(st.none(), tuple_of(number)),
    "stage_shifts": st.one_of(st.none(), tuple_of(number)),
    "promotion_rounds": count,
    "promotion_ratio": number,
    "promotion_threshold": st.one_of(st.none(), number),
    "promotion_order": st.one_of(st.sampled_from(["settled_first", "unsettled_first"]), weird),
    "promotion_unit": st.one_of(st.sampled_from(["token", "tube"]), weird),
    "score": st.one_of(st.sampled_from(["x0_step_variance", "latent_step_variance", "channel_variance"]), weird),
    "score_window": count,
    "strategy": st.one_of(st.sampled_from(["fresco", "fresh-noise", "ralu", "dct-rewind"]), weird),
    "strategy_options": st.one_of(st.just({}), st.fixed_dictionaries({"noise_ratio": number}),
                                  st.fixed_dictionaries({"renoise": st.sampled_from(["field", "trajectory"])}), weird),
    "expansion": st.one_of(st.sampled_from(["hadamard", "nearest", "dct", "bilinear"]), weird),
    "noise_source": st.one_of(st.sampled_from(["generator", "hash"]), weird),
    "position_mode": st.one_of(st.sampled_from(["center", "anchor"]), weird),
    "position_units": st.one_of(st.sampled_from(["stage", "final"]), weird),
    "token_multiple": count,
    "restart_shift_scale": number,
    "unguided_restart_shift_scale": st.one_of(st.none(), number),
    "restart_spacing": st.one_of(st.sampled_from(["shifted", "own"]), weird),
    "unguided_restart_spacing": st.one_of(st.none(), st.sampled_from(["shifted", "own"]), weird),
}
plausible_values = {
    "stage_scales": st.sampled_from([(1.0,), (0.5, 1.0), (0.25, 0.5, 1.0)]),
    "stage_steps": st.one_of(st.none(), st.lists(st.integers(1, 8), min_size=1, max_size=3).map(tuple)),
    "stage_fractions": st.one_of(st.none(), st.lists(st.floats(0.05, 5), min_size=1, max_size=3).map(tuple)),
    "stage_shifts": st.one_of(st.none(), st.lists(st.one_of(st.none(), st.floats(0.01, 1000)), min_size=1,
                                                  max_size=3).map(tuple)),
    "promotion_rounds": st.integers(0, 3),
    "promotion_ratio": st.floats(0.01, 1.0),
    "promotion_threshold": st.one_of(st.none(), st.floats(-1, 10)),
    "promotion_order": field_values["promotion_order"].filter(lambda v: isinstance(v, str)),
    "promotion_unit": st.sampled_from(["token", "tube"]),
    "score": st.sampled_from(["x0_step_variance", "latent_step_variance", "channel_variance"]),
    "score_window": st.integers(1, 5),
    "strategy": st.sampled_from(["fresco", "fresh-noise", "ralu", "dct-rewind"]),
    "strategy_options": st.one_of(st.just({}), st.fixed_dictionaries({"noise_ratio": st.floats(1, 20)}),
                                  st.fixed_dictionaries({"renoise": st.sampled_from(["field", "trajectory"])})),
    "expansion": st.sampled_from(["hadamard", "nearest", "dct", "bilinear"]),
    "noise_source": st.sampled_from(["generator", "hash"]),
    "position_mode": st.sampled_from(["center", "anchor"]),
    "position_units": st.sampled_from(["stage", "final"]),
    "token_multiple": st.integers(1, 4),
    "restart_shift_scale": st.floats(0.01, 100),
    "unguided_restart_shift_scale": st.one_of(st.none(), st.floats(0.01, 100)),
    "restart_spacing": st.sampled_from(["shifted", "own"]),
    "unguided_restart_spacing": st.one_of(st.none(), st.sampled_from(["shifted", "own"])),
}
configs = st.one_of(st.fixed_dictionaries({}, optional=plausible_values),  # mostly valid: exercises sampling
                    st.fixed_dictionaries({}, optional=field_values))  # anything: exercises the refusals


def _named_field(message: str) -> bool:
    return any(re.search(rf"\b{name}\b", message) for name in FIELDS) or "strategy" in message or "score" in message


def _point_mass(latents, positions, step):
    return (latents - 0.5) / step.sigma


# derandomized: the same 1000 configs every run, so CI is repeatable (set derandomize=False locally to explore)
@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(configs, st.integers(1, 30))
# found by a random run: a promotion round at ratio 1.0 leaves no parents for the stage switch ("nearest" read the
# field at an empty layout)
@example({"stage_scales": (0.5, 1.0), "promotion_ratio": 1.0, "expansion": "nearest"}, 6)
def test_any_config_is_refused_naming_its_field_or_samples_finite_latents(kwargs, steps):
    try:
        config = FrescoConfig(**kwargs)
    except ValueError as error:
        assert _named_field(str(error)), f"{kwargs} refused without naming a field: {error}"
        return
    try:
        stages = plan_stages(config, None if config.stage_steps else steps,
                             min_score_history=min_score_history(config))
    except ValueError as error:  # the call's step count does not fit the plan: refused before any forward
        assert re.search(r"steps|stage", str(error)), str(error)
        return
    stages = for_guidance(stages, config, guided=steps % 2 == 0)  # both regimes' restarts
    schedules = static_schedules(stages, shift=3.0)
    for schedule in schedules:
        assert torch.isfinite(schedule.sigmas).all() and (schedule.sigmas >= 0).all()
    coarsest = max(config.stage_levels)  # the field covers the coarsest grid, padded as the runners pad it
    rows, cols = GEOMETRY.grid(coarsest)
    field = NoiseField.from_hash([7], GEOMETRY.channels, (rows << coarsest) * GEOMETRY.patch,
                                 (cols << coarsest) * GEOMETRY.patch)
    first = field.tokens(TokenLayout.uniform(1, GEOMETRY, stages[0].level, torch.device("cpu")), GEOMETRY)
    try:
        result = sample(_point_mass, first, config=config, stages=stages, schedules=schedules, geometry=GEOMETRY,
                        field=field, fresh=FreshNoise([7]))
    except ValueError as error:  # a grid this small cannot host every plan (e.g. a 1/8 stage of an 8x6 grid)
        assert _named_field(str(error)) or "grid" in str(error) or "token" in str(error), str(error)
        return
    assert result.latents.shape == (1, GEOMETRY.num_tokens, GEOMETRY.token_dim)
    assert torch.isfinite(result.latents).all()
    assert math.isclose(float(result.latents.mean()), 0.5, abs_tol=1e-3)  # Euler on a point mass lands on it
