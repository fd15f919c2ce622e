"""Fresco on HunyuanVideo stacked with diffusers' feature caches, quantized weights and torch.compile (tiny random
pipeline, odd 4x5 token grid, padded text), as the FLUX tests do for FLUX: every cache config composes or is
refused, quantized Fresco stays as close to unquantized Fresco as quantized stock does to stock, and compiles per
generation are bounded."""

import pytest
import torch
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    SeaCacheConfig,
    TaylorSeerCacheConfig,
    TextKVCacheConfig,
)
from quantizers import QUANTIZERS
from quantizers import relative_error as _relative
from torch._dynamo.testing import CompileCounter

from fresco_plugin import FrescoConfig, apply_fresco
from fresco_plugin.tools.tiny import tiny_hunyuan_video_pipeline

CONFIG = FrescoConfig(stage_scales=(0.5, 1.0), promotion_rounds=1, target_speedup=None)  # 3 token counts, 8 steps
WHOLE_STAGES = FrescoConfig(stage_scales=(0.5, 1.0), promotion_rounds=0, target_speedup=None)
SIZE = dict(height=64, width=80, num_frames=5)  # 2 latent frames x 4 x 5 tokens
STEPS = 8


def _pipe(quantize=None, config=CONFIG):
    pipe = tiny_hunyuan_video_pipeline()
    pipe.set_progress_bar_config(disable=True)
    if quantize is not None:
        quantize(pipe.transformer)
    if config is not None:
        apply_fresco(pipe, config)
    return pipe


def _call(pipe):
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(1, 8, dtype=torch.long)
    mask[:, 5:] = 0
    return pipe(prompt_embeds=torch.randn(1, 8, 16, generator=g), pooled_prompt_embeds=torch.randn(1, 8, generator=g),
                prompt_attention_mask=mask, **SIZE, num_inference_steps=STEPS, output_type="latent",
                generator=torch.Generator().manual_seed(0)).frames


@pytest.mark.parametrize("cache", [FirstBlockCacheConfig(threshold=0.0), TextKVCacheConfig(), SeaCacheConfig(),
                                   TaylorSeerCacheConfig(cache_interval=1)])
def test_caches_that_never_skip_change_nothing(cache):
    pipe = _pipe()
    plain = _call(pipe)
    pipe.transformer.enable_cache(cache)
    assert torch.allclose(_call(pipe), plain, atol=1e-6)


@pytest.mark.parametrize("cache", [FirstBlockCacheConfig(threshold=1e9), TaylorSeerCacheConfig(),
                                   PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                                   spatial_attention_timestep_skip_range=(-1, 1001),
                                                                   current_timestep_callback=lambda: 500)])
def test_skipping_caches_run_across_every_switch(cache):
    pipe = _pipe()
    plain = _call(pipe)
    pipe.transformer.enable_cache(cache)
    calls = []
    last = pipe.transformer.single_transformer_blocks[-1].attn.to_q
    handle = last.register_forward_pre_hook(lambda *a: calls.append(1))
    cached = _call(pipe)
    handle.remove()
    assert torch.isfinite(cached).all() and cached.shape == plain.shape
    assert not torch.allclose(cached, plain, atol=1e-6)  # the cache really changed the run
    if not isinstance(cache, PyramidAttentionBroadcastConfig):  # PAB skips attention, not whole blocks
        assert len(calls) < STEPS


def test_the_reset_is_what_makes_them_run(monkeypatch):
    pipe = _pipe()
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=1e9))
    monkeypatch.setattr(pipe.transformer, "_reset_stateful_cache", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="size of tensor"):
        _call(pipe)


@pytest.mark.parametrize("cache,name", [
    (MagCacheConfig(num_inference_steps=STEPS, mag_ratios=torch.ones(STEPS).tolist()), "MagCacheConfig"),
    (FasterCacheConfig(spatial_attention_block_skip_range=2, current_timestep_callback=lambda: 500),
     "FasterCacheConfig"),
])
def test_caches_that_cannot_compose_are_refused_in_either_order(cache, name):
    pipe = _pipe(config=None)
    pipe.transformer.enable_cache(cache)
    with pytest.raises(ValueError, match=f"{name} does not compose with Fresco.*FirstBlockCacheConfig"):
        apply_fresco(pipe, CONFIG)
    pipe.transformer.disable_cache()
    apply_fresco(pipe, CONFIG)
    pipe.transformer.enable_cache(cache)  # not patched: another pipeline may share this transformer
    with pytest.raises(ValueError, match=f"{name} does not compose with Fresco"):
        _call(pipe)  # refused before the first forward


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_quantized_fresco_stays_as_close_as_quantized_stock(name):
    """The tolerance of tests/test_quantization.py, for the same reasons: 1.5x the stock relative error plus 1e-3
    with whole-stage switches; with promotion rounds a near-tied token may flip, so only a bound."""
    quantize = QUANTIZERS[name]
    stock_error = _relative(_call(_pipe(quantize, None)), _call(_pipe(config=None)))
    fresco_error = _relative(_call(_pipe(quantize, WHOLE_STAGES)), _call(_pipe(config=WHOLE_STAGES)))
    assert 0 < fresco_error <= 1.5 * stock_error + 1e-3
    with_rounds = _call(_pipe(quantize))
    assert torch.isfinite(with_rounds).all()
    assert _relative(with_rounds, _call(_pipe())) < 0.15


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compile_repeated_blocks_compiles_a_bounded_number_of_times(fresh_dynamo):
    """HunyuanVideo's repeated blocks include the patch embedding, which sees the 5-D latent: the strip Fresco sends
    mixed token sets as has sides of 1 and 2 tokens, which dynamo specialises, and the attention mask's length
    guards once more. The first generation compiled 9 frames for the 4 block classes (torch 2.13), later ones none."""
    reference = _call(_pipe())
    pipe = tiny_hunyuan_video_pipeline()
    pipe.set_progress_bar_config(disable=True)
    counter = CompileCounter()
    pipe.transformer.compile_repeated_blocks(backend=counter, dynamic=True, fullgraph=True)
    apply_fresco(pipe, CONFIG)
    seen = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(k["hidden_states"].shape[2:]),
                                               with_kwargs=True)
    compiled = _call(pipe)
    per_generation = [counter.frame_count]
    _call(pipe)
    per_generation.append(counter.frame_count - per_generation[0])
    assert len(set(seen)) == 3  # a half-resolution grid, a mixed strip, the full grid
    assert per_generation[0] <= 3 * len(pipe.transformer._repeated_blocks) and per_generation[1] == 0
    assert torch.allclose(compiled, reference, atol=1e-5)
