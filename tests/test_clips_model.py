"""The shipped video model, ``fresco bench --video``, ``fresco demo --video`` and the multi-process video job on it
(sanity only: no quality thresholds beyond the VAE's own round trip)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fresco_plugin import FrescoConfig, apply_fresco, remove_fresco
from fresco_plugin.tools.cli import main
from fresco_plugin.tools.patch_statistics import patch_projections, patch_swd_resamples
from fresco_plugin.tools.shipped_model import (
    CLIP_FRAMES,
    CLIP_GUIDANCE_SCALE,
    CLIP_SIZE,
    CLIP_TEXT_TOKENS,
    CLIPS_DIR,
    clip_prompt_set,
    load_clips_pipeline,
)
from fresco_plugin.tools.video_bench import (
    BUDGETS,
    VideoMethod,
    _Runner,
    full_resolution_step,
    moving_boundaries,
    region_flicker,
    run_video_benchmark,
    share_frame_detail,
    video_methods,
)
from fresco_plugin.tools.video_scenes import check_clip, render_clip

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "wan_multi_gpu.py"


@pytest.fixture(scope="module")
def pipe():
    return load_clips_pipeline(progress=False)


def _call(pipe, prompt, **kwargs):
    """A 10-step clip (Fresco's plan fixes its own steps: pass ``num_inference_steps=None`` to leave it out)."""
    args = dict(height=CLIP_SIZE, width=CLIP_SIZE, num_frames=CLIP_FRAMES, max_sequence_length=CLIP_TEXT_TOKENS,
                num_inference_steps=10, output_type="np", generator=torch.Generator().manual_seed(0))
    args = {k: v for k, v in {**args, **kwargs}.items() if v is not None}
    return pipe(prompt, **args).frames[0]


def test_the_video_model_loads_offline_with_the_stock_from_pretrained(monkeypatch):
    from diffusers import WanPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = WanPipeline.from_pretrained(CLIPS_DIR)
    assert loaded.vae_scale_factor_spatial == 4 and loaded.vae_scale_factor_temporal == 2
    size = sum(f.stat().st_size for f in CLIPS_DIR.rglob("*") if f.is_file())
    assert size < 40e6  # the cap on a shipped model
    params = sum(p.numel() for p in loaded.transformer.parameters())
    assert 1e6 < params < 1e7


def test_its_vae_round_trips_keep_what_the_checker_reads(pipe):
    """The VAE must keep colour, shape and motion (what the transformer is trained to produce), or no sampler can
    pass the checker; the training report records the same reading on other clips."""
    prompts = clip_prompt_set(16, 4, seed=11)
    truth = np.stack([render_clip(p.clip, CLIP_FRAMES, CLIP_SIZE) for p in prompts])
    videos = torch.from_numpy(truth).permute(0, 4, 1, 2, 3) * 2 - 1
    with torch.no_grad():
        decoded = pipe.vae.decode(pipe.vae.encode(videos).latent_dist.mean).sample
    frames = ((decoded.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).numpy()
    passed = [check_clip(f, p.prompt).passed for f, p in zip(frames, prompts)]
    assert sum(passed) >= 12, passed


def test_the_guidance_scale_shipped_is_the_reports_best_on_held_out_prompts():
    report = json.loads((CLIPS_DIR / "training_report.json").read_text())["adherence"]
    scales = {1.0: report["held_out/generated"]["whole"]}
    scales.update({float(k.removeprefix("held_out/generated_cfg")): v["whole"] for k, v in report.items()
                   if k.startswith("held_out/generated_cfg")})
    assert max(scales, key=scales.get) == CLIP_GUIDANCE_SCALE


def test_fresco_runs_on_it_guided_and_leaves_it_stock(pipe):
    prompt = "a blue square moving up on a checkered background"
    stock = _call(pipe, prompt, guidance_scale=CLIP_GUIDANCE_SCALE)
    apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(4, 6)))
    fresco = _call(pipe, prompt, guidance_scale=CLIP_GUIDANCE_SCALE, num_inference_steps=None)
    remove_fresco(pipe)
    assert fresco.shape == stock.shape == (CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, 3) and np.isfinite(fresco).all()
    assert not np.array_equal(fresco, stock)
    assert np.array_equal(_call(pipe, prompt, guidance_scale=CLIP_GUIDANCE_SCALE), stock)


