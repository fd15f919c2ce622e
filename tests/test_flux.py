"""Fresco on a stock diffusers FluxPipeline (tiny random weights built from configs)."""

import math
import re
import warnings

import diffusers
import numpy as np
import pytest
import torch
from conftest import text_inputs

from fresco_plugin import FrescoConfig, apply_fresco, remove_fresco
from fresco_plugin.schedule import plan_stages, plan_token_counts
from fresco_plugin.tools.tiny import tiny_flux_pipeline

SIZE = dict(height=64, width=64)  # 32x32 = 1024 full-resolution tokens with the tiny VAE


def _call(pipe, seed=0, **kwargs):
    args = dict(**text_inputs(), **SIZE, num_inference_steps=8, output_type="latent")
    args.update(kwargs)
    if "generator" not in args:
        args["generator"] = torch.Generator().manual_seed(seed)
    return pipe(**args).images


def _record_tokens(pipe):
    seen = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["hidden_states"].shape[1]), with_kwargs=True
    )
    return seen, handle


def _expected_tokens(config, steps, full_tokens):
    """Tokens per model call that the plan predicts (32x32 full-resolution grid)."""
    return plan_token_counts(config, plan_stages(config, steps, min_score_history=2), 32, 32)


@pytest.mark.parametrize("pipe_name", ["flux_pipe", "schnell_pipe"])
@pytest.mark.parametrize("extra", [{}, {"num_images_per_prompt": 2}, {"true_cfg_scale": 3.0, "negative": True}])
def test_single_full_resolution_stage_is_bit_identical(request, pipe_name, extra):
    pipe = request.getfixturevalue(pipe_name)
    kwargs = dict(extra)
    if kwargs.pop("negative", False):
        negative = text_inputs(seed=5)
        kwargs.update(negative_prompt_embeds=negative["prompt_embeds"],
                      negative_pooled_prompt_embeds=negative["pooled_prompt_embeds"])
    stock = _call(pipe, **kwargs)
    apply_fresco(pipe, FrescoConfig(stage_scales=(1.0,)))
    assert torch.equal(_call(pipe, **kwargs), stock)


@pytest.mark.parametrize(
    "config,steps",
    [
        (FrescoConfig(), 8),
        (FrescoConfig(promotion_rounds=2, promotion_ratio=0.2, stage_fractions=(2, 1)), 9),
        (FrescoConfig(stage_scales=(0.25, 0.5, 1.0), promotion_rounds=1), 12),
        (FrescoConfig.preset("flux-dev-10x"), None),
    ],
)
def test_token_counts_follow_the_plan(flux_pipe, config, steps):
    apply_fresco(flux_pipe, config)
    seen, handle = _record_tokens(flux_pipe)
    kwargs = {} if steps is None else {"num_inference_steps": steps}
    args = dict(**text_inputs(), **SIZE, output_type="latent", generator=torch.Generator().manual_seed(0), **kwargs)
    flux_pipe(**args)
    handle.remove()
    assert seen == _expected_tokens(config, steps, 1024)
    assert seen[0] < 1024 and seen[-1] == 1024


@pytest.mark.parametrize("config", [FrescoConfig(), FrescoConfig(noise_source="hash", strategy="fresh-noise"),
                                    FrescoConfig(promotion_threshold=1e9, promotion_ratio=1.0)])
def test_batch_of_two_equals_two_single_calls(flux_pipe, config):
    apply_fresco(flux_pipe, config)
    texts = [text_inputs(seed=s) for s in (1, 2)]
    batch = {k: torch.cat([t[k] for t in texts]) for k in texts[0]}
    generators = [torch.Generator().manual_seed(s) for s in (10, 20)]
    together = flux_pipe(**batch, **SIZE, num_inference_steps=8, output_type="latent", generator=generators).images
    for index, (text, seed) in enumerate(zip(texts, (10, 20))):
        alone = flux_pipe(**text, **SIZE, num_inference_steps=8, output_type="latent",
                          generator=torch.Generator().manual_seed(seed)).images
        assert torch.allclose(together[index], alone[0], atol=1e-5)


