"""Property test of the call contract: 300 generated calls of the tiny FLUX pipeline, 100 each of FLUX.1-Kontext's,
Img2Img's, Qwen-Image's, FLUX.2-klein's and Z-Image's and 100 of each tiny video pipeline (HunyuanVideo,
HunyuanVideo-1.5, Wan2.1, Wan2.2's two experts) with Fresco on. Each call either runs (finite output of the stock
pipeline's shape, for the same arguments) or is refused with a ValueError that names the argument to change; never
another exception, never NaN."""

import functools
import warnings

import PIL.Image
import pytest
import torch
from conftest import text_inputs
from diffusers.guiders import ClassifierFreeGuidance
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fresco_plugin import FrescoConfig, apply_fresco, remove_fresco
from fresco_plugin.tools.tiny import (
    tiny_flux2_klein_pipeline,
    tiny_flux_img2img_pipeline,
    tiny_flux_kontext_pipeline,
    tiny_flux_pipeline,
    tiny_hunyuan_video15_pipeline,
    tiny_hunyuan_video_pipeline,
    tiny_qwen_image_pipeline,
    tiny_wan_pipeline,
    tiny_z_image_pipeline,
)

CONFIGS = {
    "default": FrescoConfig(),
    "equal shares": FrescoConfig(target_speedup=None),
    "fixed steps": FrescoConfig(stage_steps=(3, 2)),
    "three stages": FrescoConfig(stage_scales=(0.25, 0.5, 1.0)),
    "whole stages": FrescoConfig(promotion_rounds=0, strategy="fresh-noise"),
    "threshold": FrescoConfig(promotion_threshold=0.5),
}
ARGUMENTS = ("height", "width", "num_inference_steps", "num_images_per_prompt", "guidance_scale", "true_cfg_scale",
             "output_type", "max_sequence_length", "num_frames", "num_videos_per_prompt", "prompt_embeds", "image",
             "max_area", "strength", "latents", "FrescoConfig")


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
    return _generate(pipe, text, call)


_pipes = {}


def _generate(pipe, text, call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipe(**text, **call, generator=torch.Generator().manual_seed(0)).images


def _tiny(name, build):
    """One tiny pipeline per name for the whole module (building them per example would dominate the run)."""
    if name not in _pipes:
        _pipes[name] = build()
        _pipes[name].set_progress_bar_config(disable=True)
    return _pipes[name]


def _outcome(run, pipe, call):
    try:
        return run(pipe, dict(call)), None
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
    _judge(pipe, CONFIGS[config], call, _run)


def _judge(pipe, config, call, run):
    """Fresco's outcome for ``call`` against stock's: the same shape, or a refusal naming an argument."""
    stock, stock_error = _outcome(run, pipe, call)
    apply_fresco(pipe, config)
    try:
        ours, error = _outcome(run, pipe, call)
    finally:
        remove_fresco(pipe)
    if error is not None:
        if isinstance(error, ValueError):
            assert any(name in str(error) for name in ARGUMENTS), str(error)
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


def _kontext_run(pipe, call):
    side, images = call.pop("reference_side"), call.pop("reference_images")
    image = torch.rand(images, 3, side, side, generator=torch.Generator().manual_seed(3))
    return _run(pipe, {**call, "image": image, "_auto_resize": False})


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    config=st.sampled_from(sorted(CONFIGS)),
    height=st.sampled_from([16, 32, 48]),
    width=st.sampled_from([16, 32, 48]),
    max_area=st.sampled_from([0, 16 * 16, 32 * 32, 32 * 32, 48 * 48, 40 * 24]),
    reference_side=st.sampled_from([8, 16, 24]),
    reference_images=st.integers(1, 2),
    num_inference_steps=st.integers(1, 6),
    num_images_per_prompt=st.sampled_from([0, 1, 1, 1, 2]),
    batch=st.integers(1, 2),
    true_cfg_scale=st.sampled_from([1.0, 2.0]),
    negative=st.booleans(),
    output_type=st.sampled_from(["latent", "np"]),
)
def test_every_kontext_call_runs_like_stock_or_is_refused_naming_the_argument(config, **call):
    _judge(_tiny("kontext", tiny_flux_kontext_pipeline), CONFIGS[config], call, _kontext_run)


