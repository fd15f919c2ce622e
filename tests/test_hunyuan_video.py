"""Fresco on a stock diffusers HunyuanVideoPipeline (tiny random weights built from configs)."""

import pytest
import torch

from fresco_plugin import FrescoConfig, apply_fresco
from fresco_plugin.integrations.diffusers_hunyuan_video import rope_at_positions
from fresco_plugin.layout import TokenGeometry, TokenLayout
from fresco_plugin.schedule import plan_stages, plan_token_counts
from fresco_plugin.tools.tiny import tiny_hunyuan_video_pipeline

# 64x80 pixels, 5 frames -> latent 2 x 8 x 10 -> tokens 2 frames x 4 rows x 5 cols (an odd side)
SIZE = dict(height=64, width=80, num_frames=5)
ROWS, COLS, FRAMES = 4, 5, 2


@pytest.fixture
def video_pipe():
    pipe = tiny_hunyuan_video_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _text(batch=1, seed=1, masked_from=None):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, 8, dtype=torch.long)
    if masked_from is not None:
        mask[:, masked_from:] = 0
    return dict(prompt_embeds=torch.randn(batch, 8, 16, generator=g),
                pooled_prompt_embeds=torch.randn(batch, 8, generator=g), prompt_attention_mask=mask)


def _call(pipe, seed=0, text=None, **kwargs):
    args = dict(**(text or _text()), **SIZE, num_inference_steps=8, output_type="latent",
                generator=torch.Generator().manual_seed(seed))
    args.update(kwargs)
    return pipe(**args).frames


def _record_tokens(pipe):
    seen = []

    def hook(module, args, kwargs):
        _, _, frames, height, width = kwargs["hidden_states"].shape
        seen.append(frames * height * width // 4)

    return seen, pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("config", [FrescoConfig(), FrescoConfig(stage_scales=(0.25, 0.5, 1.0), promotion_ratio=0.5)])
def test_token_counts_follow_the_plan_on_an_odd_grid(video_pipe, config):
    apply_fresco(video_pipe, config)
    seen, handle = _record_tokens(video_pipe)
    out = _call(video_pipe, num_inference_steps=9)
    handle.remove()
    stages = plan_stages(config, 9, min_score_history=2)
    assert seen == plan_token_counts(config, stages, ROWS, COLS, FRAMES)
    assert out.shape == (1, 4, FRAMES, 2 * ROWS, 2 * COLS) and torch.isfinite(out).all()


def test_odd_rows_and_cols_pad_then_crop(video_pipe):
    stock = _call(video_pipe, height=48, width=80)  # 3 x 5 tokens per frame
    apply_fresco(video_pipe, FrescoConfig(stage_scales=(0.25, 0.5, 1.0)))
    seen, handle = _record_tokens(video_pipe)
    out = _call(video_pipe, height=48, width=80, num_inference_steps=9)
    handle.remove()
    assert out.shape == stock.shape and torch.isfinite(out).all()
    assert seen[0] == FRAMES * 1 * 2  # quarter resolution rounds 3 x 5 up to 1 x 2 per frame
    assert seen[-1] == FRAMES * 3 * 5  # the padding is gone at full resolution


def test_prompt_attention_mask_is_respected(video_pipe):
    apply_fresco(video_pipe, FrescoConfig())
    text = _text(masked_from=4)
    edited = {**text, "prompt_embeds": text["prompt_embeds"].clone()}
    edited["prompt_embeds"][:, 4:] = torch.randn(1, 4, 16)  # only masked-out tokens change
    assert torch.allclose(_call(video_pipe, text=text), _call(video_pipe, text=edited), atol=1e-6)
    assert not torch.allclose(_call(video_pipe, text=text), _call(video_pipe, text=_text()), atol=1e-3)


def test_rope_at_positions_matches_the_stock_grid_embedding(video_pipe):
    rope = video_pipe.transformer.rope
    hidden = torch.zeros(1, 4, 3, 8, 10)  # 3 frames x 4 x 5 tokens
    geometry = TokenGeometry(4, 2, 4, 5, frames=3)
    positions = TokenLayout.uniform(1, geometry, 0, torch.device("cpu")).positions(0)[0]
    stock_cos, stock_sin = rope(hidden)
    cos, sin = rope_at_positions(rope, positions)
    assert torch.equal(cos, stock_cos) and torch.equal(sin, stock_sin)


def test_mixed_token_path_equals_the_grid_path(video_pipe):
    """The strip layout with rope-at-positions computes what the stock grid computes, token for token."""
    apply_fresco(video_pipe, FrescoConfig())
    runner = video_pipe._fresco_runner
    from fresco_plugin.integrations.diffusers_hunyuan_video import _HunyuanVideoDenoiser
    from fresco_plugin.sampler import Step

    text = _text()
    denoiser = _HunyuanVideoDenoiser(video_pipe, {"prompt_embeds": text["prompt_embeds"],
                                                  "pooled": text["pooled_prompt_embeds"],
                                                  "mask": text["prompt_attention_mask"].float()}, None, 1.0)
    denoiser.guidance, denoiser.attention_kwargs = torch.tensor([6000.0]), None
    geometry = TokenGeometry(4, 2, ROWS, COLS, frames=FRAMES)
    runner.placed(denoiser, geometry)
    positions = TokenLayout.uniform(1, geometry, 0, torch.device("cpu")).positions(0)
    latents = torch.randn(1, geometry.num_tokens, geometry.token_dim)
    step = Step(0, 0, torch.tensor(0.5), torch.tensor(500.0))
    grid = denoiser(latents, positions, step)
    order = torch.randperm(geometry.num_tokens, generator=torch.Generator().manual_seed(0))
    strip = denoiser(latents[:, order], positions[:, order], step)
    assert torch.allclose(strip, grid[:, order], atol=1e-5)


@pytest.mark.parametrize("num_frames", [2, 6])
def test_frame_counts_stock_accepts_work_the_same_way(video_pipe, num_frames):
    stock = _call(video_pipe, num_frames=num_frames, num_inference_steps=2)
    apply_fresco(video_pipe, FrescoConfig(stage_scales=(1.0,)))
    assert torch.equal(_call(video_pipe, num_frames=num_frames, num_inference_steps=2), stock)


def test_unsupported_settings_are_refused(video_pipe):
    with pytest.raises(ValueError, match="patch_size_t == 1"):
        apply_fresco(tiny_hunyuan_video_pipeline(patch_size_t=2), FrescoConfig())
    apply_fresco(video_pipe, FrescoConfig())
    with pytest.raises(ValueError, match=r"num_frames=0: give a whole number >= 1"):
        _call(video_pipe, num_frames=0)
    with pytest.raises(ValueError, match="drop sigmas="):
        _call(video_pipe, sigmas=[1.0, 0.5])
