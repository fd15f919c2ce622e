"""The contract every Fresco adapter keeps with its stock diffusers pipeline, in diffusers' style: one table of cases,
every check parametrised over it. A new adapter is one row in ``CASES`` and gets every check.

Checks: identity (one full-resolution stage is stock, bit for bit, with and without guidance), removal, token counts
per forward following the plan (guidance branches on one layout), determinism, batching vs single calls, callbacks,
output types, save/load, pickle, deepcopy, pipelines sharing a transformer, feature caches, quantization, compile."""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import pickle
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig
from torch._dynamo.testing import CompileCounter
from torch.utils._pytree import tree_map

from fresco_plugin import FrescoConfig, apply_fresco, fresco_config_of, remove_fresco
from fresco_plugin.schedule import plan_stages, plan_token_counts
from fresco_plugin.tools.tiny import (
    tiny_flux2_klein_pipeline,
    tiny_flux2_pipeline,
    tiny_flux_img2img_pipeline,
    tiny_flux_kontext_pipeline,
    tiny_flux_pipeline,
    tiny_hunyuan_video15_i2v_pipeline,
    tiny_hunyuan_video15_pipeline,
    tiny_hunyuan_video_pipeline,
    tiny_qwen_image_edit_pipeline,
    tiny_qwen_image_pipeline,
    tiny_wan_pipeline,
    tiny_z_image_pipeline,
)

STEPS = 8
CONFIG = FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(4, 4), promotion_rounds=1, promotion_ratio=0.3)


def _randn(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator)


def _flux_text(batch: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"prompt_embeds": _randn(g, batch, 8, 32), "pooled_prompt_embeds": _randn(g, batch, 32)}


def _flux_negative(batch: int, seed: int) -> dict[str, Any]:
    text = _flux_text(batch, seed + 100)
    return {"true_cfg_scale": 3.0, "negative_prompt_embeds": text["prompt_embeds"],
            "negative_pooled_prompt_embeds": text["pooled_prompt_embeds"]}


def _hunyuan_text(batch: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, 8, dtype=torch.long)
    mask[:, 6:] = 0
    return {"prompt_embeds": _randn(g, batch, 8, 16), "pooled_prompt_embeds": _randn(g, batch, 8),
            "prompt_attention_mask": mask}


def _hunyuan_negative(batch: int, seed: int) -> dict[str, Any]:
    text = _hunyuan_text(batch, seed + 100)
    return {"true_cfg_scale": 2.0, "negative_prompt_embeds": text["prompt_embeds"],
            "negative_pooled_prompt_embeds": text["pooled_prompt_embeds"],
            "negative_prompt_attention_mask": text["prompt_attention_mask"]}