def _img2img_run(pipe, call):
    side, images = call.pop("picture_side"), call.pop("pictures")
    image = torch.rand(images, 3, side, side, generator=torch.Generator().manual_seed(3))
    return _run(pipe, {**call, "image": image})


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    config=st.sampled_from(sorted(CONFIGS)),
    height=st.sampled_from([8, 16, 32]),
    width=st.sampled_from([16, 32, 40]),
    strength=st.sampled_from([0.0, 0.1, 0.5, 0.8, 1.0]),
    picture_side=st.sampled_from([16, 24, 32]),
    pictures=st.integers(1, 2),
    num_inference_steps=st.integers(1, 8),
    num_images_per_prompt=st.sampled_from([0, 1, 1, 1, 2]),
    batch=st.integers(1, 2),
    true_cfg_scale=st.sampled_from([1.0, 2.0]),
    negative=st.booleans(),
    output_type=st.sampled_from(["latent", "np"]),
)
def test_every_img2img_call_runs_like_stock_or_is_refused_naming_the_argument(config, **call):
    _judge(_tiny("img2img", tiny_flux_img2img_pipeline), CONFIGS[config], call, _img2img_run)


def _qwen_run(pipe, call):
    batch, tokens = call.pop("batch"), call.pop("text_tokens")
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[:, tokens // 2 + 1:] = 0
    text = {"prompt_embeds": torch.randn(batch, tokens, 32, generator=g), "prompt_embeds_mask": mask}
    if call.pop("negative"):
        negative = torch.randn(batch, tokens, 32, generator=g)
        text.update(negative_prompt_embeds=negative, negative_prompt_embeds_mask=mask)
    return _generate(pipe, text, call)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    config=st.sampled_from(sorted(CONFIGS)),
    height=st.sampled_from([1, 8, 16, 32, 48]),
    width=st.sampled_from([8, 16, 32, 40]),
    text_tokens=st.integers(1, 6),
    num_inference_steps=st.integers(1, 6),
    num_images_per_prompt=st.sampled_from([0, 1, 1, 1, 2]),
    batch=st.integers(1, 2),
    true_cfg_scale=st.sampled_from([1.0, 4.0]),
    negative=st.booleans(),
    output_type=st.sampled_from(["latent", "np"]),
)
def test_every_qwen_image_call_runs_like_stock_or_is_refused_naming_the_argument(config, **call):
    _judge(_tiny("qwen", tiny_qwen_image_pipeline), CONFIGS[config], call, _qwen_run)


# calls of an image pipeline given its prompt embeddings; height and width None: stock's default size
EMBEDDED_TEXT_CALL = dict(
    config=st.sampled_from(sorted(CONFIGS)),
    height=st.sampled_from([None, 1, 8, 16, 32, 48]),
    width=st.sampled_from([None, 8, 16, 32, 40]),
    text_tokens=st.integers(1, 6),
    num_inference_steps=st.integers(1, 6),
    num_images_per_prompt=st.sampled_from([0, 1, 1, 1, 2]),
    batch=st.integers(1, 2),
    negative=st.booleans(),
    output_type=st.sampled_from(["latent", "np"]),
)


def _small_default(call, has_size=False):
    if call["height"] is None and call["width"] is None and not has_size:
        call["height"] = call["width"] = 32  # stock's default is 1024 pixels a side, a minute per call here


def _flux2_run(pipe, call):
    batch, tokens, reference = call.pop("batch"), call.pop("text_tokens"), call.pop("reference")
    g = torch.Generator().manual_seed(1)
    text = {"prompt_embeds": torch.randn(batch, tokens, 32, generator=g)}
    if call.pop("negative"):
        text["negative_prompt_embeds"] = torch.randn(batch, tokens, 32, generator=g)
    if reference:
        call["image"] = PIL.Image.new("RGB", reference, (40, 160, 90))
    return _generate(pipe, text, call)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(**EMBEDDED_TEXT_CALL, guidance_scale=st.sampled_from([1.0, 4.0]),
       reference=st.sampled_from([None, None, (64, 64), (80, 64)]))
