"""Fresco on xDiT's sequence-parallel runner path, really run across 2 and 4 gloo processes on the CPU.

xfuser 0.7.0 cannot be imported without a GPU; every process imports it through
``fresco_plugin.tools.xdit_cpu`` (the documented shim). Runs in its own environment: ``tests/xdit/run.sh``.
"""

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import (
    UNEVEN_SIZE,
    assert_every_step_matches,
    generate_flux_steps,
    generate_video_steps,
    ranks_agree_under_score_noise,
    run_ranks,
)

from fresco_plugin import FrescoConfig, apply_fresco
from fresco_plugin.tools.tiny import tiny_flux_pipeline, tiny_hunyuan_video_pipeline
from fresco_plugin.tools.xdit_cpu import import_xfuser_on_cpu

CONFIG = FrescoConfig(stage_scales=(0.25, 0.5, 1.0), promotion_rounds=1)
VIDEO_CONFIG = FrescoConfig(stage_scales=(0.5, 1.0), promotion_rounds=1)
TIMEOUT_S = 240
STEPS = 12  # generate_flux_steps' count, which xDiT's runtime state is told
REFUSALS = ("text", "heads", "unseeded", "cfg", "uneven")


def _xdit_pipe(heads=4):
    """The tiny FLUX pipeline with xDiT's runner-path transformer wrapper (the same weights as without)."""
    from xfuser.model_executor.models.transformers.transformer_flux import xFuserFlux1Transformer2DWrapper

    pipe = tiny_flux_pipeline(num_attention_heads=heads, transformer_class=xFuserFlux1Transformer2DWrapper)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _start_xdit(pipe, world, cfg_parallel=False):
    """What xDiT's scripts do: engine config from its arguments, then the runtime state (it builds the groups)."""
    from xfuser.core.distributed import get_runtime_state, init_distributed_environment, initialize_runtime_state

    from fresco_plugin.integrations.xdit import FrescoXFuserArgs

    init_distributed_environment()  # xDiT's world group, over the process group the worker made (with a timeout)
    degree = world // 2 if cfg_parallel else world
    arguments = FrescoXFuserArgs(model="tiny", ulysses_degree=degree, use_cfg_parallel=cfg_parallel)
    engine_config, _ = arguments.create_config()
    initialize_runtime_state(pipe, engine_config)
    get_runtime_state().set_input_parameters(batch_size=1, num_inference_steps=STEPS, max_condition_sequence_length=8,
                                             split_text_embed_in_sp=True)


