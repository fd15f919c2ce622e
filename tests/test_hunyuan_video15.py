"""HunyuanVideo-1.5 specifics beyond the adapter contract: guidance is the pipeline's guider, asked at every step as
stock asks it, and the rotary embedding at arbitrary positions is stock's at integer ones."""

import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance

from fresco_plugin import FrescoConfig, apply_fresco, last_fresco_run
from fresco_plugin.integrations.diffusers_hunyuan_video15 import HunyuanVideo15FrescoRunner
from fresco_plugin.schedule import plan_stages, plan_token_counts
from fresco_plugin.tools.tiny import tiny_hunyuan_video15_pipeline

SIZE = dict(height=48, width=80, num_frames=5)  # 2 latent frames of 12x20 tokens
CONFIG = FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(3, 3), promotion_rounds=1, promotion_ratio=0.3)


def _text(batch: int, seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask, mask_2 = torch.ones(batch, 8), torch.ones(batch, 5)
    mask[:, 6:], mask_2[:, 3:] = 0, 0
    return {f"{prefix}prompt_embeds": torch.randn(batch, 8, 16, generator=g), f"{prefix}prompt_embeds_mask": mask,
            f"{prefix}prompt_embeds_2": torch.randn(batch, 5, 8, generator=g), f"{prefix}prompt_embeds_mask_2": mask_2}


def _guided(batch: int = 1, seed: int = 1) -> dict[str, torch.Tensor]:
    return {**_text(batch, seed), **_text(batch, seed + 100, "negative_")}


def _run(pipe, seed=0, **kwargs):
    return pipe(**{**_guided(), **kwargs}, **SIZE, num_inference_steps=6, output_type="latent",
                generator=torch.Generator().manual_seed(seed)).frames


def _pipe(**guider):
    pipe = tiny_hunyuan_video15_pipeline()
    if guider:
        pipe.guider = ClassifierFreeGuidance(**guider)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("guider", [{"guidance_scale": 6.0}, {"guidance_scale": 4.0, "start": 0.2, "stop": 0.7},
                                    {"guidance_scale": 5.0, "guidance_rescale": 0.7}],
                         ids=["cfg", "cfg-on-part-of-the-steps", "cfg-rescaled"])
def test_one_full_resolution_stage_is_stock_bit_for_bit_under_the_guider(guider):
    pipe = _pipe(**guider)
    stock = _run(pipe)
    apply_fresco(pipe, FrescoConfig(stage_scales=(1.0,)))
    assert torch.equal(_run(pipe), stock)


def test_the_guider_s_branches_run_on_one_layout_at_every_step_it_wants_them():
    pipe = _pipe(guidance_scale=4.0, start=0.0, stop=0.5)  # CFG on the first 3 of 6 steps only
    apply_fresco(pipe, CONFIG)
    seen = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["hidden_states"].shape[2:].numel()), with_kwargs=True)
    out = _run(pipe)
    handle.remove()
    expected = plan_token_counts(CONFIG, plan_stages(CONFIG, 6, min_score_history=2), 12, 20, 2)
    assert seen == [n for n in expected[:3] for _ in range(2)] + expected[3:] and torch.isfinite(out).all()


def test_a_guided_batch_equals_its_single_calls():
    pipe = _pipe(guidance_scale=6.0)
    apply_fresco(pipe, CONFIG)
    texts = [_guided(1, seed) for seed in (1, 2)]
    batch = {k: torch.cat([t[k] for t in texts]) for k in texts[0]}
    together = pipe(**batch, **SIZE, num_inference_steps=6, output_type="latent",
                    generator=[torch.Generator().manual_seed(s) for s in (10, 20)]).frames
    for index, (text, seed) in enumerate(zip(texts, (10, 20))):
        alone = _run(pipe, seed=seed, **text)
        assert torch.allclose(together[index], alone[0], atol=1e-5)


def test_the_rope_at_integer_positions_is_the_stock_grid():
    pipe = _pipe()
    rope = pipe.transformer.rope
    grid = torch.stack(torch.meshgrid(torch.arange(2.0), torch.arange(3.0), torch.arange(5.0), indexing="ij"),
                       dim=-1).reshape(-1, 3)
    stock = rope(torch.zeros(1, 9, 2, 3, 5))
    ours = HunyuanVideo15FrescoRunner.positions_at(rope, grid)
    assert all(torch.equal(a, b) for a, b in zip(ours, stock))


@pytest.mark.parametrize("preset", ["hunyuan-video15-3x", "hunyuan-video15-5x"])
def test_its_presets_run_their_plan_with_the_call_s_steps_superseded_once(preset):
    pipe = _pipe()
    apply_fresco(pipe, preset)
    with pytest.warns(UserWarning, match="num_inference_steps=6 is not used"):
        out = _run(pipe)
    run = last_fresco_run(pipe)
    assert len(run.tokens_per_step) == sum(FrescoConfig.preset(preset).stage_steps) and torch.isfinite(out).all()