def test_every_flux2_klein_call_runs_like_stock_or_is_refused_naming_the_argument(config, **call):
    _small_default(call, has_size=call["reference"] is not None)  # a reference gives stock its size
    _judge(_tiny("flux2-klein", tiny_flux2_klein_pipeline), CONFIGS[config], call, _flux2_run)


def _z_image_run(pipe, call):
    batch, tokens = call.pop("batch"), call.pop("text_tokens")
    g = torch.Generator().manual_seed(1)
    text = {"prompt_embeds": [torch.randn(tokens + i, 16, generator=g) for i in range(batch)]}
    if call.pop("negative"):
        text["negative_prompt_embeds"] = [torch.randn(tokens, 16, generator=g) for _ in range(batch)]
    return _generate(pipe, text, call)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(**EMBEDDED_TEXT_CALL, guidance_scale=st.sampled_from([0.0, 4.0]), cfg_truncation=st.sampled_from([1.0, 0.5]),
       cfg_normalization=st.booleans())
def test_every_z_image_call_runs_like_stock_or_is_refused_naming_the_argument(config, **call):
    _small_default(call)
    _judge(_tiny("z-image", tiny_z_image_pipeline), CONFIGS[config], call, _z_image_run)


def _video_text(name, batch, seed):
    g = torch.Generator().manual_seed(seed)
    if name.startswith("wan"):
        return {"prompt_embeds": torch.randn(batch, 6, 32, generator=g)}
    if name == "hunyuan-video15":
        return {"prompt_embeds": torch.randn(batch, 8, 16, generator=g), "prompt_embeds_mask": torch.ones(batch, 8),
                "prompt_embeds_2": torch.randn(batch, 5, 8, generator=g), "prompt_embeds_mask_2": torch.ones(batch, 5)}
    return {"prompt_embeds": torch.randn(batch, 8, 16, generator=g),
            "pooled_prompt_embeds": torch.randn(batch, 8, generator=g),
            "prompt_attention_mask": torch.ones(batch, 8, dtype=torch.long)}


def _video_run(name):
    def run(pipe, call):
        batch, guided = call.pop("batch"), call.pop("guided")
        text = _video_text(name, batch, 1)
        if name == "hunyuan-video15":  # guidance is the pipeline's guider, swapped in as a user would
            pipe.guider = ClassifierFreeGuidance(guidance_scale=6.0 if guided else 1.0)
            if guided:
                text.update({f"negative_{k}": v for k, v in _video_text(name, batch, 2).items()})
        elif guided:  # Wan guides with guidance_scale > 1 and a negative prompt, HunyuanVideo with true CFG
            negative = {f"negative_{k}": v for k, v in _video_text(name, batch, 2).items()}
            text.update(negative, **({"guidance_scale": 4.0} if name.startswith("wan") else {"true_cfg_scale": 2.0}))
        elif name.startswith("wan"):
            text["guidance_scale"] = 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pipe(**text, **call, generator=torch.Generator().manual_seed(0)).frames

    return run


VIDEO_PIPELINES = {"hunyuan-video": tiny_hunyuan_video_pipeline, "hunyuan-video15": tiny_hunyuan_video15_pipeline,
                   "wan": tiny_wan_pipeline,
                   "wan2.2-experts": functools.partial(tiny_wan_pipeline, two_experts=True)}


@pytest.mark.parametrize("name", sorted(VIDEO_PIPELINES))
@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    config=st.sampled_from(sorted(CONFIGS)),
    height=st.sampled_from([1, 16, 32, 48, 64]),
    width=st.sampled_from([16, 32, 40, 48]),
    num_frames=st.sampled_from([0, 1, 2, 5, 9]),
    num_inference_steps=st.integers(1, 6),
    num_videos_per_prompt=st.sampled_from([0, 1, 1, 1, 2]),
    batch=st.integers(1, 2),
    guided=st.booleans(),
    output_type=st.sampled_from(["latent", "np"]),
)
def test_every_video_call_runs_like_stock_or_is_refused_naming_the_argument(name, config, **call):
    _judge(_tiny(name, VIDEO_PIPELINES[name]), CONFIGS[config], call, _video_run(name))
