"""Shared fixtures: tiny FLUX pipelines built from configs (no downloads)."""

from __future__ import annotations

import pytest
import torch

from fresco_plugin.integrations.tiny import tiny_flux_pipeline


def text_inputs(batch: int = 1, seed: int = 1, tokens: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "prompt_embeds": torch.randn(batch, tokens, 32, generator=g),
        "pooled_prompt_embeds": torch.randn(batch, 32, generator=g),
    }


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def flux_pipe():
    return _quiet(tiny_flux_pipeline())


@pytest.fixture
def schnell_pipe():
    return _quiet(tiny_flux_pipeline(guidance_embeds=False, static_shift=True))