def test_distilled_configs_with_presets(flux_pipe, schnell_pipe):
    apply_fresco(schnell_pipe, "flux-schnell-22x")
    seen, handle = _record_tokens(schnell_pipe)
    out = _call(schnell_pipe, num_inference_steps=4, guidance_scale=0.0)
    handle.remove()
    assert len(seen) == 4 and out.shape == (1, 1024, 16) and torch.isfinite(out).all()
    apply_fresco(flux_pipe, "flux-dev-10x")
    out = flux_pipe(**text_inputs(), **SIZE, num_images_per_prompt=3, output_type="latent").images
    assert out.shape == (3, 1024, 16) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])


def test_guidance_embedded_in_the_transformer_counts_as_guided(flux_pipe, schnell_pipe):
    """FLUX.1-dev's distilled guidance is guidance: the unguided restart is for models run without any (schnell
    without a negative prompt), and true CFG's negative branch is guidance too."""
    from fresco_plugin import last_fresco_run

    def restart(pipe, unguided_scale, **kwargs):
        apply_fresco(pipe, FrescoConfig(stage_steps=(2, 2), promotion_rounds=0, restart_shift_scale=2.0,
                                        unguided_restart_shift_scale=unguided_scale))
        pipe(**text_inputs(), **kwargs, height=32, width=32, output_type="latent",
             generator=torch.Generator().manual_seed(0))
        sigma = last_fresco_run(pipe).sigmas_used[2]
        remove_fresco(pipe)
        return sigma

    assert restart(flux_pipe, 3.0) == restart(flux_pipe, None)  # embedded guidance
    negative = {f"negative_{k}": v for k, v in text_inputs(seed=2).items()}
    assert restart(schnell_pipe, 3.0, true_cfg_scale=2.0, **negative) == restart(
        schnell_pipe, None, true_cfg_scale=2.0, **negative)  # true CFG
    assert restart(schnell_pipe, 3.0) > restart(schnell_pipe, None)  # no guidance at all


def test_own_restart_spacing_on_the_dynamic_shift_starts_at_the_restart_and_ends_at_stock(flux_pipe):
    """FLUX's resolution shift (``e^mu``) restarted x2: with ``restart_spacing="own"`` the full stage starts where the
    scaled shift starts it and its last step is a stock run's last."""
    from fresco_plugin import last_fresco_run

    def sigmas(**kwargs):
        apply_fresco(flux_pipe, FrescoConfig(stage_steps=(2, 3), promotion_rounds=0, **kwargs))
        flux_pipe(**text_inputs(), height=32, width=32, output_type="latent",
                  generator=torch.Generator().manual_seed(0))
        used = last_fresco_run(flux_pipe).sigmas_used
        remove_fresco(flux_pipe)
        return used

    shifted, own = sigmas(restart_shift_scale=2.0), sigmas(restart_shift_scale=2.0, restart_spacing="own")
    stock = sigmas(restart_shift_scale=1.0)
    assert own[:2] == shifted[:2] and own[2] == pytest.approx(shifted[2], abs=1e-6)
    assert own[-1] == pytest.approx(stock[-1], abs=1e-6) and own[-1] < shifted[-1]


def test_hash_field_and_user_latents(flux_pipe):
    apply_fresco(flux_pipe, FrescoConfig(noise_source="hash"))
    assert torch.equal(_call(flux_pipe, seed=3), _call(flux_pipe, seed=3))
    remove_fresco(flux_pipe)
    latents = torch.randn(1, 1024, 16, generator=torch.Generator().manual_seed(4))
    stock = _call(flux_pipe, latents=latents)
    apply_fresco(flux_pipe, FrescoConfig(stage_scales=(1.0,)))
    assert torch.equal(_call(flux_pipe, latents=latents), stock)
    with pytest.raises(ValueError, match="Fresco needs the full-resolution noise"):
        _call(flux_pipe, latents=latents[:, :256])