def _hunyuan_video15_text(batch: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask, mask_2 = torch.ones(batch, 8), torch.ones(batch, 5)
    mask[:, 6:], mask_2[:, 3:] = 0, 0
    return {"prompt_embeds": _randn(g, batch, 8, 16), "prompt_embeds_mask": mask,
            "prompt_embeds_2": _randn(g, batch, 5, 8), "prompt_embeds_mask_2": mask_2}


_HUNYUAN_VIDEO15_NO_CACHE = ("diffusers 0.42.1 registers no FirstBlockCache metadata for HunyuanVideo-1.5's blocks: "
                             "enabling the cache fails, Fresco or not")


def _pipeline_guider(batch: int, seed: int) -> dict[str, Any]:
    return {}  # guidance is the pipeline's guider, not an argument: test_hunyuan_video15.py runs it on


def _z_image_text(batch: int, seed: int) -> dict[str, Any]:  # one tensor per prompt, each its own length
    g = torch.Generator().manual_seed(seed)
    return {"prompt_embeds": [_randn(g, 7 - i % 3, 16) for i in range(batch)], "guidance_scale": 0.0}


def _z_image_negative(batch: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed + 100)
    return {"guidance_scale": 4.0, "negative_prompt_embeds": [_randn(g, 4 + i % 2, 16) for i in range(batch)]}


def _z_image_tokens(kwargs: dict[str, Any]) -> int:  # a list of (C, 1, H, W) latents; 2x2 patches
    return kwargs["_args"][0][0].shape[-2:].numel() // 4


def _wan_text(batch: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {"prompt_embeds": _randn(g, batch, 6, 32), "guidance_scale": 1.0}


def _wan_negative(batch: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed + 100)
    return {"guidance_scale": 5.0, "negative_prompt_embeds": _randn(g, batch, 6, 32)}


def _qwen_text(batch: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, 7, dtype=torch.long)
    mask[:, 5:] = 0
    return {"prompt_embeds": _randn(g, batch, 7, 32), "prompt_embeds_mask": mask, "true_cfg_scale": 1.0}


def _qwen_negative(batch: int, seed: int) -> dict[str, Any]:
    text = _qwen_text(batch, seed + 100)
    return {"true_cfg_scale": 3.0, "negative_prompt_embeds": text["prompt_embeds"],
            "negative_prompt_embeds_mask": text["prompt_embeds_mask"]}


def _flux2_text(batch: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {"prompt_embeds": _randn(g, batch, 8, 32), "guidance_scale": 4.0}


def _flux2_embedded_guidance(batch: int, seed: int) -> dict[str, Any]:  # FLUX.2-dev: one forward, another scale
    return {"guidance_scale": 6.5}


def _flux2_klein_text(batch: int, seed: int) -> dict[str, Any]:
    return {**_flux2_text(batch, seed), "guidance_scale": 1.0}


def _flux2_klein_negative(batch: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed + 100)
    return {"guidance_scale": 3.0, "negative_prompt_embeds": _randn(g, batch, 8, 32)}


# FLUX.2's references: a 64x80 picture (stock's smallest side is 64), 32x40 packed tokens appended to every forward
_FLUX2_REFERENCE = PIL.Image.new("RGB", (80, 64), (200, 90, 40))


_FLUX2_NO_CACHE = ("diffusers 0.42.1's FirstBlockCache does not run on FLUX.2, Fresco or not: its hook misreads the "
                   "blocks' outputs (TypeError), and Flux2Pipeline sets no cache context")


def _flux2_reference_tokens(kwargs: dict[str, Any]) -> int:
    return kwargs["hidden_states"].shape[1] - 32 * 40


def _sequence_tokens(kwargs: dict[str, Any]) -> int:
    return kwargs["hidden_states"].shape[1]


# HunyuanVideo-1.5 image to video's picture, 80x48: stock sizes the video from it
_I2V_PICTURE = PIL.Image.fromarray(np.random.default_rng(7).integers(0, 256, (48, 80, 3), dtype=np.uint8))


# Kontext's reference: a 32x32 picture, 16x16 packed tokens appended to every forward (its own size, not the output's)
_KONTEXT_REFERENCE = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def _kontext_tokens(kwargs: dict[str, Any]) -> int:  # the edited image's tokens, without the reference's
    return kwargs["hidden_states"].shape[1] - 16 * 16


def _video_tokens(kwargs: dict[str, Any]) -> int:  # 2x2 patches, one frame per latent frame
    _, _, frames, height, width = kwargs["hidden_states"].shape
    return frames * height * width // 4


@dataclass(frozen=True)
class Case:
    """One adapter: how to build its tiny pipeline and call it, and what stock gives back."""

    name: str
    stock_class: type
    build: Callable[[], Any]
    text: Callable[[int, int], dict[str, Any]]  # (batch, seed) -> conditioning, guidance off
    guided: Callable[[int, int], dict[str, Any]]  # (batch, seed) -> what turns the pipeline's guidance on
    size: dict[str, int]
    grid: tuple[int, ...]  # full-resolution token grid: rows, cols[, frames]
    output: str  # the output class's field
    tokens_in: Callable[[dict[str, Any]], int]  # tokens per image in a forward, from its keywords (+ "_args")
    output_types: tuple[str, ...] = ("latent", "pt", "np", "pil")
    extra: dict[str, Any] = field(default_factory=dict)
    slow: bool = False  # out of the default run (-m slow runs it)
    guided_branches: int = 2  # transformer forwards per step under guidance (1: guidance-distilled, an embedded scale)
    no_cache: str | None = None  # why stock diffusers runs no FirstBlockCache on this model (the cache check skips)
    no_callbacks: bool = False  # the stock pipeline takes no callback_on_step_end (the callback check skips)
    # diffusers has no context-parallel plan for this model: Fresco refuses one passed by hand (HunyuanVideo-1.5 runs
    # through ours in test_hunyuan_video_parallel.py); the others run across gloo processes in
    # test_context_parallel.py, test_hunyuan_video_parallel.py and test_diffusers_plans_parallel.py
    no_context_parallel: bool = False


CASES = [
    Case("flux", diffusers.FluxPipeline, tiny_flux_pipeline, _flux_text, _flux_negative,
         dict(height=64, width=64), (32, 32), "images", _sequence_tokens),
    # editing: max_area keeps stock at the requested size; no resize of the tiny reference to Kontext's resolutions
    Case("flux-kontext", diffusers.FluxKontextPipeline, tiny_flux_kontext_pipeline, _flux_text, _flux_negative,
         dict(height=64, width=64), (32, 32), "images", _kontext_tokens,
         extra=dict(image=_KONTEXT_REFERENCE, max_area=64 * 64, _auto_resize=False)),
    # image to image at strength 1 (every step kept, as the checks count them), the image given as latents (encoding a
    # picture samples the VAE from the first generator, so stock's batch differs from its single calls);
    # test_flux_img2img.py covers pictures and lower strengths
    Case("flux-img2img", diffusers.FluxImg2ImgPipeline, tiny_flux_img2img_pipeline, _flux_text, _flux_negative,
         dict(height=64, width=64), (32, 32), "images", _sequence_tokens,
         extra=dict(image=torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(6)), strength=1.0)),
    # Qwen-Image: positions from img_shapes through the rope hook; CFG rescaled by norms; a terminal shift
    Case("qwen-image", diffusers.QwenImagePipeline, tiny_qwen_image_pipeline, _qwen_text, _qwen_negative,
         dict(height=64, width=64), (16, 16), "images", _sequence_tokens),
    # Qwen-Image-Edit: stock resizes the reference to a 1024x1024 area (64x64 reference tokens, 3 s of VAE per call
    # on a CPU): slow; test_qwen_image.py checks identity and the reference in the default run
    Case("qwen-image-edit", diffusers.QwenImageEditPipeline, tiny_qwen_image_edit_pipeline, _qwen_text, _qwen_negative,
         dict(height=128, width=128), (8, 8), "images", lambda kwargs: kwargs["hidden_states"].shape[1] - 52 * 78,
         extra=dict(image=PIL.Image.new("RGB", (48, 32), (90, 140, 200))), slow=True),
    # FLUX.2-dev: guidance embedded (one forward a step), batch-normalised packed latents, a step-dependent shift
    Case("flux2", diffusers.Flux2Pipeline, tiny_flux2_pipeline, _flux2_text, _flux2_embedded_guidance,
         dict(height=64, width=64), (32, 32), "images", _sequence_tokens, guided_branches=1, no_cache=_FLUX2_NO_CACHE),
    # FLUX.2-klein: true CFG against an empty prompt; a reference picture rides along whole
    Case("flux2-klein", diffusers.Flux2KleinPipeline, tiny_flux2_klein_pipeline, _flux2_klein_text,
         _flux2_klein_negative, dict(height=64, width=64), (32, 32), "images", _flux2_reference_tokens,
         extra=dict(image=_FLUX2_REFERENCE), no_cache=_FLUX2_NO_CACHE),
    # 64x80 pixels, 5 frames: 2 latent frames of 4x5 tokens (an odd side)
    Case("hunyuan-video", diffusers.HunyuanVideoPipeline, tiny_hunyuan_video_pipeline, _hunyuan_text,
         _hunyuan_negative, dict(height=64, width=80, num_frames=5), (4, 5, 2), "frames", _video_tokens),
    # Z-Image: a list of latents and of per-prompt captions; guidance in the same forward as the condition
    Case("z-image", diffusers.ZImagePipeline, tiny_z_image_pipeline, _z_image_text, _z_image_negative,
         dict(height=64, width=64), (32, 32), "images", _z_image_tokens, guided_branches=1,
         no_cache="ZImageTransformer2DModel takes no diffusers cache in 0.42.1 (it has no enable_cache)",
         no_context_parallel=True),
    # HunyuanVideo-1.5 with its guider off (CFG is the pipeline's guider, checked in test_hunyuan_video15.py); 48x80
    # pixels, 5 frames: 2 latent frames of 12x20 tokens (1x1 patches)
    Case("hunyuan-video15", diffusers.HunyuanVideo15Pipeline,
         functools.partial(tiny_hunyuan_video15_pipeline, guidance_scale=1.0), _hunyuan_video15_text,
         _pipeline_guider, dict(height=48, width=80, num_frames=5), (12, 20, 2), "frames",
         lambda kwargs: int(np.prod(kwargs["hidden_states"].shape[2:])), guided_branches=1, no_callbacks=True,
         no_cache=_HUNYUAN_VIDEO15_NO_CACHE, no_context_parallel=True),
    # image to video: the picture's size picks 48x80 (stock's bucket for the tiny target size); its latent and mask
    # ride on every token's channels. About a minute on a CPU, so slow; test_hunyuan_video15.py checks in the default
    # run that they follow each token's coordinates, the mean-flow times and one-image-at-a-time batches
    Case("hunyuan-video15-i2v", diffusers.HunyuanVideo15ImageToVideoPipeline,
         functools.partial(tiny_hunyuan_video15_i2v_pipeline, guidance_scale=1.0), _hunyuan_video15_text,
         _pipeline_guider, dict(num_frames=5), (12, 20, 2), "frames",
         lambda kwargs: int(np.prod(kwargs["hidden_states"].shape[2:])), guided_branches=1, no_callbacks=True,
         extra=dict(image=_I2V_PICTURE), no_cache=_HUNYUAN_VIDEO15_NO_CACHE, no_context_parallel=True, slow=True),
    # 48x80 pixels, 5 frames: 2 latent frames of 3x5 tokens (odd both ways)
    Case("wan", diffusers.WanPipeline, tiny_wan_pipeline, _wan_text, _wan_negative,
         dict(height=48, width=80, num_frames=5), (3, 5, 2), "frames", _video_tokens),
    # Wan2.2: two experts split at a timestep; per-token timesteps (TI2V)
    Case("wan2.2-experts", diffusers.WanPipeline, functools.partial(tiny_wan_pipeline, two_experts=True), _wan_text,
         _wan_negative, dict(height=48, width=80, num_frames=5), (3, 5, 2), "frames", _video_tokens),
    Case("wan2.2-ti2v", diffusers.WanPipeline, functools.partial(tiny_wan_pipeline, expand_timesteps=True), _wan_text,
         _wan_negative, dict(height=48, width=80, num_frames=5), (3, 5, 2), "frames", _video_tokens),
]


@pytest.fixture(params=[pytest.param(c, marks=pytest.mark.slow) if c.slow else c for c in CASES],
                ids=[c.name for c in CASES])
def case(request) -> Case:
    return request.param


def _pipe(case: Case, quantize: Callable[[torch.nn.Module], None] | None = None):
    pipe = case.build()
    pipe.set_progress_bar_config(disable=True)
    if quantize is not None:
        for transformer in _experts(pipe):
            quantize(transformer)
    return pipe


def _experts(pipe) -> list[torch.nn.Module]:
    """The pipeline's transformers: one, or Wan2.2's two experts."""
    return [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None]


def _args(case: Case, batch: int = 1, seed: int = 0, guided: bool = False, **kwargs) -> dict[str, Any]:
    args = {**case.text(batch, 1), **(case.guided(batch, 1) if guided else {}), **case.size, **case.extra,
            "num_inference_steps": STEPS, "output_type": "latent",
            "generator": torch.Generator().manual_seed(seed)}
    return {**args, **kwargs}


def _call(case: Case, pipe, **kwargs) -> Any:
    return getattr(pipe(**_args(case, **kwargs)), case.output)


def _record_tokens(case: Case, pipe) -> tuple[list[int], list[Any]]:
    seen: list[int] = []
    handles = [transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(case.tokens_in({**kwargs, "_args": args})), with_kwargs=True)
        for transformer in _experts(pipe)]
    return seen, handles


def _expected_tokens(case: Case, config: FrescoConfig) -> list[int]:
    return plan_token_counts(config, plan_stages(config, STEPS, min_score_history=2), *case.grid)


# ----------------------------------------------------------------------------------------------------- identity


@pytest.mark.parametrize("guided", [False, True], ids=["unguided", "guided"])
def test_one_full_resolution_stage_is_stock_bit_for_bit(case, guided):
    pipe = _pipe(case)
    stock = _call(case, pipe, guided=guided)
    apply_fresco(pipe, FrescoConfig(stage_scales=(1.0,)))
    assert torch.equal(_call(case, pipe, guided=guided), stock)


def test_removal_gives_the_stock_pipeline_back_bit_for_bit(case):
    pipe = _pipe(case)
    stock = _call(case, pipe)
    apply_fresco(pipe, CONFIG)
    assert not torch.equal(_call(case, pipe), stock)
    remove_fresco(pipe)
    assert type(pipe) is case.stock_class and fresco_config_of(pipe) is None
    assert torch.equal(_call(case, pipe), stock)


def test_only_this_instance_changes(case):
    pipe, other, twin = _pipe(case), _pipe(case), _pipe(case)
    stock_call = case.stock_class.__call__
    apply_fresco(pipe, CONFIG)
    assert case.stock_class.__call__ is stock_call and type(other) is case.stock_class
    assert isinstance(pipe, case.stock_class) and type(pipe).__name__ == case.stock_class.__name__
    apply_fresco(twin, CONFIG)
    assert type(twin) is not type(pipe)  # a class of its own: what a library patches onto it reaches one pipeline


# ------------------------------------------------------------------------------------------------ the sampling


@pytest.mark.parametrize("guided", [False, True], ids=["unguided", "guided"])
def test_token_counts_follow_the_plan(case, guided):
    pipe = _pipe(case)
    stock_shape = _call(case, pipe, guided=guided).shape
    apply_fresco(pipe, CONFIG)
    seen, handles = _record_tokens(case, pipe)
    out = _call(case, pipe, guided=guided)
    for handle in handles:
        handle.remove()
    expected = _expected_tokens(case, CONFIG)
    if guided and case.guided_branches == 2:  # the conditional and unconditional branch on one layout
        assert seen[0::2] == seen[1::2] == expected
    else:
        assert seen == expected
    assert expected[0] < expected[-1] == int(np.prod(case.grid))
    assert out.shape == stock_shape and torch.isfinite(out).all()


def test_same_generator_same_output_other_generator_other_output(case):
    pipe = _pipe(case)
    apply_fresco(pipe, CONFIG)
    first, again, other = _call(case, pipe, seed=1), _call(case, pipe, seed=1), _call(case, pipe, seed=2)
    assert torch.equal(first, again) and not torch.allclose(first, other)


@pytest.mark.parametrize("guided", [False, True], ids=["unguided", "guided"])
def test_a_batch_equals_its_single_calls(case, guided):
    """Promotion rounds give each image its own layout; a batch must not mix them."""
    pipe = _pipe(case)
    apply_fresco(pipe, CONFIG)
    seeds = (10, 20)
    texts = [{**case.text(1, s), **(case.guided(1, s) if guided else {})} for s in (1, 2)]
    batch = {k: torch.cat([t[k] for t in texts]) if isinstance(v, torch.Tensor) else  # Z-Image: lists of tensors
             sum((t[k] for t in texts), []) if isinstance(v, list) else v for k, v in texts[0].items()}
    together = getattr(pipe(**batch, **case.size, **case.extra, num_inference_steps=STEPS, output_type="latent",
                            generator=[torch.Generator().manual_seed(s) for s in seeds]), case.output)
    for index, (text, seed) in enumerate(zip(texts, seeds)):
        alone = getattr(pipe(**text, **case.size, **case.extra, num_inference_steps=STEPS, output_type="latent",
                             generator=torch.Generator().manual_seed(seed)), case.output)
        assert torch.allclose(together[index], alone[0], atol=1e-5)


def test_callbacks_see_every_step_and_can_change_the_latents(case):
    if case.no_callbacks:
        pytest.skip(f"{case.stock_class.__name__} takes no callback_on_step_end")
    def record(into):
        def callback(pipe, step, timestep, kwargs):
            into.append(step)
            return {}
        return callback

    pipe = _pipe(case)
    stock_steps: list[int] = []
    _call(case, pipe, callback_on_step_end=record(stock_steps))
    apply_fresco(pipe, CONFIG)
    steps: list[int] = []
    plain = _call(case, pipe, callback_on_step_end=record(steps))
    assert steps == stock_steps == list(range(STEPS))

    def halve_first(pipe, step, timestep, kwargs):
        return {"latents": kwargs["latents"] * 0.5} if step == 0 else {}

    halved = _call(case, pipe, callback_on_step_end=halve_first, callback_on_step_end_tensor_inputs=["latents"])
    assert halved.shape == plain.shape and not torch.equal(halved, plain)


def _form(value: Any) -> Any:
    """What a user can see of an output without its values: types, shapes, sizes."""
    if isinstance(value, torch.Tensor):
        return "tensor", tuple(value.shape), value.dtype
    if isinstance(value, np.ndarray):
        return "array", value.shape, value.dtype
    if isinstance(value, PIL.Image.Image):
        return "pil", value.size, value.mode
    if isinstance(value, (list, tuple)):
        return type(value).__name__, len(value), _form(value[0]) if value else None
    return type(value).__name__


def test_every_output_type_has_the_stock_form(case):
    pipe = _pipe(case)
    stock = {t: _form(_call(case, pipe, output_type=t)) for t in case.output_types}
    stock_tuple = _form(pipe(**_args(case), return_dict=False))
    apply_fresco(pipe, CONFIG)
    assert {t: _form(_call(case, pipe, output_type=t)) for t in case.output_types} == stock
    assert _form(pipe(**_args(case), return_dict=False)) == stock_tuple


# Python-level reads of a tensor's values: on a GPU each makes the host wait for the device
_HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "numpy", "cpu")
# tensors made from host data on a named device: on a GPU the copy from pageable memory waits for the device too
_HOST_COPIES = ("tensor", "as_tensor")