def test_flicker_where_promotion_boundaries_move_reads_the_places_and_frames_they_touch():
    sketch = torch.ones(1, 5, 2, 2, dtype=torch.int8)
    mixed = sketch.clone()
    mixed[0, 3, 0, 1] = 0  # one place of latent frame 3 promoted at step 2, the others at step 4
    promoted_at = full_resolution_step([(0, sketch), (2, mixed), (4, torch.zeros_like(sketch))])
    assert promoted_at.shape == (5, 2, 2) and promoted_at[3, 0, 1] == 2 and (promoted_at[promoted_at != 2] == 4).all()
    region = moving_boundaries(promoted_at, frames=9, size=8)
    assert region.shape == (7, 8, 8)
    # latent frames 2, 3, 4 (clip frames 3-8) touch the boundary at place (0, 1): second differences centred on 2-7
    touched = np.zeros((7, 8, 8), dtype=bool)
    touched[1:7, :4, 4:] = True
    assert np.array_equal(region, touched)
    frames = np.zeros((9, 8, 8, 3))
    frames[5, :4, 4:] = 1.0  # a pixel flash inside the boundary place: 1, 2, 1 in the second difference
    assert region_flicker(frames, region) == pytest.approx(4 / 6)
    assert np.isnan(region_flicker(frames, np.zeros_like(region)))


def test_patch_swd_reads_every_method_at_the_same_places_with_centred_prompt_resamples():
    rng = np.random.default_rng(0)
    truth = [rng.uniform(size=(9, 16, 16, 3)) for _ in range(8)]
    flat = [np.full_like(t, t.mean()) for t in truth]  # still and flat: no flicker, none of the true texture
    other = [rng.uniform(size=t.shape) for t in truth]  # other draws of the same texture
    index = rng.integers(len(truth), size=(200, len(truth)))
    scored = patch_swd_resamples([patch_projections(clips) for clips in (truth, flat, other)],
                                 patch_projections(truth), index)
    (same, same_resampled), (blank, _), (drawn, _) = scored
    assert same == 0.0 and (same_resampled == 0.0).all()  # the same places of the same clips
    assert 0.0 < drawn < blank / 10
    for figure, resampled in scored:  # resampling repeats clips; the resamples are centred on the figure
        assert resampled.mean() == pytest.approx(figure, abs=1e-6)


