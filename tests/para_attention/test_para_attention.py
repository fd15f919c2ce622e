"""Fresco with ParaAttention (para-attn 0.3.38, diffusers 0.34), in the environment ``run.sh`` builds.

ParaAttention patches the pipeline *class* (its settings live there, process-wide), so every scenario runs in a
fresh process. Context parallelism really runs across 2 and 4 gloo processes, like the diffusers tests.
"""

import datetime
import os
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
from conftest import UNEVEN_SIZE, generate_video_steps, run_ranks, text_inputs

from fresco_plugin import FrescoConfig, apply_fresco, register_score, remove_fresco
from fresco_plugin.tools.tiny import tiny_flux_pipeline, tiny_hunyuan_video_pipeline

CONFIG = FrescoConfig(stage_scales=(0.25, 0.5, 1.0), promotion_rounds=1, target_speedup=None)  # equal shares
THRESHOLD = 0.3  # high enough that the tiny random model skips blocks at most steps
# A batch's first forwards share one cache decision (the mean over the batch, as in stock ParaAttention), so a
# batch can only match its images run alone if those forwards never skip: the warm-up covers the steps before the
# first promotion round, after which each image's layout differs and Fresco gives it its own cache context.
WARMUP = 2
TIMEOUT_S = 240


def _pipe(heads=4):
    pipe = tiny_flux_pipeline(num_attention_heads=heads)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe, batch=1, seed=0, text_tokens=8, rows=None, height=64, width=64):
    """``rows`` picks rows of the batch's text inputs, so one image alone gets the text it had in the batch."""
    steps = []

    def record(pipe, index, timestep, kwargs):
        steps.append(kwargs["latents"].clone())
        return {}

    generator = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
    text = text_inputs(batch=batch if rows is None else 2, tokens=text_tokens)
    if rows is not None:
        text = {name: value[rows] for name, value in text.items()}
    out = pipe(**text, height=height, width=width, num_inference_steps=12,
               output_type="latent", generator=generator if batch > 1 else generator[0],
               callback_on_step_end=record).images
    return out, steps


def _count_block_runs(pipe):
    runs = []
    pipe.transformer.single_transformer_blocks[-1].register_forward_pre_hook(lambda *_: runs.append(1))
    return runs


# ------------------------------------------------------------------------------------------ first-block cache
def _cache_worker(rank, world, port, task, out_path):
    from para_attn.first_block_cache.diffusers_adapters import apply_cache_on_pipe

    if task == "two-pipelines":  # ParaAttention patches its pipeline's class; each Fresco pipeline has its own
        first, second = _pipe(), _pipe()
        apply_fresco(first, CONFIG)
        apply_cache_on_pipe(first, residual_diff_threshold=THRESHOLD, warmup_steps=WARMUP)
        apply_fresco(second, CONFIG)
        apply_cache_on_pipe(second, residual_diff_threshold=0.0, warmup_steps=WARMUP)
        torch.save({"batch": _generate(second, batch=2)[0]}, out_path)
        return
    pipe = _pipe()
    settings = dict(residual_diff_threshold=0.0 if task == "threshold-0" else THRESHOLD,
                    enable_taylorseer=task == "taylorseer", warmup_steps=WARMUP)
    runs = _count_block_runs(pipe)  # on the block module itself: ParaAttention calls it only when it computes
    if task == "fresco-first":
        apply_fresco(pipe, CONFIG)
        apply_cache_on_pipe(pipe, **settings)
    elif task != "no-cache":
        apply_cache_on_pipe(pipe, **settings)
        apply_fresco(pipe, CONFIG)
    else:
        apply_fresco(pipe, CONFIG)
    result = {}
    result["batch"], _ = _generate(pipe, batch=2)
    result["block_runs"], runs[:] = len(runs), []
    result["alone"] = [_generate(pipe, seed=i, rows=slice(i, i + 1))[0] for i in range(2)]
    result["tokens"] = pipe._fresco_runner.last_run.tokens_per_step
    if task == "fresco-first":
        remove_fresco(pipe)
        try:
            result["stock_after_remove"] = _generate(pipe)[0]
        except AssertionError as error:
            result["stock_after_remove"] = str(error)
    torch.save(result, out_path)


