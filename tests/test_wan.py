"""Fresco on a stock diffusers WanPipeline (tiny random weights built from configs, Euler flow scheduler)."""

import diffusers
import numpy as np
import pytest
import torch

from fresco_plugin import FrescoConfig, apply_fresco, remove_fresco
from fresco_plugin.integrations.diffusers_wan import wan_rope_at_positions
from fresco_plugin.layout import TokenGeometry, TokenLayout
from fresco_plugin.tools.tiny import tiny_wan_pipeline

# 48x80 pixels, 5 frames -> latent 2 x 6 x 10 -> tokens 2 frames x 3 rows x 5 cols (odd both ways)
SIZE = dict(height=48, width=80, num_frames=5)
ROWS, COLS, FRAMES = 3, 5, 2


@pytest.fixture
def wan_pipe():
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call(pipe, seed=0, **kwargs):
    g = torch.Generator().manual_seed(1)
    args = dict(prompt_embeds=torch.randn(1, 6, 32, generator=g),
                negative_prompt_embeds=torch.randn(1, 6, 32, generator=g),
                **SIZE, num_inference_steps=8, output_type="latent", generator=torch.Generator().manual_seed(seed))
    args.update(kwargs)
    return pipe(**args).frames


@pytest.mark.parametrize("num_frames", [0, 2, 6, 8])
def test_frame_counts_stock_rounds_are_rounded_the_same_way(wan_pipe, num_frames):
    stock = _call(wan_pipe, num_frames=num_frames, num_inference_steps=2)
    apply_fresco(wan_pipe, FrescoConfig(stage_scales=(1.0,)))
    with pytest.warns(UserWarning, match=f"num_frames={num_frames}: Wan makes 4k") as caught:
        assert torch.equal(_call(wan_pipe, num_frames=num_frames, num_inference_steps=2), stock)
    assert [w.filename for w in caught if "Wan makes" in str(w.message)] == [__file__]  # the caller's line


def test_wan_rope_at_positions_matches_the_stock_table(wan_pipe):
    rope = wan_pipe.transformer.rope
    geometry = TokenGeometry(16, 2, ROWS, COLS, frames=FRAMES)
    positions = TokenLayout.uniform(1, geometry, 0, torch.device("cpu")).positions(0)[0]
    stock = rope(torch.zeros(1, 16, FRAMES, 2 * ROWS, 2 * COLS))
    ours = wan_rope_at_positions(rope, positions)
    assert torch.equal(ours[0], stock[0]) and torch.equal(ours[1], stock[1])


def test_unsupported_wan_settings_are_refused(wan_pipe):
    wan_pipe.scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)
    with pytest.raises(ValueError, match="needs a FlowMatchEulerDiscreteScheduler"):
        apply_fresco(wan_pipe, FrescoConfig())


def test_restart_shift_scale_multiplies_the_static_shift_of_later_stages():
    """The static-shift path (Wan's scheduler, shift 3): the sketch keeps it, the full stage gets twice it."""
    from fresco_plugin import last_fresco_run
    from fresco_plugin.schedule import shift_sigmas

    def sigmas(scale):
        pipe = tiny_wan_pipeline()
        pipe.set_progress_bar_config(disable=True)
        apply_fresco(pipe, FrescoConfig(stage_steps=(3, 4), promotion_rounds=0, restart_shift_scale=scale))
        _call(pipe)
        return np.array(last_fresco_run(pipe).sigmas_used)

    plain, scaled = sigmas(1.0), sigmas(2.0)
    expected = shift_sigmas(np.linspace(1.0, 1 / 7, 7)[3:].astype(np.float32), shift=6.0)
    assert np.array_equal(scaled[:3], plain[:3])
    assert np.allclose(scaled[3:], expected, atol=1e-6) and (scaled[3:] > plain[3:]).all()


