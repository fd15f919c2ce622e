"""Qwen-Image specifics beyond the adapter contract: the rope hook, the terminal shift, the guidance rescale."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.models.transformers.transformer_qwenimage import QwenEmbedRope

from fresco_plugin import FrescoConfig, apply_fresco, last_fresco_run, remove_fresco
from fresco_plugin.integrations.diffusers_qwen_image import qwen_guidance, qwen_rope_at_positions
from fresco_plugin.layout import TokenGeometry, TokenLayout
from fresco_plugin.tools.tiny import tiny_qwen_image_edit_pipeline, tiny_qwen_image_pipeline


@pytest.mark.parametrize("scale_rope", [True, False])
@pytest.mark.parametrize("rows, cols", [(6, 8), (5, 7)])
def test_the_rope_at_integer_positions_is_the_stock_table(scale_rope, rows, cols):
    rope = QwenEmbedRope(theta=10000, axes_dim=[4, 6, 6], scale_rope=scale_rope)
    positions = TokenLayout.uniform(1, TokenGeometry(4, 2, rows, cols), 0, torch.device("cpu")).positions(0)[0]
    stock_image, _ = rope([[(1, rows, cols)]], max_txt_seq_len=3, device=torch.device("cpu"))
    assert torch.equal(qwen_rope_at_positions(rope, positions, rows, cols), stock_image)


def test_a_sketch_is_told_stock_text_positions_for_its_own_grid():
    """The text frequencies start past the grid's half-size: a sketch gets those of a stock call at its size."""
    pipe = tiny_qwen_image_pipeline()
    pipe.set_progress_bar_config(disable=True)
    seen = []
    pipe.transformer.pos_embed.register_forward_hook(lambda module, args, output: seen.append((args[0], output)))
    apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(2, 2), promotion_rounds=0))
    pipe(prompt_embeds=torch.randn(1, 5, 32), true_cfg_scale=1.0, height=64, width=64, output_type="latent")
    (sketch_shapes, (sketch_image, sketch_text)), *_, (full_shapes, (full_image, full_text)) = seen
    assert sketch_shapes[0][0] == (1, 8, 8) and full_shapes[0][0] == (1, 16, 16)
    rope = pipe.transformer.pos_embed
    assert torch.equal(sketch_text, rope([[(1, 8, 8)]], max_txt_seq_len=5, device=torch.device("cpu"))[1])
    assert sketch_image.shape[0] == 64 and full_image.shape[0] == 256


def test_the_image_frequencies_are_computed_once_per_layout_not_per_forward():
    pipe = tiny_qwen_image_pipeline()
    pipe.set_progress_bar_config(disable=True)
    text = dict(prompt_embeds=torch.randn(1, 5, 32), prompt_embeds_mask=torch.ones(1, 5, dtype=torch.long))
    guided = dict(true_cfg_scale=3.0, negative_prompt_embeds=torch.randn(1, 5, 32),
                  negative_prompt_embeds_mask=torch.ones(1, 5, dtype=torch.long))
    call = dict(**text, **guided, height=64, width=64, num_inference_steps=8, output_type="latent")
    config = FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(4, 4), promotion_rounds=1, promotion_ratio=0.3)
    apply_fresco(pipe, config)
    hook = pipe._fresco_runner.position_hook
    cached_class = type(hook)

    class Uncached(cached_class):  # the frequencies afresh at every forward, as before the cache
        def __call__(self, module, args, kwargs, output):
            self._frequencies = None
            return super().__call__(module, args, kwargs, output)

    hook.__class__ = Uncached
    reference = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    hook.__class__ = cached_class
    computed = []
    hook.positions_at = lambda *args: computed.append(1) or qwen_rope_at_positions(*args)
    assert torch.equal(pipe(**call, generator=torch.Generator().manual_seed(0)).images, reference)
    layouts = len(last_fresco_run(pipe).resolution_maps)  # the sketch, after the round, the full grid
    assert 0 < len(computed) == layouts < 2 * 8  # of 16 forwards (8 steps, two branches)


