"""FLUX image to image beyond the adapter contract: strength keeps stock's steps, the sketch starts from the image."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import text_inputs

from fresco_plugin import FrescoConfig, apply_fresco, last_fresco_run, remove_fresco
from fresco_plugin.layout import pack
from fresco_plugin.tools.tiny import tiny_flux_img2img_pipeline

PICTURE = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
TWO_STAGES = FrescoConfig(stage_scales=(0.5, 1.0), promotion_rounds=0, target_speedup=None)  # equal shares


@pytest.fixture
def pipe():
    pipe = tiny_flux_img2img_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call(pipe, image=PICTURE, **kwargs):
    arguments = dict(image=image, height=32, width=32, strength=0.6, num_inference_steps=10, output_type="latent",
                     generator=torch.Generator().manual_seed(0))
    return pipe(**text_inputs(), **{**arguments, **kwargs}).images


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
def test_one_full_resolution_stage_is_stock_bit_for_bit_at_any_strength(pipe, strength):
    stock = _call(pipe, strength=strength)
    apply_fresco(pipe, FrescoConfig(stage_scales=(1.0,)))
    assert torch.equal(_call(pipe, strength=strength), stock)


def test_the_plan_runs_the_steps_strength_keeps_and_the_sketch_starts_from_the_image(pipe):
    image = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))  # given as latents: no VAE
    other = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    apply_fresco(pipe, TWO_STAGES)
    first = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kw: first.append(kw["hidden_states"]) if not first else None, with_kwargs=True)
    _call(pipe, image=image, strength=0.25, num_inference_steps=40)
    handle.remove()
    run = last_fresco_run(pipe)
    assert len(run.tokens_per_step) == 10 and run.tokens_per_step[0] == 8 * 8  # 10 of 40 steps, a 8x8 sketch
    assert 0.2 < run.sigmas_used[0] < 0.5  # started a quarter of the way down, not from pure noise

    def weight(tokens, latents):  # least squares: how much of the image at the sketch's resolution the start holds
        sketch = pack(F.avg_pool2d(latents, 2), 2)  # each sketch token: the mean of the latent pixels it covers
        return float((tokens * sketch).sum() / (sketch * sketch).sum())

    # stock's scale_noise at the sketch's first sigma: (1 - sigma) of the image plus independent noise
    assert weight(first[0], image) == pytest.approx(1 - run.sigmas_used[0], abs=0.1)
    assert abs(weight(first[0], other)) < 0.1


def test_the_default_plan_of_the_kept_steps_starts_where_stock_starts(pipe):
    """strength 0.25 keeps 10 of 40 steps; the default spends a third of them (3 + 2 steps) from the same sigma."""
    image = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    starts = []
    for config in (TWO_STAGES, FrescoConfig()):
        apply_fresco(pipe, config)
        _call(pipe, image=image, strength=0.25, num_inference_steps=40)
        run = last_fresco_run(pipe)
        starts.append(run.sigmas_used[0])
        remove_fresco(pipe)
    assert len(run.tokens_per_step) == 5
    assert starts[1] == pytest.approx(starts[0], abs=1e-6)


def test_a_config_with_fixed_steps_runs_them_as_the_tail_strength_keeps(pipe):
    apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(4, 4), promotion_rounds=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the plan's own steps supersede num_inference_steps, with a warning
        out = _call(pipe, strength=0.5)
    run = last_fresco_run(pipe)
    assert len(run.tokens_per_step) == 8 and torch.isfinite(out).all()
    assert out.shape == _call(tiny_flux_img2img_pipeline(), strength=0.5).shape
    remove_fresco(pipe)
    apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(4, 4), promotion_rounds=0,
                                    stage_shifts=(1.0, 1.0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _call(pipe, strength=0.5)
    # unshifted: 15 steps is the shortest schedule strength 0.5 keeps 8 of; the 8th sigma from its end is 8/15
    assert last_fresco_run(pipe).sigmas_used[0] == pytest.approx(8 / 15)


@pytest.mark.parametrize("arguments, named", [
    (dict(strength=0.0), "strength=0.0"),
    (dict(strength=1.5), "strength"),
    (dict(latents=torch.zeros(1, 256, 16)), "latents="),
])
def test_what_stock_would_refuse_or_fresco_cannot_follow_is_refused_naming_it(pipe, arguments, named):
    apply_fresco(pipe, TWO_STAGES)
    with pytest.raises(ValueError, match=named):
        _call(pipe, **arguments)