def test_quick_video_bench_runs_every_method_and_repeats_the_baseline_exactly(tmp_path, capsys):
    assert main(["bench", "--video", "--quick", "--regime", "guided", "--resamples", "50", "--out",
                 str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench_video.json").read_text())
    steps = report["equal_flops_steps"]
    assert steps["10x"] < steps["5x"] < steps["3x"] < 50
    rows = report["regimes"]["guided"]["methods"]
    assert [r["method"] for r in rows] == [m.name for m in video_methods()] + ["baseline (timed again)"]
    assert rows[-1]["identical_to_baseline"] and report["regimes"]["guided"]["guidance_scale"] == CLIP_GUIDANCE_SCALE
    by_name = {r["method"]: r for r in rows}
    for budget in BUDGETS:
        fresco, peer = by_name[f"fresco@{budget}"], by_name[f"steps@{budget}"]
        assert fresco["versus_fewer_steps"]["method"] == f"steps@{budget}"
        assert abs(peer["flops_ratio"] / fresco["flops_ratio"] - 1) < 0.25  # FLOPs peers: within a stock step
        for figure in ("flicker", "patch_swd"):
            low, high = fresco[figure]["ci"]
            assert low <= fresco[figure]["value"] <= high
        assert fresco["versus_fewer_steps"]["patch_swd"]["value"] == pytest.approx(
            fresco["patch_swd"]["value"] - peer["patch_swd"]["value"])
        # the video presets have no promotion round: every token switches at the sketch's end, no boundary moves
        assert fresco["boundary_flicker"] == {"clips": 0, "share": 0.0} and peer["boundary_flicker"] is None
    strip = Image.open(tmp_path / "bench_video_frames.png")
    assert strip.size == (CLIP_FRAMES * CLIP_SIZE, 2 * 5 * CLIP_SIZE)  # 2 prompts x 5 methods, 9 frames each
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert any(line.startswith("| fresco@5x |") for line in printed)
    assert len({line.count("|") for line in printed}) == 1  # every row fills the header's columns


def test_a_plan_paired_against_a_method_the_run_lacks_is_refused_before_any_run():
    methods = [*video_methods(), VideoMethod("variant", config=FrescoConfig(), budget="5x", against="fresco@7x")]
    with pytest.raises(ValueError, match="'variant': against='fresco@7x' names no other method"):
        run_video_benchmark(clip_prompt_set(2, 0), pipe=object(), methods=methods)


def test_video_demo_writes_a_gif_and_a_frame_strip(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--video", "--prompts", "1", "--repeats", "1", "--out", str(out)]) == 0
    gif = Image.open(tmp_path / "demo.gif")
    assert gif.n_frames == CLIP_FRAMES and gif.size[0] == 5 * 2 * CLIP_SIZE  # stock, Fresco x3, fewer steps
    assert Image.open(out).size == (CLIP_FRAMES * 2 * CLIP_SIZE, 5 * 2 * CLIP_SIZE)
    printed = capsys.readouterr().out
    assert "| Fresco 5x |" in printed and "(FLOPs of Fresco 10x)" in printed


@pytest.mark.multiprocess
def test_two_processes_under_context_parallelism_give_the_single_process_clip(tmp_path):
    def launch(ranks):
        latents = tmp_path / f"{ranks}.pt"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
                   str(EXAMPLE), "--shipped", "--baseline-steps", "10", "--out", str(tmp_path / f"{ranks}.gif"),
                   "--latents", str(latents)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"stdout:\n{result.stdout[-1500:]}\nstderr:\n{result.stderr[-3000:]}"
        assert f"{ranks} ranks, image tokens per step" in result.stdout
        return torch.load(latents)

    parallel, single = launch(2), launch(1)
    assert parallel.shape == single.shape and torch.allclose(parallel, single, atol=1e-4)
    assert Image.open(tmp_path / "2.gif").n_frames == CLIP_FRAMES


def test_frame_shared_detail_noise_keeps_each_frames_means_and_reaches_the_stock_call_as_latents(pipe):
    noise = torch.randn(2, 4, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    shared = share_frame_detail(noise)
    pool = torch.nn.functional.avg_pool3d
    assert torch.allclose(pool(shared, (1, 2, 2)), pool(noise, (1, 2, 2)), atol=1e-6)  # what a sketch reads
    detail = shared - pool(shared, (1, 2, 2)).repeat_interleave(2, -2).repeat_interleave(2, -1)
    assert torch.allclose(detail, detail[:, :, :1].expand_as(detail), atol=1e-6)
    assert torch.allclose(shared[:, :, 0], noise[:, :, 0], atol=1e-6)  # the first frame's noise is its own
    with pytest.raises(ValueError, match="initial_noise='shared' is unknown"):
        VideoMethod("x", steps=2, initial_noise="shared")
    prompt = clip_prompt_set(1, 0)[0]
    runner = _Runner(pipe)
    latents = runner(VideoMethod("x", steps=2, initial_noise="frame-shared detail"), prompt, 1.0)[0]
    stock = runner(VideoMethod("stock", steps=2), prompt, 1.0)[0]
    start = pipe.prepare_latents(1, pipe.transformer.config.in_channels, CLIP_SIZE, CLIP_SIZE, CLIP_FRAMES,
                                 torch.float32, pipe.device, torch.Generator().manual_seed(prompt.seed))
    expected = pipe(prompt_embeds=runner.embed(prompt.prompt), height=CLIP_SIZE, width=CLIP_SIZE,
                    num_frames=CLIP_FRAMES, guidance_scale=1.0, num_inference_steps=2, output_type="latent",
                    latents=share_frame_detail(start)).frames
    assert torch.equal(latents, expected) and not torch.equal(latents, stock)
