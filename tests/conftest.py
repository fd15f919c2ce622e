"""Shared fixtures: tiny FLUX pipelines built from configs (no downloads)."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from fresco_plugin.tools.tiny import tiny_flux_pipeline

collect_ignore = []
try:
    import para_attn  # noqa: F401
except ImportError:  # ParaAttention's tests run in its own environment: tests/para_attention/run.sh
    collect_ignore.append("para_attention")
if importlib.util.find_spec("xfuser") is None:  # xDiT's too: tests/xdit/run.sh
    collect_ignore.append("xdit")


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


def _rank_without_teardown(rank: int, worker: Callable[..., None], *args) -> None:
    """Run one rank's worker, then leave without interpreter teardown once it has returned.

    Gloo's worker threads can outlive ``destroy_process_group`` and abort the process while Python finalizes
    ("terminate called without an active exception", seen once in CI after every result was saved). A worker that
    raises still goes through torch's error reporting."""
    worker(rank, *args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(worker: Callable[..., None], world: int, task: str, tmp_path: Path, timeout_s: float = 240) -> dict:
    """Run ``worker(rank, world, port, task, out_path)`` in ``world`` spawned processes; return what rank 0 saved.

    Every process is killed and the test fails if they have not all finished within ``timeout_s`` (a hung
    collective must not hang the suite)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_path = tmp_path / f"{task}-{world}.pt"
    context = mp.start_processes(_rank_without_teardown, args=(worker, world, port, task, str(out_path)),
                                 nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{world} processes ({task}) did not finish within {timeout_s} s")
    return torch.load(out_path)


def shared_launches(worker: Callable[..., None], tmp_path_factory, timeout_s: float = 240) -> Callable[[int], dict]:
    """``launch(world)``: what rank 0 saved from one launch of ``worker`` on ``world`` processes, made once and shared
    by every test that asks (starting the processes costs more than most cases, so a worker runs all of its cases)."""
    results: dict[int, dict] = {}

    def launch(world: int) -> dict:
        if world not in results:
            results[world] = run_ranks(worker, world, "cases", tmp_path_factory.mktemp("ranks"), timeout_s)
        return results[world]

    return launch


# ------------------------------------------------------------------ shared by the FLUX sequence-parallel tests
# 72x40 pixels: a 36x20 token grid, whose quarter-resolution stage (9x5 = 45 tokens) no degree above 1 divides
UNEVEN_SIZE = dict(height=72, width=40)


def generate_flux_steps(pipe, text_tokens: int = 8, seeded: bool = True, height: int = 64,
                        width: int = 64) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A 12-step tiny-FLUX generation: the output latents and the latents after every step."""
    steps = []

    def record(pipe, index, timestep, kwargs):
        steps.append(kwargs["latents"].clone())
        return {}

    out = pipe(**text_inputs(tokens=text_tokens), height=height, width=width, num_inference_steps=12,
               output_type="latent", generator=torch.Generator().manual_seed(0) if seeded else None,
               callback_on_step_end=record).images
    return out, steps


def _rank_noisy_x0_score(history: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    from fresco_plugin.selection import x0_step_variance

    base = x0_step_variance(history)
    return base + torch.rand(base.shape, generator=torch.Generator().manual_seed(dist.get_rank() + 1))


def ranks_agree_under_score_noise(pipe, world: int) -> bool:
    """Fresco with its default score plus noise that differs per rank (each rank alone would choose differently):
    whether every rank ends with the same output."""
    import torch.distributed as dist

    from fresco_plugin import FrescoConfig, apply_fresco, register_score

    register_score("noisy-x0", _rank_noisy_x0_score, min_history=2, replace=True)
    apply_fresco(pipe, FrescoConfig(stage_scales=(0.25, 0.5, 1.0), promotion_rounds=1, score="noisy-x0"))
    out, _ = generate_flux_steps(pipe)
    gathered = [torch.empty_like(out) for _ in range(world)]
    dist.all_gather(gathered, out)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def assert_every_step_matches(result: dict, world: int, size: dict | None = None) -> None:
    """The parallel run saved in ``result`` equals a single-process Fresco run rounding its counts to ``world``.

    With ``size=UNEVEN_SIZE`` a stage cannot split evenly and the parallel run padded it with masked tokens."""
    from fresco_plugin import FrescoConfig, apply_fresco

    single = tiny_flux_pipeline(num_attention_heads=4)
    single.set_progress_bar_config(disable=True)
    apply_fresco(single, FrescoConfig(stage_scales=(0.25, 0.5, 1.0), promotion_rounds=1, token_multiple=world))
    out, steps = generate_flux_steps(single, **(size or {}))
    uneven = [s.shape[1] for s in steps if s.shape[1] % world]
    assert uneven if size == UNEVEN_SIZE else not uneven  # pads were needed / every stage splits evenly
    assert len({s.shape[1] for s in steps}) == 5
    for parallel_step, single_step in zip(result["steps"], steps, strict=True):
        assert torch.allclose(parallel_step, single_step, atol=1e-5)
    assert torch.allclose(result["out"], out, atol=1e-5)


def generate_video_steps(pipe, text_tokens: int = 8, num_frames: int = 5) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """An 8-step tiny-HunyuanVideo generation at 64x80 pixels (4 x 5 latent tokens per frame: odd columns; 2 latent
    frames for 5 frames) with padded text: the output latents and the latents after every step."""
    steps = []

    def record(pipe, index, timestep, kwargs):
        steps.append(kwargs["latents"].clone())
        return {}

    g = torch.Generator().manual_seed(1)
    mask = torch.ones(1, text_tokens, dtype=torch.long)
    mask[:, 3:] = 0  # padded text, the padding reaching into every rank's shard but the first
    return pipe(prompt_embeds=torch.randn(1, text_tokens, 16, generator=g),
                pooled_prompt_embeds=torch.randn(1, 8, generator=g), prompt_attention_mask=mask, height=64, width=80,
                num_frames=num_frames, num_inference_steps=8, output_type="latent",
                generator=torch.Generator().manual_seed(0), callback_on_step_end=record).frames, steps
