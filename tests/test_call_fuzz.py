"""Property test of the call contract: 300 generated calls of the tiny FLUX pipeline with Fresco on. Each call either
runs (finite output of the stock pipeline's shape, for the same arguments) or is refused with a ValueError that names
the argument to change; never another exception, never NaN."""

import warnings

import pytest
import torch
from conftest import text_inputs
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fresco_plugin import FrescoConfig, apply_fresco, remove_fresco
from fresco_plugin.integrations.tiny import tiny_flux_pipeline

CONFIGS = {
    "default": FrescoConfig(),
    "fixed steps": FrescoConfig(stage_steps=(3, 2)),
    "three stages": FrescoConfig(stage_scales=(0.25, 0.5, 1.0)),
    "whole stages": FrescoConfig(promotion_rounds=0, strategy="fresh-noise"),
    "threshold": FrescoConfig(promotion_threshold=0.5),
}
ARGUMENTS = ("height", "width", "num_inference_steps", "num_images_per_prompt", "guidance_scale", "true_cfg_scale",
             "output_type", "max_sequence_length")


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, call):
    text = text_inputs(batch=call.pop("batch"))
    if call.pop("negative"):
        negative = text_inputs(batch=text["prompt_embeds"].shape[0], seed=2)
        call.update(negative_prompt_embeds=negative["prompt_embeds"],
                    negative_pooled_prompt_embeds=negative["pooled_prompt_embeds"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipe(**text, **call, generator=torch.Generator().manual_seed(0)).images


def _outcome(pipe, call):
    try:
        return _run(pipe, dict(call)), None
    except Exception as error:  # noqa: BLE001 - the stock pipeline's own failures are what we compare with
        return None, error


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True)
@given(
    config=st.sampled_from(sorted(CONFIGS)),
    height=st.sampled_from([1, 8, 16, 24, 32, 36, 48]),
    width=st.sampled_from([8, 16, 32, 40]),
    num_inference_steps=st.integers(1, 6),
    num_images_per_prompt=st.sampled_from([0, 1, 1, 1, 2]),
    batch=st.integers(1, 2),
    guidance_scale=st.sampled_from([0.0, 1.0, 3.5]),
    true_cfg_scale=st.sampled_from([1.0, 2.0]),
    negative=st.booleans(),
    output_type=st.sampled_from(["latent", "pt", "np"]),
)
def test_every_call_runs_like_stock_or_is_refused_naming_the_argument(pipe, config, **call):
    stock, stock_error = _outcome(pipe, call)
    apply_fresco(pipe, CONFIGS[config])
    try:
        ours, error = _outcome(pipe, call)
    finally:
        remove_fresco(pipe)
    if error is not None:
        if isinstance(error, ValueError):
            assert any(name in str(error) for name in ARGUMENTS + ("prompt_embeds", "FrescoConfig")), str(error)
            event("refused")
            return
        # any other failure only where stock fails too (diffusers does not repeat passed pooled embeds per image)
        assert stock_error is not None and not isinstance(stock_error, ValueError), (
            f"{type(error).__name__}: {error} for {call}; stock gave {stock_error!r}")
        event("stock crashes too")
        return
    # where stock refuses (a ValueError), Fresco must refuse too; where stock crashes, Fresco may do better
    assert not isinstance(stock_error, ValueError), f"stock refused {call} with {stock_error!r} but Fresco ran"
    event("ran")
    ours = torch.as_tensor(ours)
    assert torch.isfinite(ours).all(), call
    if stock is not None:
        assert ours.shape == torch.as_tensor(stock).shape, call
