"""Fresco under diffusers context parallelism (Ulysses), really run across 2 and 4 gloo processes on the CPU.

diffusers computes ``rank % torch.accelerator.device_count()`` when it builds the mesh, and that count is 0 on a CPU:
each worker sets it to 1 (the documented CPU workaround; GPUs need nothing).
"""

import datetime
import os

import pytest
import torch
import torch.distributed as dist
from conftest import (
    UNEVEN_SIZE,
    assert_every_step_matches,
    generate_flux_steps,
    ranks_agree_under_score_noise,
    shared_launches,
)

from fresco_plugin import FrescoConfig, apply_fresco
from fresco_plugin.integrations._context_parallel import ulysses_padding_mask
from fresco_plugin.tools.tiny import tiny_flux_pipeline

pytestmark = pytest.mark.multiprocess

CONFIG = FrescoConfig(stage_scales=(0.25, 0.5, 1.0), promotion_rounds=1)
TIMEOUT_S = 240


# Every case of one world size runs in one launch (``shared_launches``).
CASES = {2: ("match", "match-fresco-first", "pad", "agree"), 4: ("match", "pad", "text", "heads", "unseeded")}


def _worker(rank, world, port, task, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    torch.accelerator.device_count = lambda: 1
    try:
        results = {case: _case(case, world) for case in CASES[world]}
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.barrier()  # a rank that finishes early must not take the store down under the others
        dist.destroy_process_group()


def _case(case, world) -> dict:
    from diffusers import ContextParallelConfig

    pipe = tiny_flux_pipeline(num_attention_heads=2 if case == "heads" else 4)
    pipe.set_progress_bar_config(disable=True)
    if case == "match-fresco-first":  # the other order: Fresco first, parallelism after
        apply_fresco(pipe, CONFIG)
    pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    if case == "agree":
        return {"same_on_all_ranks": ranks_agree_under_score_noise(pipe, world)}
    if case != "match-fresco-first":
        apply_fresco(pipe, CONFIG)
    try:
        out, steps = generate_flux_steps(pipe, text_tokens=6 if case == "text" else 8, seeded=case != "unseeded",
                                         **(UNEVEN_SIZE if case == "pad" else {}))
    except ValueError as error:  # the refusals, raised before any model call
        return {"error": str(error)}
    return {"out": out, "steps": steps}


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    return shared_launches(_worker, tmp_path_factory, TIMEOUT_S)


@pytest.mark.parametrize("world,task", [(2, "match"), (4, "match"), (2, "match-fresco-first")])
def test_every_step_matches_a_single_process_run(world, task, launched):
    assert_every_step_matches(launched(world)[task], world)


def test_the_padding_mask_follows_the_sequence_ulysses_assembles():
    # 4 text and 5 image tokens padded to 8 over 4 ranks: each rank holds 1 text and 2 image tokens, and the pads
    # (image tokens 5-7) reach into two ranks' shards
    mask = ulysses_padding_mask(text_tokens=4, image_tokens=5, padded_tokens=8, degree=4, device=torch.device("cpu"))
    assert mask.shape == (1, 1, 1, 12)
    assert mask.flatten().tolist() == [True, True, True, True, True, True, True, True, False, True, False, False]


@pytest.mark.parametrize("world", [2, 4])
def test_a_stage_that_cannot_split_evenly_is_padded_with_masked_tokens(world, launched):
    """72x40 pixels: the quarter-resolution stage has 45 tokens; padded to a multiple of the degree, the pads masked
    out of every key, it still equals one process at every step."""
    assert_every_step_matches(launched(world)["pad"], world, UNEVEN_SIZE)


def test_ranks_take_rank_zeros_decision_even_when_their_scores_differ(launched):
    assert launched(2)["agree"]["same_on_all_ranks"]


def test_degrees_that_cannot_work_are_refused(launched):
    errors = launched(4)
    assert "text tokens do not split over context-parallel degree 4" in errors["text"]["error"]
    assert "2 attention heads, which Ulysses degree 4 does not divide" in errors["heads"]["error"]
    assert "every rank must start from the same noise: pass generator=" in errors["unseeded"]["error"]
