"""The demo model shipped inside the package: a small FLUX pipeline trained on procedural scenes.

``load_scenes_pipeline()`` loads it with the real ``FluxPipeline.from_pretrained`` from the package folder (no
network). It was trained by ``training/train_scenes_model.py`` with a 32-token T5 sequence at 128 pixels (and 64);
call it with ``max_sequence_length=TEXT_TOKENS`` and ``height=width=SIZE``. Prompts follow the grammar of
:mod:`fresco_plugin.tools.scenes`, whose checker reads a picture back for adherence.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .scenes import Scene, is_held_out, sample_scene

__all__ = ["GUIDANCE_SCALE", "MODEL_DIR", "SCHNELL_STEPS", "SIZE", "TEXT_TOKENS", "VARIANTS", "ScenePrompt",
           "load_scenes_pipeline", "prompt_set"]

MODEL_DIR = Path(str(resources.files("fresco_plugin.tools").joinpath("models/scenes-flux")))
# The teacher and its two distilled students (``training/distill_scenes_model.py``), each a whole diffusers folder.
VARIANTS = {"base": MODEL_DIR, "dev": MODEL_DIR.parent / "scenes-flux-dev",
            "schnell": MODEL_DIR.parent / "scenes-flux-schnell"}
_TRAINING = {"base": ("python training/train_scenes_model.py", "about 75 minutes on 2 CPU cores"),
             "dev": ("python training/distill_scenes_model.py dev", "about 30 minutes on 2 CPU cores"),
             "schnell": ("python training/distill_scenes_model.py schnell", "about 30 minutes, after the dev student")}
SCHNELL_STEPS = 4  # the schnell-like student's own step count, as FLUX.1-schnell's
TEXT_TOKENS = 32
SIZE = 128
# The true classifier-free guidance scale (``true_cfg_scale``, with ``negative_prompt=""``) the model works best at:
# the highest held-out adherence in its training report (``training_report.json``). The dev-like student takes the
# same scale as its ``guidance_scale`` input (one forward a step).
GUIDANCE_SCALE = 3


def load_scenes_pipeline(variant: str = "base", *, device: str | torch.device = "cpu", progress: bool = True) -> Any:
    """A shipped scenes pipeline (fp32), loaded by ``FluxPipeline.from_pretrained`` from the package: ``"base"`` (the
    teacher: true CFG), ``"dev"`` (guidance-distilled, as FLUX.1-dev: pass ``guidance_scale``) or ``"schnell"``
    (step-distilled: ``SCHNELL_STEPS`` steps, no guidance). ``progress=False`` hides both the loading and the sampling
    progress bars."""
    from diffusers import FluxPipeline
    from diffusers.utils import logging as diffusers_logging

    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not a shipped scenes model; choose one of {', '.join(VARIANTS)}")
    folder = VARIANTS[variant]
    if not (folder / "model_index.json").is_file():
        command, duration = _TRAINING[variant]
        raise FileNotFoundError(f"the shipped scenes model {variant!r} is missing from {folder}; reinstall the "
                                f"package, or train it again with `{command}` ({duration})")
    shown = diffusers_logging.is_progress_bar_enabled()
    if not progress:
        diffusers_logging.disable_progress_bar()
    try:
        pipe = FluxPipeline.from_pretrained(folder).to(device)  # saved in fp32, loads in fp32
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
    if not 0 <= held_out <= count:
        raise ValueError(f"held_out={held_out} must be between 0 and count={count}")
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(count - held_out)]
    scenes += [sample_scene(rng, held_out=True) for _ in range(held_out)]
    return [ScenePrompt(s.prompt, s, is_held_out(s.prompt), seed * 1000 + i) for i, s in enumerate(scenes)]