def _to_host(*args: Any, **kwargs: Any) -> bool:
    """Whether a ``Tensor.to`` call names the host by name (``"cpu"``): from a GPU that copy waits for the device. On
    the CPU the test runs on, a device object cannot tell ``x.to(y.device)`` (free on a GPU) from a copy to the host,
    so only the name counts."""
    target = kwargs.get("device", args[0] if args else None)
    return isinstance(target, str) and torch.device(target).type == "cpu"


@contextlib.contextmanager
def _reads_in_flight(pipe) -> Iterator[list[int]]:
    """Counts the host reads (and copies of host data to a device) made after the pipeline's first model call began
    and before its last one began: a read there leaves the device idle until the host has caught up (reads before the
    first call or after the last one wait for nothing the generation still needs). Yields a list that holds the count
    once the block has ended."""
    calls, reads_at = [0], []
    originals = {name: getattr(torch.Tensor, name) for name in _HOST_READS}
    original_to, original_equal = torch.Tensor.to, torch.equal
    copies = {name: getattr(torch, name) for name in _HOST_COPIES}

    def counted(original):
        def read(*args, **kwargs):
            reads_at.append(calls[0])
            return original(*args, **kwargs)
        return read

    def counted_copy(original):
        def copy(*args, **kwargs):
            if kwargs.get("device") is not None:
                reads_at.append(calls[0])
            return original(*args, **kwargs)
        return copy

    def to(tensor, *args, **kwargs):
        if _to_host(*args, **kwargs):
            reads_at.append(calls[0])
        return original_to(tensor, *args, **kwargs)

    def called(*_):
        calls[0] += 1

    hooks = [t.register_forward_pre_hook(called) for t in _experts(pipe)]
    count: list[int] = []
    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, counted(original))
        torch.Tensor.to, torch.equal = to, counted(original_equal)
        for name, original in copies.items():
            setattr(torch, name, counted_copy(original))
        yield count
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        torch.Tensor.to, torch.equal = original_to, original_equal
        for name, original in copies.items():
            setattr(torch, name, original)
        for hook in hooks:
            hook.remove()
    count.append(sum(1 <= at < calls[0] for at in reads_at))


