"""FLUX.1-Kontext specifics beyond the adapter contract: the reference image rides along whole, at stock's positions."""

from types import SimpleNamespace

import pytest
import torch
from conftest import text_inputs

from fresco_plugin import FrescoConfig, apply_fresco
from fresco_plugin.tools.tiny import tiny_flux_kontext_pipeline

REFERENCE = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(0))  # 12x20 packed tokens


def _ids_per_forward(pipe, **kwargs):
    seen = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kw: seen.append((kw["hidden_states"].shape[1], kw["img_ids"].clone())), with_kwargs=True)
    pipe(**text_inputs(), image=REFERENCE, height=32, width=32, max_area=32 * 32, _auto_resize=False,
         num_inference_steps=4, output_type="latent", generator=torch.Generator().manual_seed(0), **kwargs)
    handle.remove()
    return seen


def test_the_reference_keeps_its_tokens_and_positions_while_the_edit_is_sketched():
    pipe = tiny_flux_kontext_pipeline()
    pipe.set_progress_bar_config(disable=True)
    stock_tokens, stock_ids = _ids_per_forward(pipe)[0]
    reference_ids = stock_ids[16 * 16:]
    assert reference_ids.shape[0] == 12 * 20 and bool((reference_ids[:, 0] == 1).all())
    apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(2, 2), promotion_rounds=0))
    (sketch_tokens, sketch_ids), *_, (full_tokens, full_ids) = _ids_per_forward(pipe)
    assert (sketch_tokens, full_tokens) == (8 * 8 + 12 * 20, stock_tokens)
    assert torch.equal(sketch_ids[8 * 8:], reference_ids) and torch.equal(full_ids[16 * 16:], reference_ids)
    sketch_grid = sketch_ids[:8 * 8, 1:]  # a stock call at the sketch's size: the integer 8x8 grid, frame 0
    assert bool((sketch_ids[:8 * 8, 0] == 0).all()) and sketch_grid.max() == 7 and torch.equal(sketch_grid,
                                                                                                 sketch_grid.round())


def test_a_max_area_that_leaves_no_picture_is_refused_naming_it():
    pipe = tiny_flux_kontext_pipeline()
    pipe.set_progress_bar_config(disable=True)
    apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(2, 2), promotion_rounds=0))
    with pytest.raises(ValueError, match="max_area=1 "):
        pipe(**text_inputs(), image=REFERENCE, height=32, width=32, max_area=1, num_inference_steps=4,
             output_type="latent")


def test_a_reference_whose_tokens_cannot_split_over_the_ranks_is_refused_before_any_forward():
    pipe = tiny_flux_kontext_pipeline()
    pipe.set_progress_bar_config(disable=True)
    apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(2, 2), promotion_rounds=0))
    # what enable_parallelism(ContextParallelConfig(ulysses_degree=2)) leaves on the transformer, without the processes
    pipe.transformer._parallel_config = SimpleNamespace(
        context_parallel_config=SimpleNamespace(ulysses_degree=2, ring_degree=1))
    forwards = []
    pipe.transformer.register_forward_pre_hook(lambda *_: forwards.append(1))
    odd = torch.rand(1, 3, 30, 30, generator=torch.Generator().manual_seed(0))  # 15x15 packed tokens
    with pytest.raises(ValueError, match="the 225 reference-image tokens do not split over context-parallel degree 2"):
        pipe(**text_inputs(), image=odd, height=32, width=32, max_area=32 * 32, _auto_resize=False,
             num_inference_steps=4, output_type="latent", generator=torch.Generator().manual_seed(0))
    assert not forwards