def test_own_restart_spacing_starts_where_the_scaled_shift_does_and_spaces_steps_by_the_own_shift():
    """``restart_spacing="own"`` on the static-shift path (Wan, shift 3, restart x2): the full stage's first sigma is
    the scaled shift's, its last is stock's (shift 3 at the same base point), evenly spaced in the own shift's time
    between; the sketch does not change."""
    from fresco_plugin import last_fresco_run
    from fresco_plugin.schedule import shift_sigmas

    def sigmas(spacing):
        pipe = tiny_wan_pipeline()
        pipe.set_progress_bar_config(disable=True)
        apply_fresco(pipe, FrescoConfig(stage_steps=(3, 4), promotion_rounds=0, restart_shift_scale=2.0,
                                        restart_spacing=spacing))
        _call(pipe)
        return np.array(last_fresco_run(pipe).sigmas_used)

    shifted, own = sigmas("shifted"), sigmas("own")
    base = np.linspace(1.0, 1 / 7, 7).astype(np.float32)
    start = shift_sigmas(base[3:4], shift=6.0)[0]
    first = start / (3.0 - 2.0 * start)  # the base point shift 3 maps to that start
    expected = shift_sigmas(np.linspace(first, 1 / 7, 4), shift=3.0)
    assert np.array_equal(own[:3], shifted[:3])
    assert np.isclose(own[3], shifted[3], atol=1e-6) and np.isclose(own[-1], shift_sigmas(base[-1:], shift=3.0)[0])
    assert np.allclose(own[3:], expected, atol=1e-6) and (own[4:] < shifted[4:]).all()


def test_a_stage_shift_of_none_leaves_that_stage_at_its_own_shift(wan_pipe):
    """``stage_shifts=(0.5, None)`` (the low-budget video presets): the sketch runs at 0.5, the full stage at the
    scheduler's own static shift (3) times the restart, as with no stage shifts at all."""
    from fresco_plugin import last_fresco_run
    from fresco_plugin.schedule import shift_sigmas

    def sigmas(shifts):
        apply_fresco(wan_pipe, FrescoConfig(stage_steps=(3, 4), promotion_rounds=0, stage_shifts=shifts,
                                            restart_shift_scale=2.0))
        _call(wan_pipe, guidance_scale=5.0, num_inference_steps=None)
        used = np.array(last_fresco_run(wan_pipe).sigmas_used)
        remove_fresco(wan_pipe)
        return used

    own, explicit, mixed = sigmas(None), sigmas((0.5, 3.0)), sigmas((0.5, None))
    base = np.linspace(1.0, 1 / 7, 7).astype(np.float32)
    assert np.allclose(mixed[:3], shift_sigmas(base[:3], shift=0.5), atol=1e-6)
    assert np.array_equal(mixed[3:], own[3:]) and np.array_equal(mixed, explicit)
    assert (mixed[1:3] < own[1:3]).all()


def test_without_guidance_the_later_stages_restart_at_the_unguided_scale(wan_pipe):
    """A video preset's unguided_restart_shift_scale: 3 when the call runs without classifier-free guidance
    (guidance_scale 1), the guided 2 otherwise."""
    from fresco_plugin import last_fresco_run

    def sigmas(guidance_scale, **scales):
        apply_fresco(wan_pipe, FrescoConfig(stage_steps=(3, 4), promotion_rounds=0, **scales))
        _call(wan_pipe, guidance_scale=guidance_scale, num_inference_steps=None)
        used = last_fresco_run(wan_pipe).sigmas_used
        remove_fresco(wan_pipe)
        return used

    both = dict(restart_shift_scale=2.0, unguided_restart_shift_scale=3.0)
    assert sigmas(5.0, **both) == sigmas(5.0, restart_shift_scale=2.0)
    unguided, guided_plan = sigmas(1.0, **both), sigmas(1.0, restart_shift_scale=2.0)
    assert unguided == sigmas(1.0, restart_shift_scale=3.0)
    assert unguided[:3] == guided_plan[:3] and all(a > b for a, b in zip(unguided[3:], guided_plan[3:]))


def test_the_unguided_restart_spacing_applies_only_without_guidance(wan_pipe):
    """The 3x video presets' ``unguided_restart_spacing="own"``: a guided call keeps the scaled shift's spacing, an
    unguided one runs as ``restart_spacing="own"`` at the unguided scale would."""
    from fresco_plugin import last_fresco_run

    def sigmas(guidance_scale, **kwargs):
        apply_fresco(wan_pipe, FrescoConfig(stage_steps=(3, 4), promotion_rounds=0, restart_shift_scale=2.0,
                                            unguided_restart_shift_scale=3.0, **kwargs))
        _call(wan_pipe, guidance_scale=guidance_scale, num_inference_steps=None)
        used = last_fresco_run(wan_pipe).sigmas_used
        remove_fresco(wan_pipe)
        return used

    assert sigmas(5.0, unguided_restart_spacing="own") == sigmas(5.0)
    unguided = sigmas(1.0, unguided_restart_spacing="own")
    assert unguided == sigmas(1.0, restart_spacing="own") and unguided != sigmas(1.0)


