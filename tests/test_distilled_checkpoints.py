"""The step-distilled checkpoints' presets, run as their users call them: each tiny pipeline gets the checkpoint's
scheduler config and is called with its recommended steps and guidance (docs/distilled.md gives the sources).

Checks: the preset runs that call without a warning, one forward of one image per step (the checkpoint's guidance is
off or distilled), a finite picture, and a sketch on the checkpoint's own timesteps where its schedule does not
depend on the resolution."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import PIL.Image
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from fresco_plugin import apply_fresco
from fresco_plugin.config import PRESETS
from fresco_plugin.tools.tiny import (
    tiny_flux2_klein_pipeline,
    tiny_flux_pipeline,
    tiny_hunyuan_video15_i2v_pipeline,
    tiny_qwen_image_pipeline,
    tiny_wan_pipeline,
    tiny_z_image_pipeline,
)


def _z_image_turbo():
    pipe = tiny_z_image_pipeline()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    return pipe


def _qwen_image_lightning():
    pipe = tiny_qwen_image_pipeline()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(  # the Lightning LoRAs' README: "shift=3 in distillation"
        base_image_seq_len=256, max_image_seq_len=8192, base_shift=math.log(3), max_shift=math.log(3), shift=1.0,
        shift_terminal=None, time_shift_type="exponential", use_dynamic_shifting=True)
    return pipe


def _klein_distilled():
    pipe = tiny_flux2_klein_pipeline()
    pipe.register_to_config(is_distilled=True)  # what the distilled checkpoints' model_index.json sets
    return pipe


def _wan_lightning():
    pipe = tiny_wan_pipeline(two_experts=True)  # boundary 0.875, Wan2.2-T2V-A14B's
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)  # Lightning's sample_shift, with the Euler solver
    return pipe


def _hunyuan_video15_i2v_distilled():
    pipe = tiny_hunyuan_video15_i2v_pipeline(use_meanflow=True, guidance_scale=1.0)  # its guider at 1: no CFG
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)  # the checkpoint's flow shift
    return pipe


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(3)


@dataclass(frozen=True)
class Checkpoint:
    preset: str
    build: Callable[[], Any]
    call: Callable[[], dict[str, Any]]  # the checkpoint's recommended call, conditioning given as embeddings
    images_in: Callable[[tuple, dict[str, Any]], int]  # images in one transformer forward, from its arguments
    fixed_grid: bool  # the schedule does not depend on the resolution, so the sketch runs the checkpoint's timesteps


def _hidden_batch(args: tuple, kwargs: dict[str, Any]) -> int:
    return kwargs["hidden_states"].shape[0]


CHECKPOINTS = [
    Checkpoint("flux-schnell-19x", lambda: tiny_flux_pipeline(guidance_embeds=False, static_shift=True),
               lambda: dict(prompt_embeds=torch.randn(1, 8, 32, generator=_generator()),
                            pooled_prompt_embeds=torch.randn(1, 32, generator=_generator()), guidance_scale=0.0,
                            num_inference_steps=4, height=64, width=64),
               _hidden_batch, True),
    Checkpoint("z-image-turbo-1.5x", _z_image_turbo,
               lambda: dict(prompt_embeds=[torch.randn(7, 16, generator=_generator())], guidance_scale=0.0,
                            num_inference_steps=8, height=64, width=64),
               lambda args, kwargs: len(args[0]), True),
    Checkpoint("qwen-image-lightning-1.5x", _qwen_image_lightning,
               lambda: dict(prompt_embeds=torch.randn(1, 7, 32, generator=_generator()),
                            prompt_embeds_mask=torch.ones(1, 7, dtype=torch.long), true_cfg_scale=1.0,
                            num_inference_steps=8, height=64, width=64),
               _hidden_batch, True),
    Checkpoint("qwen-image-lightning-4step-1.5x", _qwen_image_lightning,
               lambda: dict(prompt_embeds=torch.randn(1, 7, 32, generator=_generator()),
                            prompt_embeds_mask=torch.ones(1, 7, dtype=torch.long), true_cfg_scale=1.0,
                            num_inference_steps=4, height=64, width=64),
               _hidden_batch, True),
    Checkpoint("flux2-klein-4b-distilled-1.5x", _klein_distilled,
               lambda: dict(prompt_embeds=torch.randn(1, 8, 32, generator=_generator()), guidance_scale=1.0,
                            num_inference_steps=4, height=64, width=64),
               _hidden_batch, False),  # FLUX.2's shift follows the token count and the step count
    Checkpoint("wan2.2-lightning-1.75x", _wan_lightning,
               lambda: dict(prompt_embeds=torch.randn(1, 6, 32, generator=_generator()), guidance_scale=1.0,
                            guidance_scale_2=1.0, num_inference_steps=4, height=48, width=80, num_frames=5),
               _hidden_batch, True),
    Checkpoint("hunyuan-video15-i2v-distilled-1.75x", _hunyuan_video15_i2v_distilled,
               lambda: dict(image=PIL.Image.new("RGB", (80, 48), (200, 90, 40)),
                            prompt_embeds=torch.randn(1, 8, 16, generator=_generator()),
                            prompt_embeds_mask=torch.ones(1, 8),
                            prompt_embeds_2=torch.randn(1, 5, 8, generator=_generator()),
                            prompt_embeds_mask_2=torch.ones(1, 5), num_frames=5, num_inference_steps=8),
               _hidden_batch, True),
]


def _transformers(pipe) -> list[torch.nn.Module]:
    return [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None]


def _run(checkpoint: Checkpoint, pipe) -> tuple[Any, list[tuple[int, float]]]:
    """The output and, per transformer forward, (images, timestep)."""
    seen: list[tuple[int, float]] = []

    def record(module, args, kwargs):
        timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
        seen.append((checkpoint.images_in(args, kwargs), float(timestep.flatten()[0])))

    handles = [t.register_forward_pre_hook(record, with_kwargs=True) for t in _transformers(pipe)]
    try:
        output = pipe(**checkpoint.call(), output_type="latent", generator=torch.Generator().manual_seed(0))
    finally:
        for handle in handles:
            handle.remove()
    return output, seen


@pytest.mark.parametrize("checkpoint", CHECKPOINTS, ids=[c.preset for c in CHECKPOINTS])
def test_a_distilled_preset_runs_the_checkpoints_recommended_call(checkpoint):
    config = PRESETS[checkpoint.preset]
    stock_pipe = checkpoint.build()
    stock_pipe.set_progress_bar_config(disable=True)
    _, stock = _run(checkpoint, stock_pipe)
    pipe = checkpoint.build()
    pipe.set_progress_bar_config(disable=True)
    apply_fresco(pipe, config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the recommended step count is the preset's: nothing to warn about
        output, seen = _run(checkpoint, pipe)
    latents = output[0] if isinstance(output, tuple) else next(iter(output.values()))
    assert all(torch.isfinite(torch.as_tensor(x)).all() for x in (latents if isinstance(latents, list) else [latents]))
    assert len(seen) == len(stock) == sum(config.stage_steps)
    assert all(images == 1 for images, _ in seen)  # one forward of one image a step, as stock runs it
    sketch = config.stage_steps[0]
    if checkpoint.fixed_grid:
        assert [t for _, t in seen[:sketch]] == pytest.approx([t for _, t in stock[:sketch]], abs=1e-4)


def test_a_distilled_klein_ignores_the_guidance_scale_under_fresco_as_stock_does():
    checkpoint = next(c for c in CHECKPOINTS if c.preset.startswith("flux2-klein"))
    pipe = checkpoint.build()
    pipe.set_progress_bar_config(disable=True)
    apply_fresco(pipe, PRESETS[checkpoint.preset])
    guided = Checkpoint(checkpoint.preset, checkpoint.build, lambda: {**checkpoint.call(), "guidance_scale": 4.0},
                        checkpoint.images_in, checkpoint.fixed_grid)
    _, seen = _run(guided, pipe)
    assert len(seen) == 4 and all(images == 1 for images, _ in seen)


@pytest.mark.parametrize("checkpoint", [c for c in CHECKPOINTS if c.fixed_grid],
                         ids=[c.preset for c in CHECKPOINTS if c.fixed_grid])
def test_the_stock_restart_keeps_every_step_on_the_checkpoint_s_own_timesteps(checkpoint):
    """docs/distilled.md's override for a checkpoint distilled on a fixed grid: restart_shift_scale=1 visits stock's
    timesteps at every step, the full-resolution ones included."""
    stock_pipe = checkpoint.build()
    stock_pipe.set_progress_bar_config(disable=True)
    _, stock = _run(checkpoint, stock_pipe)
    pipe = checkpoint.build()
    pipe.set_progress_bar_config(disable=True)
    apply_fresco(pipe, replace(PRESETS[checkpoint.preset], restart_shift_scale=1.0))
    _, seen = _run(checkpoint, pipe)
    assert [t for _, t in seen] == pytest.approx([t for _, t in stock], abs=1e-4)
