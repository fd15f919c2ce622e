"""HunyuanVideo and HunyuanVideo-1.5 under diffusers context parallelism (Ulysses) through our plan, with and without
Fresco, really run across 2 and 4 gloo processes on the CPU and compared with a single process at every step
(HunyuanVideo-1.5, which takes no step callback: its output).

The text is padded (its mask ends in zeros), so a wrongly ordered attention mask would let padding in and fail the
comparison; HunyuanVideo-1.5's joint text (Qwen, ByT5 and 729 image-embedding tokens, 741 here: padded to 742 for
2 ranks) is mostly padding.
Each worker sets ``torch.accelerator.device_count`` to 1, as in the FLUX tests (diffusers' CPU mesh).
"""

import datetime
import os

import numpy as np
import PIL.Image
import pytest
import torch
import torch.distributed as dist
from conftest import generate_video_steps, shared_launches

from fresco_plugin import FrescoConfig, apply_fresco
from fresco_plugin.integrations.hunyuan_video_parallel import interleave_mask
from fresco_plugin.tools.tiny import (
    tiny_hunyuan_video15_i2v_pipeline,
    tiny_hunyuan_video15_pipeline,
    tiny_hunyuan_video_pipeline,
)

pytestmark = pytest.mark.multiprocess

CONFIG = FrescoConfig(stage_scales=(0.5, 1.0), promotion_rounds=1)
TIMEOUT_S = 240


def _pipe(heads=4):
    pipe = tiny_hunyuan_video_pipeline(num_attention_heads=heads)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# image to video: a 48x80 picture, 12 x 20 latent tokens per frame
PICTURE = PIL.Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 80, 3), dtype=np.uint8))


def _generate_15(pipe) -> torch.Tensor:
    """6 guided steps of the tiny HunyuanVideo-1.5 at 64x80 pixels (image to video: the picture's size), 5 frames
    (16 x 20 latent tokens, 2 frames), with padded Qwen and ByT5 text (8 and 4 tokens)."""
    g = torch.Generator().manual_seed(1)
    mask, mask_2 = torch.ones(1, 8), torch.ones(1, 4)
    mask[:, 6:], mask_2[:, 3:] = 0, 0
    text = {"prompt_embeds": torch.randn(1, 8, 16, generator=g), "prompt_embeds_mask": mask,
            "prompt_embeds_2": torch.randn(1, 4, 8, generator=g), "prompt_embeds_mask_2": mask_2}
    negative = {f"negative_{name}": value.clone() if "mask" in name else torch.randn(value.shape, generator=g)
                for name, value in text.items()}
    size = dict(image=PICTURE) if "ImageToVideo" in type(pipe).__name__ else dict(height=64, width=80)
    return pipe(**text, **negative, **size, num_frames=5, num_inference_steps=6, output_type="latent",
                generator=torch.Generator().manual_seed(0)).frames


def _pipe_15(task):
    pipe = (tiny_hunyuan_video15_i2v_pipeline if "i2v" in task else tiny_hunyuan_video15_pipeline)()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# Every case of one world size runs in one launch (``shared_launches``).
CASES = {2: ("stock", "fresco", "fresco-first", "1.5-stock", "1.5-fresco", "1.5-i2v-fresco"),
         4: ("stock", "fresco", "padded", "heads", "text")}


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

    from fresco_plugin.integrations.hunyuan_video_parallel import enable_hunyuan_video_parallelism

    if case.startswith("1.5"):
        pipe = _pipe_15(case)
        enable_hunyuan_video_parallelism(pipe.transformer, ContextParallelConfig(ulysses_degree=world))
        if case.endswith("fresco"):
            apply_fresco(pipe, CONFIG)
        return {"out": _generate_15(pipe)}
    pipe = _pipe(heads=2 if case == "heads" else 4)
    try:
        if case == "fresco-first":
            apply_fresco(pipe, CONFIG)
        enable_hunyuan_video_parallelism(pipe.transformer, ContextParallelConfig(ulysses_degree=world))
        if case in ("fresco", "text", "padded"):
            apply_fresco(pipe, CONFIG)
        # one latent frame: the half-resolution grid holds 2 x 3 = 6 tokens, which degree 4 does not divide
        out, steps = generate_video_steps(pipe, text_tokens=6 if case == "text" else 8,
                                          num_frames=1 if case == "padded" else 5)
    except ValueError as error:  # the refusals
        return {"error": str(error)}
    return {"out": out, "steps": steps}


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    return shared_launches(_worker, tmp_path_factory, TIMEOUT_S)


def test_the_mask_follows_the_sequence_ulysses_assembles():
    mask = torch.tensor([1, 2, 3, 4, 10, 20, 30, 40])  # four image tokens, then four text tokens
    assert interleave_mask(mask, 4, 2).tolist() == [1, 2, 10, 20, 3, 4, 30, 40]


@pytest.mark.parametrize("world,task", [(2, "stock"), (4, "stock"), (2, "fresco"), (4, "fresco"),
                                        (2, "fresco-first")])
def test_every_step_matches_a_single_process_run(world, task, launched):
    result = launched(world)[task]
    single = _pipe()
    if task != "stock":
        apply_fresco(single, FrescoConfig(stage_scales=(0.5, 1.0), promotion_rounds=1, token_multiple=world))
    out, steps = generate_video_steps(single)
    if task != "stock":
        assert len({s.shape[1] for s in steps}) == 3  # half resolution, after the round, full resolution
    for parallel_step, single_step in zip(result["steps"], steps, strict=True):
        assert torch.allclose(parallel_step, single_step, atol=1e-5)
    assert torch.allclose(result["out"], out, atol=1e-5)


@pytest.mark.parametrize("task", ["1.5-stock", "1.5-fresco", "1.5-i2v-fresco"])
def test_hunyuan_video15_matches_a_single_process_run(task, launched):
    single = _pipe_15(task)
    if task.endswith("fresco"):
        apply_fresco(single, FrescoConfig(stage_scales=(0.5, 1.0), promotion_rounds=1, token_multiple=2))
    assert torch.allclose(launched(2)[task]["out"], _generate_15(single), atol=1e-5)


def test_degrees_that_cannot_work_are_refused(launched):
    refusals = launched(4)
    assert "2 attention heads, which Ulysses degree 4 does not divide" in refusals["heads"]["error"]
    assert "6 text tokens do not split over context-parallel degree 4" in refusals["text"]["error"]


def test_a_stage_that_cannot_split_evenly_is_padded_with_masked_tokens(launched):
    """One latent frame: the half-resolution stage holds 2 x 3 = 6 tokens; over 4 ranks it runs as a strip of 8
    whose last 2 are masked out of every key (and dropped), and still equals one process at every step."""
    result = launched(4)["padded"]
    single = _pipe()
    apply_fresco(single, FrescoConfig(stage_scales=(0.5, 1.0), promotion_rounds=1, token_multiple=4))
    out, steps = generate_video_steps(single, num_frames=1)
    assert any(s.shape[1] % 4 for s in steps)  # padding was needed
    for parallel_step, single_step in zip(result["steps"], steps, strict=True):
        assert torch.allclose(parallel_step, single_step, atol=1e-5)
    assert torch.allclose(result["out"], out, atol=1e-5)