def _worker(rank, world, port, task, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import_xfuser_on_cpu()
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        pipe = _xdit_pipe(heads=2 if task == "heads" else 4)
        result = {}
        if task == "match-fresco-first":  # Fresco before xDiT's parallel state exists
            apply_fresco(pipe, CONFIG)
            _start_xdit(pipe, world)
        elif task not in REFUSALS:
            _start_xdit(pipe, world)
        if task == "stock":
            result["out"], result["steps"] = generate_flux_steps(pipe)
        elif task.startswith("match"):
            if task == "match":
                apply_fresco(pipe, CONFIG)
            result["out"], result["steps"] = generate_flux_steps(pipe)
        elif task == "agree":
            result["same_on_all_ranks"] = ranks_agree_under_score_noise(pipe, world)
        else:  # errors raised by xDiT's setup, at apply time or before any model call
            try:
                _start_xdit(pipe, world, cfg_parallel=task == "cfg")
                apply_fresco(pipe, CONFIG)
                generate_flux_steps(pipe, text_tokens=6 if task == "text" else 8, seeded=task != "unseeded",
                                    **(UNEVEN_SIZE if task == "uneven" else {}))
            except (ValueError, RuntimeError) as error:
                result["error"] = str(error)
        if rank == 0:
            torch.save(result, out_path)
    finally:
        dist.barrier()  # a rank that finishes early (a refusal) must not take the store down under the others
        dist.destroy_process_group()


def _spawn(world, task, tmp_path):
    return run_ranks(_worker, world, task, tmp_path, TIMEOUT_S)


def test_the_shim_runs_xdit_as_it_runs_on_gpus(tmp_path):
    """Without Fresco, xDiT's wrapper over 2 processes equals the stock transformer in one (the harness is sound)."""
    result = _spawn(2, "stock", tmp_path)
    stock = tiny_flux_pipeline(num_attention_heads=4)
    stock.set_progress_bar_config(disable=True)
    out, _ = generate_flux_steps(stock)
    assert torch.allclose(result["out"], out, atol=1e-5)


@pytest.mark.parametrize("world,task", [(2, "match"), (4, "match"), (2, "match-fresco-first")])
def test_every_step_matches_a_single_process_run(world, task, tmp_path):
    assert_every_step_matches(_spawn(world, task, tmp_path), world)


def test_ranks_take_rank_zeros_decision_even_when_their_scores_differ(tmp_path):
    assert _spawn(2, "agree", tmp_path)["same_on_all_ranks"]


def test_setups_that_cannot_work_are_refused(tmp_path):
    assert "text tokens do not split over context-parallel degree 4" in _spawn(4, "text", tmp_path)["error"]
    heads = _spawn(4, "heads", tmp_path)["error"]  # xDiT refuses this one itself, when it builds its runtime state
    assert "2 heads, which is not divisible by or smaller than ulysses_degree 4" in heads
    assert "every rank must start from the same noise: pass generator=" in _spawn(2, "unseeded", tmp_path)["error"]
    assert "turn use_cfg_parallel off" in _spawn(4, "cfg", tmp_path)["error"]
    uneven = _spawn(2, "uneven", tmp_path)["error"]  # xDiT's wrappers cannot mask pad tokens
    assert "Fresco's stages would hold [45] image tokens, which context-parallel degree 2 does not divide" in uneven


def _video_worker(rank, world, port, task, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import_xfuser_on_cpu()
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        from xfuser.core.distributed import init_distributed_environment, initialize_runtime_state
        from xfuser.model_executor.models.transformers.transformer_hunyuan_video import (
            xFuserHunyuanVideoTransformer3DWrapper,
        )

        from fresco_plugin.integrations.xdit import FrescoXFuserArgs

        init_distributed_environment()
        pipe = tiny_hunyuan_video_pipeline(num_attention_heads=4,
                                           transformer_class=xFuserHunyuanVideoTransformer3DWrapper)
        pipe.transformer.install_xdit_attention_processors()  # what its from_pretrained does
        pipe.set_progress_bar_config(disable=True)
        engine_config, _ = FrescoXFuserArgs(model="tiny", ulysses_degree=world).create_config()
        initialize_runtime_state(pipe, engine_config)
        if task == "fresco":
            apply_fresco(pipe, VIDEO_CONFIG)
        out, steps = generate_video_steps(pipe)
        if rank == 0:
            torch.save({"out": out, "steps": steps}, out_path)
    finally:
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.parametrize("world,task", [(2, "stock"), (2, "fresco"), (4, "fresco")])
def test_hunyuan_video_every_step_matches_a_single_process_run(world, task, tmp_path):
    """xDiT's HunyuanVideo runner wrapper (no padding of its own; it drops padded text instead of masking it) on the
    odd 4x5 token grid: Fresco's strip of mixed tokens splits like a grid, its rotary table through the hook on
    ``rope``."""
    result = run_ranks(_video_worker, world, task, tmp_path, TIMEOUT_S)
    single = tiny_hunyuan_video_pipeline(num_attention_heads=4)
    single.set_progress_bar_config(disable=True)
    if task == "fresco":
        apply_fresco(single, FrescoConfig(stage_scales=(0.5, 1.0), promotion_rounds=1, token_multiple=world))
    out, steps = generate_video_steps(single)
    if task == "fresco":
        assert len({s.shape[1] for s in steps}) == 3 and all(s.shape[1] % world == 0 for s in steps)
    for parallel_step, single_step in zip(result["steps"], steps, strict=True):
        assert torch.allclose(parallel_step, single_step, atol=1e-5)
    assert torch.allclose(result["out"], out, atol=1e-5)


def _pipefusion_worker(rank, world, port, task, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import_xfuser_on_cpu()
    dist.init_process_group("gloo", rank=0, world_size=1, timeout=datetime.timedelta(seconds=60))
    try:
        from xfuser import xFuserFluxPipeline
        from xfuser.core.distributed import init_distributed_environment

        from fresco_plugin.integrations.xdit import FrescoXFuserArgs

        init_distributed_environment()
        engine_config, _ = FrescoXFuserArgs(model="tiny").create_config()
        pipe = xFuserFluxPipeline(tiny_flux_pipeline(), engine_config)
        try:
            apply_fresco(pipe, CONFIG)
        except ValueError as error:
            torch.save({"error": str(error)}, out_path)
    finally:
        dist.destroy_process_group()


def test_xdit_pipefusion_pipelines_are_refused_naming_the_runner_path(tmp_path):
    error = run_ranks(_pipefusion_worker, 1, "pipefusion", tmp_path, TIMEOUT_S)["error"]
    assert error.startswith("Fresco does not run on xDiT's xFuserFluxPipeline: its PipeFusion loop slices the latents")
    assert "xDiT's runner-path transformer wrapper (xFuserFlux1Transformer2DWrapper" in error


def test_fresco_preset_is_one_flag_on_xdits_argument_parser():
    import_xfuser_on_cpu()
    from xfuser.config import FlexibleArgumentParser

    from fresco_plugin.integrations.xdit import FrescoXFuserArgs

    parser = FrescoXFuserArgs.add_cli_args(FlexibleArgumentParser())
    args = FrescoXFuserArgs.from_cli_args(parser.parse_args(["--model", "m", "--ulysses_degree", "2",
                                                              "--fresco-preset", "flux-dev-5x"]))
    assert args.ulysses_degree == 2 and args.fresco_config() == FrescoConfig.preset("flux-dev-5x")
    underscored = parser.parse_args(["--model", "m", "--fresco_preset", "flux-dev-10x"])  # xDiT's own spelling
    assert FrescoXFuserArgs.from_cli_args(underscored).fresco_config() == FrescoConfig.preset("flux-dev-10x")
    assert FrescoXFuserArgs.from_cli_args(parser.parse_args(["--model", "m"])).fresco_config() is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--fresco-preset", "flux-dev-7x"])


def test_the_xdit_example_runs_offline_with_fresco_preset():
    example = Path(__file__).resolve().parents[2] / "examples" / "flux_xdit.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(example),
               "--tiny", "--model", "tiny", "--ulysses_degree", "2", "--fresco-preset", "flux-dev-5x"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 ranks, Fresco flux-dev-5x, image tokens per step [256, 256, 334, 1024" in result.stdout
