"""apply_stack: quantization + Fresco + a feature cache in one call, checked before anything changes."""

import warnings

import pytest
import torch
from conftest import text_inputs
from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig

from fresco_plugin import FrescoConfig, apply_fresco, fresco_config_of
from fresco_plugin.integrations.stack import apply_stack, remove_stack
from fresco_plugin.tools.tiny import tiny_flux_pipeline

warnings.filterwarnings("ignore", module="torchao")
import optimum.quanto as quanto  # noqa: E402
import torchao.quantization as torchao_quantization  # noqa: E402

CONFIG = FrescoConfig(stage_scales=(0.25, 0.5, 1.0))


def _pipe():
    pipe = tiny_flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe):
    return pipe(**text_inputs(), height=64, width=64, num_inference_steps=12, output_type="latent",
                generator=torch.Generator().manual_seed(0)).images


@pytest.mark.parametrize("quantization", [torchao_quantization.Int8WeightOnlyConfig(), quanto.qint8])
def test_one_call_equals_the_three_steps_by_hand(quantization):
    cache = FirstBlockCacheConfig(threshold=0.2)
    stacked = apply_stack(_pipe(), CONFIG, cache=cache, quantization=quantization)
    by_hand = _pipe()
    if isinstance(quantization, torchao_quantization.Int8WeightOnlyConfig):
        torchao_quantization.quantize_(by_hand.transformer, quantization)
    else:
        quanto.quantize(by_hand.transformer, weights=quantization)
        quanto.freeze(by_hand.transformer)
    apply_fresco(by_hand, CONFIG)
    by_hand.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    assert torch.equal(_run(stacked), _run(by_hand))
    remove_stack(stacked)
    assert fresco_config_of(stacked) is None and not stacked.transformer.is_cache_enabled


def test_a_preset_name_and_no_extras_is_plain_fresco():
    pipe = apply_stack(_pipe(), "flux-dev-10x")
    assert fresco_config_of(pipe) == FrescoConfig.preset("flux-dev-10x")


def test_parts_that_cannot_run_are_refused_before_anything_changes():
    pipe = _pipe()
    weights = pipe.transformer.proj_out.weight.clone()
    with pytest.raises(ValueError, match="MagCacheConfig does not compose with Fresco"):
        apply_stack(pipe, CONFIG, cache=MagCacheConfig(num_inference_steps=12, mag_ratios=[1.0] * 12),
                    quantization=torchao_quantization.Int8WeightOnlyConfig())
    with pytest.raises(ValueError, match="quantization must be a torchao config"):
        apply_stack(pipe, CONFIG, quantization="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA GPU of compute capability 8.9"):
            apply_stack(pipe, CONFIG, quantization=torchao_quantization.Float8DynamicActivationFloat8WeightConfig())
    assert type(pipe.transformer.proj_out.weight) is torch.nn.Parameter
    assert torch.equal(pipe.transformer.proj_out.weight, weights)
    assert fresco_config_of(pipe) is None and not pipe.transformer.is_cache_enabled