def test_a_generation_reads_nothing_back_from_the_device_that_stock_does_not(case):
    """Counted on the CPU for a plan with a switch and a round, guided: between its first model call and its last,
    Fresco reads no more tensor values than stock with the same steps (Wan's stock loop reads one value per step, and
    Fresco's Wan2.2 the same one to pick the expert). Token counts, levels and grids are known on the host; what
    depends on the device's values is selected on the device."""
    def reads(fresco: bool) -> int:
        pipe = _pipe(case)
        if fresco:
            apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(4, 4), promotion_rounds=1,
                                            promotion_ratio=0.3))
        with _reads_in_flight(pipe) as count:
            _call(case, pipe, guided=True, num_inference_steps=8)
        return count[0]

    assert reads(fresco=True) <= reads(fresco=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_session.sh runs it)")
def test_on_a_gpu_a_step_synchronises_no_more_than_stock(case):
    """The per-step count by CUDA itself, every synchronising call warning under sync debug mode: 8 more steps add
    no more synchronisations to Fresco than to stock."""
    def syncs(steps: int, fresco: bool) -> int:
        pipe = _pipe(case).to("cuda")
        if fresco:
            apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(steps // 2, steps // 2),
                                            promotion_rounds=1, promotion_ratio=0.3))
        args = {k: v for k, v in _args(case, guided=True, num_inference_steps=steps).items() if k != "generator"}
        args = tree_map(lambda v: v.to("cuda") if isinstance(v, torch.Tensor) else v, args)  # lists too (Z-Image)
        pipe(**args, generator=torch.Generator("cuda").manual_seed(0))  # first-call set-up stays out of the count
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                pipe(**args, generator=torch.Generator("cuda").manual_seed(0))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(16, fresco=True) - syncs(8, fresco=True) <= syncs(16, fresco=False) - syncs(8, fresco=False)


