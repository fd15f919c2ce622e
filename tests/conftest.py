"""Shared fixtures: tiny FLUX pipelines built from configs (no downloads)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from fresco_plugin.integrations.tiny import tiny_flux_pipeline

try:
    import para_attn  # noqa: F401
except ImportError:  # ParaAttention's tests run in its own environment: tests/para_attention/run.sh
    collect_ignore = ["para_attention"]


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


def run_ranks(worker: Callable[..., None], world: int, task: str, tmp_path: Path, timeout_s: float = 240) -> dict:
    """Run ``worker(rank, world, port, task, out_path)`` in ``world`` spawned processes; return what rank 0 saved.

    Every process is killed and the test fails if they have not all finished within ``timeout_s`` (a hung
    collective must not hang the suite)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_path = tmp_path / f"{task}-{world}.pt"
    context = mp.start_processes(worker, args=(world, port, task, str(out_path)), nprocs=world, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{world} processes ({task}) did not finish within {timeout_s} s")
    return torch.load(out_path)
