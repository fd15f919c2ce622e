"""diffusers feature caches with Fresco: each composes (and a no-skip setting changes nothing) or is refused."""

import pytest
import torch
from conftest import text_inputs
from diffusers import FluxPipeline
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    SeaCacheConfig,
    TaylorSeerCacheConfig,
    TextKVCacheConfig,
)

from fresco_plugin import FrescoConfig, apply_fresco
from fresco_plugin.tools.tiny import tiny_flux_pipeline

CONFIG = FrescoConfig(stage_scales=(0.25, 0.5, 1.0), promotion_rounds=1, target_speedup=None)  # 4 steps per stage


def _pipe():
    pipe = tiny_flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call(pipe, batch=1, **kwargs):
    generators = [torch.Generator().manual_seed(s) for s in range(batch)]
    return pipe(**text_inputs(batch=batch), height=64, width=64, num_inference_steps=12, output_type="latent",
                generator=generators, **kwargs).images


def _last_block_calls(pipe):
    calls = []
    # a skipped block is still called (the cache hook answers for it); its projections are not
    last = pipe.transformer.single_transformer_blocks[-1].attn.to_q
    handle = last.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("cache", [FirstBlockCacheConfig(threshold=0.0), TextKVCacheConfig(), SeaCacheConfig(),
                                   TaylorSeerCacheConfig(cache_interval=1)])
def test_caches_that_never_skip_change_nothing(cache, batch):
    """With Fresco's resets and per-image cache contexts, a cache told never to skip is exactly no cache."""
    pipe = _pipe()
    apply_fresco(pipe, CONFIG)
    plain = _call(pipe, batch)
    pipe.transformer.enable_cache(cache)
    assert torch.allclose(_call(pipe, batch), plain, atol=1e-6)


@pytest.mark.parametrize("cache", [FirstBlockCacheConfig(threshold=1e9), TaylorSeerCacheConfig(),
                                   PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                                   spatial_attention_timestep_skip_range=(-1, 1001),
                                                                   current_timestep_callback=lambda: 500)])
def test_skipping_caches_run_across_every_switch(cache):
    """Without Fresco's resets these raise a size mismatch at the first switch; with them they skip and run on."""
    pipe = _pipe()
    apply_fresco(pipe, CONFIG)
    plain = _call(pipe)
    pipe.transformer.enable_cache(cache)
    calls, handle = _last_block_calls(pipe)
    cached = _call(pipe)
    handle.remove()
    assert torch.isfinite(cached).all() and cached.shape == plain.shape
    if not isinstance(cache, PyramidAttentionBroadcastConfig):
        assert len(calls) < 12  # some steps really were served from the cache


def _attention_broadcast_counts(pipe) -> list[int]:
    """PyramidAttentionBroadcast's forward count in one attention block after every step of a generation."""
    pipe.transformer.enable_cache(PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 1001),
        current_timestep_callback=lambda: 500))
    registries = [m._diffusers_hook for m in pipe.transformer.modules() if hasattr(m, "_diffusers_hook")]
    state = next(r.get_hook("pyramid_attention_broadcast") for r in registries
                 if r.get_hook("pyramid_attention_broadcast") is not None).state
    counts = []

    def record(pipe, index, timestep, kwargs):
        counts.append(state.iteration)
        return kwargs

    _call(pipe, callback_on_step_end=record)
    return counts


def test_pyramid_attention_broadcast_counts_steps_through_switches_as_stock():
    """Its skip pattern follows its forward count: a stage switch drops the cached attention, not the count."""
    fresco = _pipe()
    apply_fresco(fresco, CONFIG)
    assert _attention_broadcast_counts(fresco) == _attention_broadcast_counts(_pipe()) == list(range(1, 13))


def test_the_reset_is_what_makes_them_run(monkeypatch):
    """Guard for the test above: without the reset at a token-count change, FirstBlockCache breaks at the switch."""
    pipe = _pipe()
    apply_fresco(pipe, CONFIG)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=1e9))
    monkeypatch.setattr(pipe.transformer, "_reset_stateful_cache", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="size of tensor"):
        _call(pipe)


@pytest.mark.parametrize("cache,name", [
    (MagCacheConfig(num_inference_steps=12, mag_ratios=torch.ones(12).tolist()), "MagCacheConfig"),
    (FasterCacheConfig(spatial_attention_block_skip_range=2, current_timestep_callback=lambda: 500),
     "FasterCacheConfig"),
])
def test_caches_that_cannot_compose_are_refused_in_either_order(cache, name):
    pipe = _pipe()
    pipe.transformer.enable_cache(cache)
    with pytest.raises(ValueError, match=f"{name} does not compose with Fresco.*FirstBlockCacheConfig"):
        apply_fresco(pipe, CONFIG)
    pipe.transformer.disable_cache()
    apply_fresco(pipe, CONFIG)
    stock = FluxPipeline.from_pipe(pipe)  # a stock pipeline on the same transformer may run any cache
    pipe.transformer.enable_cache(cache)
    assert type(stock.transformer._cache_config).__name__ == name
    with pytest.raises(ValueError, match=f"{name} does not compose with Fresco"):
        _call(pipe)  # refused before the first forward
    pipe.transformer.disable_cache()
    assert _call(pipe).shape == (1, 1024, 16)


def test_pyramid_attention_broadcast_is_refused_for_split_batches():
    pipe = _pipe()
    apply_fresco(pipe, CONFIG)
    pipe.transformer.enable_cache(PyramidAttentionBroadcastConfig(current_timestep_callback=lambda: 500))
    with pytest.raises(ValueError, match="one attention state per transformer.*2 images"):
        _call(pipe, batch=2)
    assert _call(pipe, batch=1).shape == (1, 1024, 16)


def test_images_with_their_own_layouts_keep_their_own_cache_state():
    """A batch whose images hold different layouts runs one forward per image, each in its own cache context, so
    a first-block cache that skips gives every image what it gives that image alone."""
    pipe = _pipe()
    apply_fresco(pipe, CONFIG)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=1e9))
    texts = [text_inputs(seed=s) for s in (1, 2)]
    batch = {k: torch.cat([t[k] for t in texts]) for k in texts[0]}
    common = dict(height=64, width=64, num_inference_steps=12, output_type="latent")
    together = pipe(**batch, **common, generator=[torch.Generator().manual_seed(s) for s in (10, 20)]).images
    for index, (text, seed) in enumerate(zip(texts, (10, 20))):
        alone = pipe(**text, **common, generator=torch.Generator().manual_seed(seed)).images
        assert torch.allclose(together[index], alone[0], atol=1e-5)