def test_the_read_counter_sees_a_read_per_step():
    """Guard for the test above: a callback that reads a value after every step counts once per step in flight (the
    last step's read comes after the last model call)."""
    case = CASES[0]
    pipe = _pipe(case)
    with _reads_in_flight(pipe) as count:
        _call(case, pipe, num_inference_steps=8, callback_on_step_end=lambda pipe, i, t, kwargs: (float(t), {})[1])
    assert count[0] == 7


# --------------------------------------------------------------------------------------------- as an object


def test_save_and_load_give_a_stock_pipeline_that_takes_fresco_again(case, tmp_path):
    pipe = _pipe(case)
    stock = _call(case, pipe)
    apply_fresco(pipe, CONFIG)
    fresco = _call(case, pipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers warns about the absent text encoders
        pipe.save_pretrained(tmp_path)
        absent = {name: None for name, component in pipe.components.items() if component is None}
        loaded = case.stock_class.from_pretrained(tmp_path, **absent)
    loaded.set_progress_bar_config(disable=True)
    # safetensors 0.8 maps weights at unaligned offsets, where CPU kernels take other vector paths and differ from
    # the original's by an ulp; fresh copies of the same values take the original's path
    for component in loaded.components.values():
        for tensor in [*component.parameters(), *component.buffers()] if isinstance(component, torch.nn.Module) else []:
            tensor.data = tensor.data.clone()
    assert type(loaded) is case.stock_class and torch.equal(_call(case, loaded), stock)
    apply_fresco(loaded, CONFIG)
    assert torch.equal(_call(case, loaded), fresco)


def test_a_fresco_pipeline_pickles_as_stock_plus_config(case):
    pipe = _pipe(case)
    stock = _call(case, pipe)
    apply_fresco(pipe, CONFIG)
    fresco = _call(case, pipe)
    restored = pickle.loads(pickle.dumps(pipe))
    assert fresco_config_of(restored) == CONFIG and type(restored).__name__ == case.stock_class.__name__
    assert torch.equal(_call(case, restored), fresco)
    remove_fresco(restored)
    assert type(restored) is case.stock_class and torch.equal(_call(case, restored), stock)
    assert torch.equal(_call(case, pipe), fresco)  # the original never noticed
    plain = pickle.loads(pickle.dumps(remove_fresco(pipe)))  # and a stock one stays stock
    assert type(plain) is case.stock_class and fresco_config_of(plain) is None


def _hook_count(experts: list[torch.nn.Module]) -> int:
    """Forward hooks Fresco's adapters may put on the transformers' submodules (the video ones hook the rope)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for t in experts for m in t.modules())


def _hooked_pipe(case: Case) -> tuple[Any, torch.Tensor, torch.Tensor, int, int]:
    """A Fresco pipeline, its stock and Fresco outputs, and its transformer's hook count without and with Fresco."""
    pipe = _pipe(case)
    stock = _call(case, pipe)
    bare = _hook_count(_experts(pipe))
    apply_fresco(pipe, CONFIG)
    return pipe, stock, _call(case, pipe), bare, _hook_count(_experts(pipe))


def test_a_deep_copy_owns_its_hooks(case):
    pipe, stock, fresco, bare, hooked = _hooked_pipe(case)
    twin = copy.deepcopy(pipe)
    assert twin.transformer is not pipe.transformer and torch.equal(_call(case, twin), fresco)
    remove_fresco(twin)  # takes the copy's hooks off the copy's transformer only
    assert torch.equal(_call(case, twin), stock) and torch.equal(_call(case, pipe), fresco)
    assert _hook_count(_experts(twin)) == bare and _hook_count(_experts(pipe)) == hooked


def test_pipelines_sharing_a_transformer_each_get_fresco_and_release_it_when_collected(case):
    first, stock, fresco, bare, hooked = _hooked_pipe(case)
    second = case.stock_class.from_pipe(first)  # the same transformer, a stock pipeline
    assert second.transformer is first.transformer and torch.equal(_call(case, second), stock)
    apply_fresco(second, CONFIG)  # a second Fresco pipeline on that transformer
    assert torch.equal(_call(case, second), fresco) and torch.equal(_call(case, first), fresco)
    experts = _experts(first)
    del first
    gc.collect()
    assert _hook_count(experts) == hooked  # the collected pipeline's hooks went with it
    assert torch.equal(_call(case, second), fresco)
    remove_fresco(second)
    assert torch.equal(_call(case, second), stock) and _hook_count(experts) == bare


def test_the_fresco_class_itself_builds_stock_pipelines(case):
    pipe = _pipe(case)
    stock = _call(case, pipe)
    apply_fresco(pipe, CONFIG)
    built = type(pipe).from_pipe(pipe)  # a class method of the per-instance class: no Fresco was applied to it
    assert fresco_config_of(built) is None and torch.equal(_call(case, built), stock)


# ---------------------------------------------------------------------------------------- what stacks on it


@pytest.mark.parametrize("case", [c for c in CASES if c.no_context_parallel],
                         ids=[c.name for c in CASES if c.no_context_parallel])
def test_a_split_transformer_fresco_cannot_follow_is_refused_naming_the_way_out(case):
    """Refused at the call, before any encoding: quick for every row."""
    pipe = _pipe(case)
    apply_fresco(pipe, CONFIG)
    # what enable_parallelism(ContextParallelConfig(ulysses_degree=2)) leaves on the transformer, without the processes
    pipe.transformer._parallel_config = SimpleNamespace(
        context_parallel_config=SimpleNamespace(ulysses_degree=2, ring_degree=1))
    with pytest.raises(ValueError, match="under context parallelism.*or call remove_fresco"):
        _call(case, pipe)


def test_a_cache_that_never_skips_changes_nothing_and_one_that_skips_runs(case):
    if case.no_cache:
        pytest.skip(case.no_cache)
    pipe = _pipe(case)
    apply_fresco(pipe, CONFIG)
    plain = _call(case, pipe, guided=True)
    for transformer in _experts(pipe):
        transformer.enable_cache(FirstBlockCacheConfig(threshold=0.0))
    assert torch.allclose(_call(case, pipe, guided=True), plain, atol=1e-6)
    for transformer in _experts(pipe):
        transformer.disable_cache()
        transformer.enable_cache(FirstBlockCacheConfig(threshold=1e9))
    skipped = _call(case, pipe, guided=True)
    assert skipped.shape == plain.shape and torch.isfinite(skipped).all() and not torch.equal(skipped, plain)


def test_quantized_fresco_stays_as_close_as_quantized_stock(case):
    """Whole stages only: a promotion round's discrete choice may flip for near-tied tokens under quantization."""
    from quantizers import QUANTIZERS  # torchao and optimum-quanto: not on every machine the GPU checks run on
    from quantizers import relative_error as _relative

    quantize = QUANTIZERS["torchao-int8-weight-only"]
    whole_stages = FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(4, 4), promotion_rounds=0)

    def run(quantized, config=None):
        pipe = _pipe(case, quantize if quantized else None)
        if config is not None:
            apply_fresco(pipe, config)
        return _call(case, pipe)

    stock_error = _relative(run(True), run(False))
    fresco_error = _relative(run(True, whole_stages), run(False, whole_stages))
    assert 0 < fresco_error <= 1.5 * stock_error + 1e-3


def test_compiling_the_transformer_traces_once_and_changes_nothing(case):
    """Token counts change at every switch and round; with the sequence dimension dynamic one trace serves them all,
    and a second generation compiles nothing new (dynamo's counting backend: tracing, no code generation)."""
    torch._dynamo.reset()
    try:
        pipe = _pipe(case)
        apply_fresco(pipe, CONFIG)
        eager = _call(case, pipe)
        counter = CompileCounter()
        for transformer in _experts(pipe):
            transformer.compile(backend=counter, dynamic=True)
        compiled = _call(case, pipe)
        first = counter.frame_count
        _call(case, pipe, seed=3)
        assert first >= 1 and counter.frame_count == first
        assert torch.allclose(compiled, eager, atol=1e-5)
    finally:
        torch._dynamo.reset()
