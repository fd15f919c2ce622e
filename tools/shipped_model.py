"""The demo models shipped inside the package: a small FLUX pipeline trained on procedural scenes (and its two
distilled students), and a small Wan text-to-video pipeline trained on procedural clips.

``load_scenes_pipeline()`` loads the pictures model with the real ``FluxPipeline.from_pretrained`` from the package
folder (no network). It was trained by ``training/train_scenes_model.py`` with a 32-token T5 sequence at 128 pixels
(and 64); call it with ``max_sequence_length=TEXT_TOKENS`` and ``height=width=SIZE``. Prompts follow the grammar of
:mod:`fresco_plugin.tools.scenes`, whose checker reads a picture back for adherence.

``load_clips_pipeline()`` loads the video model with ``WanPipeline.from_pretrained`` the same way. It was trained by
``training/train_video_model.py`` on 9-frame clips at 64 pixels (and 32); call it with ``num_frames=CLIP_FRAMES``,
``height=width=CLIP_SIZE`` and ``max_sequence_length=CLIP_TEXT_TOKENS``. Prompts follow
:mod:`fresco_plugin.tools.video_scenes`, whose checker reads a clip back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .scenes import Scene, is_held_out, sample_scene
from .video_scenes import Clip, is_held_out_clip, sample_clip

__all__ = ["CLIPS_DIR", "CLIP_FRAMES", "CLIP_GUIDANCE_SCALE", "CLIP_SIZE", "CLIP_TEXT_TOKENS", "GUIDANCE_SCALE",
           "MODEL_DIR", "SCHNELL_STEPS", "SIZE", "TEXT_TOKENS", "VARIANTS", "ClipPrompt", "ScenePrompt",
           "clip_prompt_set", "load_clips_pipeline", "load_scenes_pipeline", "prompt_set", "sketch_position_units",
           "sketch_position_units_of"]

MODEL_DIR = Path(str(resources.files("fresco_plugin.tools").joinpath("models/scenes-flux")))
# The teacher and its two distilled students (``training/distill_scenes_model.py``), each a whole diffusers folder.
VARIANTS = {"base": MODEL_DIR, "dev": MODEL_DIR.parent / "scenes-flux-dev",
            "schnell": MODEL_DIR.parent / "scenes-flux-schnell"}
_TRAINING = {"base": ("python training/train_scenes_model.py", "92-111 minutes measured on 2 CPU cores"),
             "dev": ("python training/distill_scenes_model.py dev", "about 50 minutes on 2 CPU cores"),
             "schnell": ("python training/distill_scenes_model.py schnell", "about 50 minutes, after the dev student")}
SCHNELL_STEPS = 4  # the schnell-like student's own step count, as FLUX.1-schnell's
TEXT_TOKENS = 32
SIZE = 128
# The true classifier-free guidance scale (``true_cfg_scale``, with ``negative_prompt=""``) the model works best at:
# the highest held-out adherence in its training report (``training_report.json``). The dev-like student takes the
# same scale as its ``guidance_scale`` input (one forward a step).
GUIDANCE_SCALE = 3

CLIPS_DIR = MODEL_DIR.parent / "clips-wan"
CLIP_FRAMES = 9
CLIP_SIZE = 64
CLIP_TEXT_TOKENS = 12
# WanPipeline's ``guidance_scale`` the video model works best at: the highest held-out adherence in its training report
CLIP_GUIDANCE_SCALE = 5


def load_scenes_pipeline(variant: str = "base", *, device: str | torch.device = "cpu", progress: bool = True) -> Any:
    """A shipped scenes pipeline (fp32), loaded by ``FluxPipeline.from_pretrained`` from the package: ``"base"`` (the
    teacher: true CFG), ``"dev"`` (guidance-distilled, as FLUX.1-dev: pass ``guidance_scale``) or ``"schnell"``
    (step-distilled: ``SCHNELL_STEPS`` steps, no guidance). ``progress=False`` hides both the loading and the sampling
    progress bars."""
    from diffusers import FluxPipeline

    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not a shipped scenes model; choose one of {', '.join(VARIANTS)}")
    command, duration = _TRAINING[variant]
    return _load(FluxPipeline, VARIANTS[variant], f"scenes model {variant!r}", command, duration, device, progress)


def sketch_position_units(variant: str = "base") -> str:
    """The ``FrescoConfig.position_units`` a shipped scenes model's sketch needs: ``"final"`` when it was trained with
    its 64-pixel batches at the 128-pixel grid's coordinates (``--sketch-positions final``, read from its training
    report), else the stock ``"stage"``."""
    return sketch_position_units_of(VARIANTS[variant])


def sketch_position_units_of(folder: Path) -> str:
    """``sketch_position_units`` of the scenes model saved in ``folder`` (shipped or not)."""
    report = Path(folder) / "training_report.json"
    arguments = json.loads(report.read_text()).get("arguments", {}) if report.is_file() else {}
    return "final" if arguments.get("sketch_positions") == "final" else "stage"


def load_clips_pipeline(*, device: str | torch.device = "cpu", progress: bool = True) -> Any:
    """The shipped video model (fp32), loaded by ``WanPipeline.from_pretrained`` from the package. It runs
    classifier-free guidance as WanPipeline does (``guidance_scale`` > 1 with the empty negative prompt);
    ``CLIP_GUIDANCE_SCALE`` is the scale it works best at. ``progress=False`` hides both progress bars."""
    from diffusers import WanPipeline

    return _load(WanPipeline, CLIPS_DIR, "video model", "python training/train_video_model.py",
                 "about 80 minutes on 2 CPU cores", device, progress)


def _load(pipeline_class: Any, folder: Path, name: str, command: str, duration: str, device: str | torch.device,
          progress: bool) -> Any:
    from diffusers.utils import logging as diffusers_logging

    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"the shipped {name} is missing from {folder}; reinstall the package, or train it "
                                f"again with `{command}` ({duration})")
    shown = diffusers_logging.is_progress_bar_enabled()
    if not progress:
        diffusers_logging.disable_progress_bar()
    try:
        pipe = pipeline_class.from_pretrained(folder).to(device)  # saved in fp32, loads in fp32
    finally:
        if shown:
            diffusers_logging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=not progress)
    return pipe


@dataclass(frozen=True)
class ScenePrompt:
    prompt: str
    scene: Scene
    held_out: bool
    seed: int


def prompt_set(count: int, held_out: int, seed: int = 2026) -> list[ScenePrompt]:
    """A fixed prompt set: ``count - held_out`` prompts from the training split, then ``held_out`` from the held-out
    split (object combinations the model never saw); each with its own generation seed."""
    scenes = _draw(sample_scene, count, held_out, seed)
    return [ScenePrompt(s.prompt, s, is_held_out(s.prompt), seed * 1000 + i) for i, s in enumerate(scenes)]


def _draw(sample: Any, count: int, held_out: int, seed: int) -> list[Any]:
    """``count - held_out`` draws of ``sample(rng)`` from the training split, then ``held_out`` from the held-out."""
    if not 0 <= held_out <= count:
        raise ValueError(f"held_out={held_out} must be between 0 and count={count}")
    rng = np.random.default_rng(seed)
    return [sample(rng) for _ in range(count - held_out)] + [sample(rng, held_out=True) for _ in range(held_out)]


@dataclass(frozen=True)
class ClipPrompt:
    prompt: str
    clip: Clip
    held_out: bool
    seed: int


def clip_prompt_set(count: int, held_out: int, seed: int = 2026) -> list[ClipPrompt]:
    """A fixed set of clip prompts, as ``prompt_set``: ``count - held_out`` from the training split, then ``held_out``
    from the held-out split (colour, shape and direction combinations the video model never saw)."""
    clips = _draw(sample_clip, count, held_out, seed)
    return [ClipPrompt(c.prompt, c, is_held_out_clip(c.prompt), seed * 1000 + i) for i, c in enumerate(clips)]
