"""FLUX.2 specifics beyond the adapter contract: references ride along whole at stock's positions, and each stage's
shift is FLUX.2's step-dependent one for that stage's token count."""

import PIL.Image
import torch
from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

from fresco_plugin import FrescoConfig, apply_fresco
from fresco_plugin.tools.tiny import tiny_flux2_klein_pipeline, tiny_flux2_pipeline

CONFIG = FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(2, 2), promotion_rounds=0, restart_shift_scale=1.0)


def _forwards(pipe, **kwargs):
    seen = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kw: seen.append((kw["hidden_states"].shape[1], kw["img_ids"].reshape(-1, 4).clone(),
                                              kw["timestep"])), with_kwargs=True)
    pipe(prompt_embeds=torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1)), height=32, width=32,
         num_inference_steps=4, output_type="latent", generator=torch.Generator().manual_seed(0), **kwargs)
    handle.remove()
    return seen


def test_references_keep_their_tokens_and_positions_while_the_picture_is_sketched():
    pipe = tiny_flux2_klein_pipeline()
    pipe.set_progress_bar_config(disable=True)
    reference = dict(image=PIL.Image.new("RGB", (96, 64), (10, 200, 30)), guidance_scale=1.0)
    stock_tokens, stock_ids, _ = _forwards(pipe, **reference)[0]
    reference_ids = stock_ids[16 * 16:]  # a 64x96 picture: 32x48 packed tokens at frame 10
    assert reference_ids.shape[0] == 32 * 48 and bool((reference_ids[:, 0] == 10).all())
    apply_fresco(pipe, CONFIG)
    (sketch_tokens, sketch_ids, _), *_, (full_tokens, full_ids, _) = _forwards(pipe, **reference)
    assert (sketch_tokens, full_tokens) == (8 * 8 + 32 * 48, stock_tokens)
    assert torch.equal(sketch_ids[8 * 8:], reference_ids) and torch.equal(full_ids, stock_ids)
    sketch_grid = sketch_ids[:8 * 8]  # a stock call at the sketch's size: frame 0, the integer 8x8 grid, layer 0
    assert bool((sketch_grid[:, [0, 3]] == 0).all()) and sketch_grid[:, 1:3].max() == 7


def test_each_stage_starts_at_the_shift_stock_gives_its_token_count_and_the_call_s_steps():
    pipe = tiny_flux2_pipeline()
    pipe.set_progress_bar_config(disable=True)
    apply_fresco(pipe, CONFIG)
    forwards = _forwards(pipe)
    for (tokens, _, timestep), start in ((forwards[0], 1.0), (forwards[2], 0.5)):
        shift = float(torch.tensor(compute_empirical_mu(tokens, 4)).exp())
        expected = shift * start / (1 + (shift - 1) * start)  # the exponential time shift of the stage's first sigma
        assert abs(float(timestep[0]) - expected) < 1e-5, (tokens, float(timestep[0]), expected)