def test_sizes_stock_rounds_down_are_rounded_the_same_way(wan_pipe):
    """Stock Wan rounds height and width down to whole patches with a warning (4x4 patches: multiples of 32); so does
    Fresco, instead of refusing."""
    torch.manual_seed(0)
    wan_pipe.transformer = diffusers.WanTransformer3DModel.from_config(
        {**wan_pipe.transformer.config, "patch_size": (1, 4, 4)})
    stock = _call(wan_pipe, height=48, width=80, num_inference_steps=2)
    assert stock.shape[-2:] == (4, 8)  # 32x64 pixels
    apply_fresco(wan_pipe, FrescoConfig(stage_scales=(1.0,)))
    with pytest.warns(UserWarning, match="height=48, width=80: Wan needs multiples of 32; using 32x64"):
        assert torch.equal(_call(wan_pipe, height=48, width=80, num_inference_steps=2), stock)


def test_wan22_experts_take_their_own_noise_levels_and_guidance_scales():
    """Wan2.2 A14B: transformer above the boundary timestep, transformer_2 (with guidance_scale_2) below it; one
    full-resolution stage is stock bit for bit, and a Fresco plan sends every forward to the expert of its timestep."""
    pipe = tiny_wan_pipeline(two_experts=True)
    pipe.set_progress_bar_config(disable=True)
    guided = dict(guidance_scale=5.0, guidance_scale_2=2.0)
    stock = _call(pipe, **guided)
    assert not torch.equal(_call(pipe, guidance_scale=5.0, guidance_scale_2=5.0), stock)  # the second scale counts
    apply_fresco(pipe, FrescoConfig(stage_scales=(1.0,)))
    assert torch.equal(_call(pipe, **guided), stock)

    remove_fresco(pipe)
    apply_fresco(pipe, FrescoConfig(stage_steps=(3, 5), promotion_ratio=0.3, restart_shift_scale=2.0))
    seen = []
    for name in ("transformer", "transformer_2"):
        getattr(pipe, name).register_forward_pre_hook(
            lambda module, args, kwargs, name=name: seen.append((name, float(kwargs["timestep"][0]))),
            with_kwargs=True)
    out = _call(pipe, **guided)
    boundary = 0.875 * 1000
    assert {name for name, _ in seen} == {"transformer", "transformer_2"} and torch.isfinite(out).all()
    assert all((t >= boundary) == (name == "transformer") for name, t in seen), seen


def test_wan22_ti2v_gives_every_token_the_step_timestep():
    pipe = tiny_wan_pipeline(expand_timesteps=True)
    pipe.set_progress_bar_config(disable=True)
    apply_fresco(pipe, FrescoConfig(stage_steps=(3, 5), promotion_ratio=0.3))
    shapes = []
    pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append((tuple(kwargs["timestep"].shape), _tokens(kwargs))),
        with_kwargs=True)
    assert torch.isfinite(_call(pipe)).all()
    assert all(shape == (1, tokens) for shape, tokens in shapes) and len({t for _, t in shapes}) > 1  # rounds too


def _tokens(kwargs) -> int:
    _, _, frames, height, width = kwargs["hidden_states"].shape
    return frames * height * width // 4


def test_mixed_strips_longer_than_the_rope_table_run_as_with_a_longer_table(wan_pipe):
    """Wan's rope keeps a table of ``rope_max_seq_len`` positions per axis (32 here, 1024 in the real models, whose
    mixed sets hold tens of thousands of tokens); a mixed strip longer than that must still run, and give what a
    transformer with a longer table gives (the rope has no weights, so only the table's length differs)."""
    config = FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(6, 4), promotion_rounds=2)
    apply_fresco(wan_pipe, config)
    short_table = _call(wan_pipe, **SIZE, guidance_scale=1.0)
    strips = wan_pipe._fresco_runner.last_run.tokens_per_step
    assert max(strips) > wan_pipe.transformer.config.rope_max_seq_len
    remove_fresco(wan_pipe)
    assert not wan_pipe.transformer.rope._forward_pre_hooks and not wan_pipe.transformer.rope._forward_hooks
    rope = wan_pipe.transformer.rope
    wan_pipe.transformer.rope = type(rope)(rope.attention_head_dim, rope.patch_size, 1024)
    apply_fresco(wan_pipe, config)
    assert torch.equal(_call(wan_pipe, **SIZE, guidance_scale=1.0), short_table)