@pytest.fixture(scope="module")
def cache_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cache")
    return {task: run_ranks(_cache_worker, 1, task, tmp, TIMEOUT_S)
            for task in ("no-cache", "threshold-0", "cache-first", "fresco-first", "taylorseer", "two-pipelines")}


def test_a_cache_that_never_skips_changes_nothing(cache_runs):
    assert torch.allclose(cache_runs["threshold-0"]["batch"], cache_runs["no-cache"]["batch"], atol=1e-6)


def test_a_second_fresco_pipeline_keeps_its_own_cache_settings(cache_runs):
    """Its threshold of 0 never skips, whatever the first pipeline's wrapper holds."""
    assert torch.allclose(cache_runs["two-pipelines"]["batch"], cache_runs["no-cache"]["batch"], atol=1e-6)


@pytest.mark.parametrize("task", ["cache-first", "fresco-first", "taylorseer"])
def test_the_cache_skips_blocks_and_keeps_each_image_to_itself(cache_runs, task):
    run, plain = cache_runs[task], cache_runs["no-cache"]
    forwards = 2 * len(run["tokens"])  # two images; per-image forwards once their layouts differ
    assert len(set(run["tokens"])) > 2  # the token count changed inside the generation
    assert run["block_runs"] < plain["block_runs"] <= forwards  # the cache skipped blocks under Fresco
    assert torch.isfinite(run["batch"]).all()
    # each image of the batch gets exactly what it gets alone: no image was handed the other's residual
    for index, alone in enumerate(run["alone"]):
        assert torch.allclose(run["batch"][index:index + 1], alone, atol=1e-5)


def test_either_order_gives_the_same_generation(cache_runs):
    assert torch.equal(cache_runs["fresco-first"]["batch"], cache_runs["cache-first"]["batch"])


def test_removing_fresco_leaves_a_working_cached_pipeline(cache_runs):
    assert isinstance(cache_runs["fresco-first"]["stock_after_remove"], torch.Tensor)


