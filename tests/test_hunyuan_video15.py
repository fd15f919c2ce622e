"""HunyuanVideo-1.5 specifics beyond the adapter contract: guidance is the pipeline's guider, asked at every step as
stock asks it, and the rotary embedding at arbitrary positions is stock's at integer ones."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance

from fresco_plugin import FrescoConfig, apply_fresco, last_fresco_run
from fresco_plugin.integrations.diffusers_hunyuan_video15 import HunyuanVideo15FrescoRunner
from fresco_plugin.schedule import plan_stages, plan_token_counts
from fresco_plugin.tools.tiny import tiny_hunyuan_video15_i2v_pipeline, tiny_hunyuan_video15_pipeline

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


# ------------------------------------------------------------------------------------------------ image to video

_PICTURE = PIL.Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 80, 3), dtype=np.uint8))


def _i2v_pipe(**options):
    pipe = tiny_hunyuan_video15_i2v_pipeline(**options)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _i2v_run(pipe, seed=0, **kwargs):
    return pipe(image=_PICTURE, **{**_guided(), **kwargs}, num_frames=5, num_inference_steps=6, output_type="latent",
                generator=torch.Generator().manual_seed(seed)).frames


def _forwards(pipe) -> tuple[list[dict], list]:
    seen = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append({k: kwargs.get(k) for k in ("hidden_states", "timestep",
                                                                              "timestep_r")}), with_kwargs=True)
    return seen, [handle]


def _picture_latent(pipe) -> torch.Tensor:
    """Stock's conditioning latent of the picture, (C, rows, cols) on the first frame."""
    image = pipe.video_processor.resize(_PICTURE, height=48, width=80, resize_mode="crop")
    with torch.no_grad():
        latent, mask = pipe.prepare_cond_latents_and_mask(torch.zeros(1, 4, 2, 12, 20), image, 1, 48, 80,
                                                          torch.float32, torch.device("cpu"))
    assert mask[:, :, 0].eq(1).all() and mask[:, :, 1:].eq(0).all()
    return latent[0, :, 0]


def test_image_to_video_tokens_carry_the_picture_at_their_own_coordinates():
    """The sketch sees the picture's latent pooled 2x2 (and the mask) on the first frame; after the promotion round
    every token still carries, on the first frame, the picture's latent at its own level and nothing elsewhere."""
    pipe = _i2v_pipe()
    apply_fresco(pipe, CONFIG)
    seen, handles = _forwards(pipe)
    out = _i2v_run(pipe)
    for handle in handles:
        handle.remove()
    picture = _picture_latent(pipe)
    channels = picture.shape[0]
    sketch = seen[0]["hidden_states"]  # (2 branches' batch, 2C + 1, frames, 6, 10): the uniform half-resolution stage
    pooled = torch.nn.functional.avg_pool2d(picture, 2)
    assert torch.allclose(sketch[:, channels:2 * channels, 0], pooled.expand_as(sketch[:, channels:2 * channels, 0]),
                          atol=1e-6)
    assert sketch[:, 2 * channels, 0].eq(1).all() and sketch[:, channels:, 1:].eq(0).all()
    allowed = torch.cat([picture.flatten(1).T, pooled.flatten(1).T])  # every level's latent pixels, (n, C)
    mixed = [f["hidden_states"] for f in seen if f["hidden_states"].shape[2:-1] == (1, 1)]
    assert mixed, "the round should leave a stage of mixed coarse and fine tokens (a strip)"
    for hidden in mixed:
        tokens = hidden[0, channels:, 0, 0].T  # (N, C + 1)
        first_frame = tokens[:, -1] == 1
        assert bool((tokens[:, -1] == 0).logical_or(first_frame).all())
        nearest = (tokens[first_frame, :-1, None] - allowed.T[None]).abs().amax(dim=1).amin(dim=1)
        assert nearest.max() < 1e-5
        assert tokens[~first_frame, :-1].eq(0).all() and 0 < int(first_frame.sum()) < tokens.shape[0]
    assert torch.isfinite(out).all()


def test_a_mean_flow_transformer_gets_the_time_each_step_lands_on():
    """The step-distilled checkpoint's transformer takes (t, r); stock gives r = the next timestep. Under Fresco r
    is where the step's Euler update lands: the next step's time inside a stage, the sketch's own end before the
    restart, 0 after the last step."""
    pipe = _i2v_pipe(use_meanflow=True, guidance_scale=1.0)
    seen, handles = _forwards(pipe)
    _i2v_run(pipe)
    stock = [float(f["timestep"][0]) for f in seen]
    seen.clear()
    apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(3, 3), promotion_rounds=0,
                                    restart_shift_scale=2.0))
    _i2v_run(pipe)
    for handle in handles:
        handle.remove()
    t = [float(f["timestep"][0]) for f in seen]
    r = [float(f["timestep_r"][0]) for f in seen]
    assert len(t) == 6 and t[:3] == stock[:3]  # the sketch runs stock's first three steps
    assert r[:2] == t[1:3] and r[3:5] == t[4:6] and r[5] == 0.0
    assert r[2] == stock[3] < t[3]  # the sketch lands where stock's third step does; the restart begins higher


def test_image_to_video_without_a_picture_is_refused_by_stock_s_own_check():
    pipe = _i2v_pipe()
    apply_fresco(pipe, CONFIG)
    with pytest.raises(ValueError, match="image"):
        pipe(image=None, **_guided(), num_frames=5, num_inference_steps=6, output_type="latent")


def test_image_to_video_images_sampled_one_by_one_read_their_own_rows():
    """A promotion threshold samples each image of a batch on its own; each still reads its own appended rows."""
    pipe = _i2v_pipe(guidance_scale=1.0)
    apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(3, 3), promotion_rounds=1,
                                    promotion_threshold=0.05))
    texts = [_text(1, seed) for seed in (1, 2)]
    batch = {k: torch.cat([t[k] for t in texts]) for k in texts[0]}
    together = pipe(image=_PICTURE, **batch, num_frames=5, num_inference_steps=6, output_type="latent",
                    generator=[torch.Generator().manual_seed(s) for s in (10, 20)]).frames
    for index, (text, seed) in enumerate(zip(texts, (10, 20))):
        alone = pipe(image=_PICTURE, **text, num_frames=5, num_inference_steps=6, output_type="latent",
                     generator=torch.Generator().manual_seed(seed)).frames
        assert torch.allclose(together[index], alone[0], atol=1e-5)