def test_callback_sees_every_step_and_can_edit_the_latents(flux_pipe):
    apply_fresco(flux_pipe, FrescoConfig())
    seen = []

    def callback(pipe, step, timestep, kwargs):
        seen.append((step, kwargs["latents"].shape[1], kwargs["prompt_embeds"].shape))
        return {"latents": kwargs["latents"] * 0.5} if step == 0 else {}

    halved = _call(flux_pipe, callback_on_step_end=callback,
                   callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    expected = _expected_tokens(FrescoConfig(), 8, 1024)  # the default's plan for 8 steps: 3 + 1
    assert [s[0] for s in seen] == list(range(len(expected))) and len(expected) == 4
    assert [s[1] for s in seen] == expected
    assert not torch.equal(halved, _call(flux_pipe))

    def wrong_shape(pipe, step, timestep, kwargs):
        return {"latents": kwargs["latents"][:, :10]}

    with pytest.raises(ValueError, match="callback_on_step_end returned latents of shape"):
        _call(flux_pipe, callback_on_step_end=wrong_shape)


def test_interrupt_still_returns_a_full_resolution_latent(flux_pipe):
    apply_fresco(flux_pipe, FrescoConfig())
    seen, handle = _record_tokens(flux_pipe)

    def stop(pipe, step, timestep, kwargs):
        pipe._interrupt = step >= 1
        return {}

    out = _call(flux_pipe, callback_on_step_end=stop)
    handle.remove()
    assert len(seen) == 2 and out.shape == (1, 1024, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("strategy", ["fresh-noise", "ralu", "dct-rewind"])
def test_comparison_rules_run_end_to_end(flux_pipe, strategy):
    apply_fresco(flux_pipe, FrescoConfig(strategy=strategy, stage_scales=(0.25, 0.5, 1.0)))
    out = _call(flux_pipe, num_inference_steps=12)
    assert out.shape == (1, 1024, 16) and torch.isfinite(out).all()
    assert torch.equal(out, _call(flux_pipe, num_inference_steps=12))


def test_bad_input_fails_before_any_model_call(flux_pipe):
    seen, handle = _record_tokens(flux_pipe)
    apply_fresco(flux_pipe, FrescoConfig(stage_scales=(0.25, 0.5, 1.0)))
    with pytest.raises(ValueError, match=r"height=36, width=64 give a 18x32 token grid.*multiples of 8"):
        _call(flux_pipe, height=36, width=64)  # 18 token rows have no whole quarter-resolution grid
    with pytest.raises(ValueError, match=r"height=1, width=64 give a 0x32 token grid.*multiples of 8"):
        _call(flux_pipe, height=1, width=64)  # stock makes an empty latent and fails deep inside
    with pytest.raises(ValueError, match=r"num_images_per_prompt=0: give a whole number >= 1"):
        _call(flux_pipe, num_images_per_prompt=0)
    with pytest.raises(ValueError, match="IP-Adapter"):
        _call(flux_pipe, ip_adapter_image_embeds=[torch.zeros(1, 4)])
    with pytest.raises(ValueError, match="drop sigmas="):
        _call(flux_pipe, sigmas=[1.0, 0.5])
    with pytest.raises(ValueError, match="already applied"):
        apply_fresco(flux_pipe, FrescoConfig())
    handle.remove()
    assert seen == []


def test_unsupported_pipelines_and_schedulers_are_refused(flux_pipe):
    with pytest.raises(ValueError, match="no adapter for object; supported pipelines: Flux2KleinPipeline, Flux2Pipel"):
        apply_fresco(object(), FrescoConfig())
    with pytest.raises(ValueError, match="FrescoConfig or a preset name"):
        apply_fresco(flux_pipe, {"stage_scales": (0.5, 1.0)})
    flux_pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)
    with pytest.raises(ValueError, match="stochastic_sampling"):
        apply_fresco(flux_pipe, FrescoConfig())
    flux_pipe.scheduler = diffusers.DDIMScheduler()
    with pytest.raises(ValueError, match="needs a FlowMatchEulerDiscreteScheduler"):
        apply_fresco(flux_pipe, FrescoConfig())
    assert type(flux_pipe) is diffusers.FluxPipeline


def test_remove_without_fresco_is_a_no_op(flux_pipe):
    assert remove_fresco(flux_pipe) is flux_pipe


def test_a_subclass_with_its_own_call_is_refused():
    class CustomFlux(diffusers.FluxPipeline):
        def __call__(self, *args, **kwargs):
            return "custom"

    pipe = tiny_flux_pipeline()
    pipe.__class__ = CustomFlux
    with pytest.raises(ValueError, match="overrides FluxPipeline.__call__"):
        apply_fresco(pipe, FrescoConfig())


@pytest.mark.parametrize("config,steps,warning", [
    ("flux-dev-10x", 28, "fixes 7 steps .* num_inference_steps=28 is not used"),  # FLUX.1-dev examples pass 28 or 50
    ("flux-dev-10x", 50, "num_inference_steps=50 is not used"),
    ("flux-schnell-22x", 4, None),  # schnell examples pass 4: the preset's own count
    (FrescoConfig(), 28, None),  # the pipeline's default count: 3 + 8 steps, a third of its image tokens
    (FrescoConfig(), 4, r"too few for target_speedup=3: running \(3, 1\) steps per stage, 1.88x"),
    (FrescoConfig(), 2, "too few for promotion_rounds=1; running 0 round"),
    (FrescoConfig(target_speedup=None), 4, "too few for promotion_rounds=1; running 0 round"),
    (FrescoConfig(), 1, r"fewer than the 2 stages .* running stages \(1.0,\)"),
    (FrescoConfig(stage_scales=(0.25, 0.5, 1.0)), 2, r"running stages \(0.5, 1.0\)"),
])
def test_existing_call_sites_keep_working(flux_pipe, config, steps, warning):
    """Turning Fresco on never breaks a call that passes its own num_inference_steps: a preset runs its plan, a
    plain config fits itself to the steps, and either says so once."""
    apply_fresco(flux_pipe, config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _call(flux_pipe, num_inference_steps=steps)
        _call(flux_pipe, num_inference_steps=steps)
    notes = [str(w.message) for w in caught if "Fresco:" in str(w.message)]
    # it points at the line that called the pipeline, not into Fresco or torch
    assert all(w.filename == __file__ for w in caught if "Fresco:" in str(w.message))
    assert torch.isfinite(out).all()
    if warning is None:
        assert not notes
    else:
        assert len(notes) == 1 and re.search(warning, notes[0]), notes  # once, not at every call
    if steps == 1:  # one step is the stock step
        remove_fresco(flux_pipe)
        assert torch.equal(out, _call(flux_pipe, num_inference_steps=1))


def test_mismatched_negative_embeds_are_refused_in_the_stock_words(flux_pipe):
    text = text_inputs()
    negative = dict(negative_prompt_embeds=text["prompt_embeds"][:, :-1], true_cfg_scale=2.0,
                    negative_pooled_prompt_embeds=text["pooled_prompt_embeds"])
    messages = []
    for fresco in (False, True):
        if fresco:
            apply_fresco(flux_pipe, FrescoConfig())
        with pytest.raises(ValueError) as refused:
            _call(flux_pipe, **negative)
        messages.append(str(refused.value))
    assert messages[0] == messages[1] and "must have the same shape" in messages[0]


@pytest.mark.parametrize("time_shift_type", ["exponential", "linear"])
def test_restart_shift_scale_multiplies_the_later_stages_shift(flux_pipe, time_shift_type):
    """The full stage's dynamic shift, scaled, applied as an explicit one: exp(mu) under the exponential time shift,
    mu itself under the linear one (diffusers' linear shift of sigma is mu * s / (1 + (mu - 1) * s), the same map)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from fresco_plugin import last_fresco_run
    from fresco_plugin.schedule import shift_sigmas

    flux_pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(flux_pipe.scheduler.config,
                                                                      time_shift_type=time_shift_type)

    def sigmas(scale):
        remove_fresco(flux_pipe)
        apply_fresco(flux_pipe, FrescoConfig(stage_steps=(3, 4), promotion_rounds=0, restart_shift_scale=scale))
        _call(flux_pipe)
        return np.array(last_fresco_run(flux_pipe).sigmas_used)

    plain, scaled = sigmas(1.0), sigmas(2.0)
    config = flux_pipe.scheduler.config
    mu = calculate_shift(1024, config.base_image_seq_len, config.max_image_seq_len, config.base_shift,
                         config.max_shift)
    shift = math.exp(mu) if time_shift_type == "exponential" else mu
    full_stage = np.linspace(1.0, 1 / 7, 7)[3:].astype(np.float32)
    assert np.allclose(plain[3:], shift_sigmas(full_stage, shift=shift), atol=1e-6)  # the stock shift, as mapped
    assert np.array_equal(scaled[:3], plain[:3])  # the sketch keeps its own shift
    assert np.allclose(scaled[3:], shift_sigmas(full_stage, shift=2 * shift), atol=1e-6)
    assert (scaled[3:] > plain[3:]).all()