# ------------------------------------------------------------------------------------------ context parallel
def _parallel_worker(rank, world, port, task, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        from para_attn.context_parallel import init_context_parallel_mesh
        from para_attn.context_parallel.diffusers_adapters import parallelize_pipe

        pipe = _pipe(heads=2 if task == "heads" else 4)
        config = CONFIG
        if task == "agree":
            register_score("noisy-x0", _noisy_x0_score, min_history=2, replace=True)
            config = replace(CONFIG, score="noisy-x0")
        if task == "match-fresco-first":
            apply_fresco(pipe, config)
        parallelize_pipe(pipe, mesh=init_context_parallel_mesh("cpu"))
        if task != "match-fresco-first":
            apply_fresco(pipe, config)
        result = {}
        try:
            out, steps = _generate(pipe, text_tokens=6 if task == "text" else 8,
                                   **(UNEVEN_SIZE if task == "pad" else {}))
        except ValueError as error:
            result["error"] = str(error)
        else:
            result["out"], result["steps"] = out, steps
            gathered = [torch.empty_like(out) for _ in range(world)]
            dist.all_gather(gathered, out)
            result["same_on_all_ranks"] = all(torch.equal(g, gathered[0]) for g in gathered)
        if rank == 0:
            torch.save(result, out_path)
    finally:
        dist.barrier()  # a rank that finishes early (a refusal) must not take the store down under the others
        dist.destroy_process_group()


def _noisy_x0_score(history):
    from fresco_plugin.selection import x0_step_variance

    base = x0_step_variance(history)
    return base + torch.rand(base.shape, generator=torch.Generator().manual_seed(dist.get_rank() + 1))


@pytest.mark.parametrize("world,task", [(2, "match"), (4, "match"), (2, "match-fresco-first")])
def test_every_step_matches_a_single_process_run(world, task, tmp_path):
    result = run_ranks(_parallel_worker, world, task, tmp_path, TIMEOUT_S)
    single = _pipe()
    apply_fresco(single, replace(CONFIG, token_multiple=world))
    out, steps = _generate(single)
    assert [s.shape[1] % world for s in steps] == [0] * len(steps)
    assert len({s.shape[1] for s in steps}) == 5
    for parallel_step, single_step in zip(result["steps"], steps, strict=True):
        assert torch.allclose(parallel_step, single_step, atol=1e-5)
    assert torch.allclose(result["out"], out, atol=1e-5)


@pytest.mark.parametrize("world", [2, 4])
def test_a_stage_that_cannot_split_evenly_is_padded_with_masked_tokens(world, tmp_path):
    """72x40 pixels: 45 tokens at quarter resolution, padded to the degree with tokens ParaAttention's Ulysses
    attention masks out (the same mask as under diffusers), equal to one process at every step."""
    result = run_ranks(_parallel_worker, world, "pad", tmp_path, TIMEOUT_S)
    single = _pipe()
    apply_fresco(single, replace(CONFIG, token_multiple=world))
    out, steps = _generate(single, **UNEVEN_SIZE)
    assert any(s.shape[1] % world for s in steps)  # padding was needed
    for parallel_step, single_step in zip(result["steps"], steps, strict=True):
        assert torch.allclose(parallel_step, single_step, atol=1e-5)
    assert torch.allclose(result["out"], out, atol=1e-5)


def test_ranks_take_rank_zeros_decision_even_when_their_scores_differ(tmp_path):
    assert run_ranks(_parallel_worker, 2, "agree", tmp_path, TIMEOUT_S)["same_on_all_ranks"]


def test_degrees_that_cannot_work_are_refused(tmp_path):
    text = run_ranks(_parallel_worker, 4, "text", tmp_path, TIMEOUT_S)["error"]
    assert "text tokens do not split over context-parallel degree 4" in text
    heads = run_ranks(_parallel_worker, 4, "heads", tmp_path, TIMEOUT_S)["error"]
    assert "2 attention heads, which Ulysses degree 4 does not divide" in heads


# ------------------------------------------------------------------------------ context parallelism, HunyuanVideo
def _video_parallel_worker(rank, world, port, task, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        from para_attn.context_parallel import init_context_parallel_mesh
        from para_attn.context_parallel.diffusers_adapters import parallelize_pipe

        pipe = tiny_hunyuan_video_pipeline(num_attention_heads=4)
        pipe.set_progress_bar_config(disable=True)
        result = {}
        try:
            if task == "fresco-first":
                apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0), target_speedup=None))
            parallelize_pipe(pipe, mesh=init_context_parallel_mesh("cpu"))
            if task == "stock":
                generate_video_steps(pipe)
            else:
                if task == "parallel-first":
                    apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0), target_speedup=None))
                generate_video_steps(pipe)
        except (ValueError, RuntimeError) as error:
            result["error"] = str(error)
        if rank == 0:
            torch.save(result, out_path)
    finally:
        dist.barrier()
        dist.destroy_process_group()


def test_hunyuan_video_context_parallelism_is_refused_with_the_working_alternative(tmp_path):
    """ParaAttention's HunyuanVideo split fails in its own supported environment even without Fresco (it passes
    time_text_embed guidance where diffusers 0.34 takes the pooled projection), so Fresco refuses it, in either
    order, naming our plan for diffusers' context parallelism."""
    stock = run_ranks(_video_parallel_worker, 2, "stock", tmp_path, TIMEOUT_S)["error"]
    assert "mat1 and mat2 shapes cannot be multiplied" in stock
    for order in ("parallel-first", "fresco-first"):
        error = run_ranks(_video_parallel_worker, 2, order, tmp_path, TIMEOUT_S)["error"]
        assert error.startswith("ParaAttention's HunyuanVideo context parallelism (para-attn 0.3.38) passes")
        assert "enable_hunyuan_video_parallelism" in error