def test_the_terminal_shift_stretches_the_whole_schedule_once():
    pipe = tiny_qwen_image_pipeline()
    pipe.set_progress_bar_config(disable=True)
    apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(4, 4), promotion_rounds=0,
                                    restart_shift_scale=1.0))
    pipe(prompt_embeds=torch.randn(1, 5, 32), true_cfg_scale=1.0, height=64, width=64, output_type="latent")
    sigmas = last_fresco_run(pipe).sigmas_used
    assert sigmas[3] > 0.3  # the sketch's slice is not stretched down to the terminal value on its own
    scheduler = pipe.scheduler
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 8, 8), mu=0.5)  # 256 tokens: the base shift
    assert sigmas[4:] == pytest.approx(scheduler.sigmas[4:8].tolist())  # full-resolution stage: stock's own tail
    assert scheduler.sigmas[7] == pytest.approx(0.02)


def test_own_restart_spacing_under_the_terminal_shift_ends_at_stock_s_last_sigma():
    """``restart_spacing="own"`` on a stretched schedule: the restarted stage starts where the stretched scaled
    schedule starts (the stretch's scale follows the whole schedule's last point, which the own spacing moves back to
    stock's) and ends at stock's terminal sigma."""
    def sigmas(**kwargs):
        pipe = tiny_qwen_image_pipeline()
        pipe.set_progress_bar_config(disable=True)
        apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(4, 4), promotion_rounds=0, **kwargs))
        pipe(prompt_embeds=torch.randn(1, 5, 32), true_cfg_scale=1.0, height=64, width=64, output_type="latent")
        return np.array(last_fresco_run(pipe).sigmas_used)

    stock, shifted = sigmas(restart_shift_scale=1.0), sigmas(restart_shift_scale=2.0)
    own = sigmas(restart_shift_scale=2.0, restart_spacing="own")
    assert np.array_equal(own[:4], shifted[:4]) and (np.diff(own[4:]) < 0).all()
    assert own[4] == pytest.approx(shifted[4], abs=1e-5) and own[-1] == pytest.approx(stock[-1], abs=1e-6)
    assert (own[5:] < shifted[5:] - 1e-3).any()  # the spacing, not only the start, changed


def test_guidance_keeps_the_conditional_norm_per_token():
    cond, uncond = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    combined = qwen_guidance(cond, uncond, 4.0)
    assert torch.allclose(combined.norm(dim=-1), cond.norm(dim=-1), atol=1e-5)
    direction = uncond + 4.0 * (cond - uncond)
    assert torch.allclose(torch.nn.functional.cosine_similarity(combined, direction, dim=-1), torch.ones(2, 5))


def test_editing_is_stock_bit_for_bit_in_one_stage_and_keeps_the_reference_whole_in_a_sketch():
    """Qwen-Image-Edit with true CFG (its contract row is slow: stock resizes the reference to a 1024x1024 area)."""
    pipe = tiny_qwen_image_edit_pipeline()
    pipe.set_progress_bar_config(disable=True)
    picture = PIL.Image.new("RGB", (48, 32), (90, 140, 200))
    text, negative = torch.randn(1, 5, 32), torch.randn(1, 5, 32)

    def edit():
        return pipe(image=picture, prompt_embeds=text, negative_prompt_embeds=negative, true_cfg_scale=3.0,
                    height=128, width=128, num_inference_steps=4, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).images

    stock = edit()
    apply_fresco(pipe, FrescoConfig(stage_scales=(1.0,)))
    assert torch.equal(edit(), stock)
    remove_fresco(pipe)
    seen = []
    pipe.transformer.register_forward_pre_hook(
        lambda module, args, kw: seen.append((kw["hidden_states"].shape[1], kw["img_shapes"][0])), with_kwargs=True)
    apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(2, 2), promotion_rounds=0))
    out = edit()
    reference = (1, 52, 78)  # a 1024x1024 area at 3:2 in 32s (1248x832 pixels), 8x VAE, 2x2 tokens
    assert seen[0] == (4 * 4 + 52 * 78, [(1, 4, 4), reference])  # the sketch, the reference whole
    assert seen[-1] == (8 * 8 + 52 * 78, [(1, 8, 8), reference])
    assert out.shape == stock.shape and torch.isfinite(out).all()
