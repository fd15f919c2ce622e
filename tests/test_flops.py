"""Compute accounting on the real architectures (meta device, torch's FLOP counter)."""

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import fresco_plugin
from fresco_plugin import FrescoConfig
from fresco_plugin.config import PRESET_BASELINES, PRESETS
from fresco_plugin.flops import FORWARD_FLOPS_FILE, MODELS, count_plan_flops, forward_flops
from fresco_plugin.tools.cli import main
from fresco_plugin.tools.flops_trace import TransformerFlops, derive_forward_flops, flux_closed_form_flops
from fresco_plugin.tools.tiny import tiny_flux_pipeline


@pytest.mark.parametrize("model", ["flux-dev", "flux-schnell"])
@pytest.mark.parametrize("tokens", [1024, 1792, 4096])
def test_counter_matches_the_closed_form_flux_count(model, tokens):
    counter = TransformerFlops.for_model(model)
    closed = flux_closed_form_flops(MODELS[model].config(), tokens, 512)
    assert abs(counter(tokens) / closed - 1) < 0.01
    assert counter(tokens) == closed  # in fact exact: every matrix product is accounted for


@pytest.mark.parametrize("model,tokens", [("flux-dev", 4096), ("hunyuan-video", 3000)])
def test_the_quadratic_fit_predicts_a_direct_trace(model, tokens):
    counter = TransformerFlops.for_model(model)
    assert counter(tokens) == counter.trace(tokens)


@pytest.mark.parametrize("model", ["flux-dev", "flux-schnell", "flux-kontext", "flux2-dev", "qwen-image", "z-image",
                                   "hunyuan-video"])
def test_the_stored_forward_costs_are_the_traced_architecture(model):
    """The core prices plans from stored coefficients; they are what tracing the architecture derives today, and
    they give a direct trace at a size and text length no fit used."""
    stored = json.loads((Path(fresco_plugin.__file__).parent / FORWARD_FLOPS_FILE).read_text())[model]
    assert stored == derive_forward_flops(model)
    assert forward_flops(model, 3000, 200) == TransformerFlops(MODELS[model].family, MODELS[model].config(),
                                                                   200).trace(3000)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["wan2.1-t2v-14b", "wan2.2-t2v-a14b", "hunyuan-video15", "flux2-klein-4b",
                                   "flux2-klein-9b"])
def test_the_stored_forward_costs_hold_for_the_other_models(model):
    stored = json.loads((Path(fresco_plugin.__file__).parent / FORWARD_FLOPS_FILE).read_text())[model]
    assert stored == derive_forward_flops(model)


@pytest.mark.parametrize("model,width,blocks", [("flux2-klein-4b", 3072, 5 + 20), ("flux2-klein-9b", 4096, 8 + 24)])
def test_klein_runs_true_cfg_unless_the_scale_turns_it_off(model, width, blocks):
    """Klein's pipeline guides with an empty prompt at its default scale 4 (two forwards a step); a step-distilled
    checkpoint, priced with guidance_scale 1, runs one. Its joint attention: 4 d per pair of tokens in every block."""
    assert count_plan_flops("flux-dev-5x", model).forwards_per_step == 2
    assert count_plan_flops("flux-dev-5x", model, guidance_scale=1.0).forwards_per_step == 1
    stored = json.loads((Path(fresco_plugin.__file__).parent / FORWARD_FLOPS_FILE).read_text())[model]
    assert stored[2][0] == 4 * width * blocks


def test_hunyuan_video15_is_priced_with_the_streams_it_joins():
    """Traced part by part (its forward packs the valid text tokens by value, which the meta device cannot run): the
    stored polynomial gives a direct trace at a size and Qwen length no fit used, and its per-image-token cost is
    the 54 joint blocks over the image, the 1000 Qwen tokens and the fixed 256 glyph + 729 image-stream tokens, by
    hand: 24 d^2 for the projections and MLP of a token, 8 d per text token for its attention, plus embed and head."""
    counter = TransformerFlops(MODELS["hunyuan-video15"].family, MODELS["hunyuan-video15"].config(), 200)
    assert forward_flops("hunyuan-video15", 3000, 200) == counter.trace(3000)
    d, fixed_text = 16 * 128, 256 + 729
    stored = json.loads((Path(fresco_plugin.__file__).parent / FORWARD_FLOPS_FILE).read_text())["hunyuan-video15"]
    assert stored[1][0] == 54 * (24 * d * d + 8 * fixed_text * d) + 2 * 65 * d + 2 * d * 32
    assert stored[2][0] == 54 * 4 * d and stored[1][1] == 2 * stored[2][0]  # joint attention: (image + text)^2


@pytest.mark.slow
def test_the_quadratic_fit_holds_for_wan():
    counter = TransformerFlops.for_model("wan2.1-t2v-14b")
    assert counter(700) == counter.trace(700)


def test_flux_dev_baseline_reproduces_the_published_figure():
    """Published tables give 3719.5 TFLOPs for FLUX.1-dev at 1024x1024: torch's counter convention (2 FLOPs per
    multiply-add), 4096 image + 512 text tokens, one forward per step (guidance is embedded), 50 steps."""
    report = count_plan_flops("flux-dev-10x", "flux-dev")
    assert report.baseline_flops / 1e12 == pytest.approx(3719.5, rel=1e-3)


def test_mixed_coarse_and_fine_tokens_cost_what_their_count_costs():
    transformer = tiny_flux_pipeline().transformer
    n = 96

    def flops(img_ids):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            transformer(hidden_states=torch.randn(1, n, 16), encoder_hidden_states=torch.randn(1, 8, 32),
                        pooled_projections=torch.randn(1, 32), timestep=torch.tensor([0.5]),
                        guidance=torch.tensor([3.5]), img_ids=img_ids, txt_ids=torch.zeros(8, 3), return_dict=False)
        return counter.get_total_flops()

    grid = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(12.0), indexing="ij"), -1).reshape(-1, 2)
    uniform = torch.cat([torch.zeros(n, 1), grid], 1)
    mixed = uniform.clone()
    mixed[-20:, 1:] = mixed[-20:, 1:] / 2 + torch.tensor([0.25, -0.25])  # fractional, finer-token positions
    assert flops(uniform) == flops(mixed) > 0


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_reach_their_named_speedup(preset):
    model, baseline_steps = PRESET_BASELINES[preset]
    target = float(preset.rsplit("-", 1)[1].removesuffix("x"))
    report = count_plan_flops(preset, model, baseline_steps=baseline_steps)
    assert report.speedup >= target
    assert report.baseline_steps == baseline_steps
    assert sum(s.steps for s in report.stages) == sum(FrescoConfig.preset(preset).stage_steps)
    # schnell-22x follows the paper's NFE; the distilled checkpoints' keep their own steps
    if preset not in ("flux-schnell-22x", *DISTILLED_PRESETS):
        # the measured rule: one more full-resolution step would miss the target
        assert FrescoConfig.for_speedup(target, model=model, steps_budget=baseline_steps) == PRESETS[preset]


# preset: the step count of the checkpoint it runs
DISTILLED_PRESETS = {"flux-schnell-19x": 4, "z-image-turbo-1.5x": 8, "qwen-image-lightning-1.5x": 8,
                     "qwen-image-lightning-4step-1.5x": 4, "flux2-klein-4b-distilled-1.5x": 4,
                     "flux2-klein-9b-distilled-1.5x": 4, "wan2.2-lightning-1.75x": 4,
                     "hunyuan-video15-i2v-distilled-1.75x": 8}


@pytest.mark.parametrize("preset", sorted(DISTILLED_PRESETS))
def test_distilled_presets_keep_the_checkpoints_steps_and_two_full_resolution_steps(preset):
    """A step-distilled checkpoint's preset runs its own step count, half of it sketched, one forward a step (its
    guidance is off or distilled), and at least the two full-resolution steps one full step could not replace on the
    shipped students."""
    config, steps = PRESETS[preset], DISTILLED_PRESETS[preset]
    model, baseline_steps = PRESET_BASELINES[preset]
    assert config.stage_steps == (steps // 2, steps - steps // 2) and config.stage_steps[-1] >= 2
    report = count_plan_flops(preset, model, baseline_steps=baseline_steps)
    assert report.forwards_per_step == 1
    if model != "flux-schnell":  # the others are measured against the checkpoint itself at its own steps
        assert report.baseline_model == model and baseline_steps == steps


@pytest.mark.parametrize("checkpoint", ["z-image-turbo", "qwen-image-lightning", "flux2-klein-4b-distilled",
                                        "flux2-klein-9b-distilled", "wan2.2-lightning",
                                        "hunyuan-video15-i2v-distilled"])
def test_a_distilled_checkpoint_is_priced_on_its_architecture_with_its_own_guidance(checkpoint):
    spec = MODELS[checkpoint]
    assert spec.config() == MODELS[spec.architecture].config()
    assert forward_flops(checkpoint, 3000, 200) == forward_flops(spec.architecture, 3000, 200)
    assert count_plan_flops("flux-dev-5x", checkpoint).forwards_per_step == 1
    # a caller who turns guidance on pays for it where the pipeline runs it (Klein's distilled pipeline never does)
    guided = count_plan_flops("flux-dev-5x", checkpoint, guidance_scale=4.0).forwards_per_step
    assert guided == (1 if checkpoint.startswith("flux2-klein") else 2)


def test_flops_measures_a_preset_against_its_own_model_and_step_count(capsys):
    assert main(["flops", "--preset", "wan2.2-5x", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["baseline_model"] == "wan2.2-t2v-a14b" and report["baseline_steps"] == 40
    command = ["flops", "--preset", "wan2.2-5x", "--model", "wan2.1-t2v-14b", "--baseline-steps", "50", "--json"]
    assert main(command) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["baseline_model"] == "wan2.1-t2v-14b" and report["baseline_steps"] == 50


def test_a_distilled_preset_is_priced_against_its_checkpoint_at_its_steps(capsys):
    assert main(["flops", "--preset", "z-image-turbo-1.5x", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["baseline_model"] == "z-image-turbo" and report["baseline_steps"] == 8
    assert report["forwards_per_step"] == 1 and report["speedup"] >= 1.5
    assert main(["flops", "--preset", "z-image-turbo-1.5x", "--guidance-scale", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["forwards_per_step"] == 2


def test_report_adds_up_and_schnell_is_compared_with_dev():
    report = count_plan_flops("flux-schnell-22x", "flux-schnell")
    assert report.baseline_model == "flux-dev"
    counter = TransformerFlops.for_model("flux-schnell")
    assert report.total_flops == sum(counter(n) for s in report.stages for n in s.tokens_per_step)
    assert report.stages[0].tokens_per_step == [1024, 1024, 1792]
    assert report.stages[1].tokens_per_step == [4096]


def test_kontext_prices_the_reference_tokens_in_every_forward_on_both_sides():
    edit, generate = count_plan_flops("flux-dev-5x", "flux-kontext"), count_plan_flops("flux-dev-5x", "flux-dev")
    reference = 4096  # a 1024x1024 reference, whole at every step
    assert edit.total_flops == sum(forward_flops("flux-dev", n + reference) for s in edit.stages
                                   for n in s.tokens_per_step)
    assert edit.baseline_flops == 50 * forward_flops("flux-dev", 4096 + reference)
    assert 1 < edit.speedup < generate.speedup  # the reference is a cost Fresco does not shrink


def test_true_cfg_doubles_both_sides():
    plain = count_plan_flops("flux-dev-10x")
    doubled = count_plan_flops("flux-dev-10x", true_cfg_scale=4.0)
    assert doubled.total_flops == 2 * plain.total_flops and doubled.speedup == pytest.approx(plain.speedup)


def test_cli_json_and_errors(capsys, tmp_path):
    assert main(["flops", "--model", "flux-dev", "--height", "1024", "--width", "1024", "--preset", "flux-dev-10x",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["speedup"] >= 10 and data["stages"][0]["tokens_per_step"][0] == 1024
    config = tmp_path / "plan.json"
    config.write_text(json.dumps({"stage_scales": [0.5, 1.0], "stage_steps": [4, 4], "promotion_rounds": 0}))
    assert main(["flops", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stages"][0]["tokens_per_step"] == [1024] * 4
    assert main(["flops", "--height", "1000"]) == 2
    assert "multiples of 16" in capsys.readouterr().err
    threshold = tmp_path / "threshold.json"
    threshold.write_text(json.dumps({"promotion_threshold": 0.1, "stage_steps": [4, 4]}))
    assert main(["flops", "--config", str(threshold)]) == 2
    assert "promotion_threshold" in capsys.readouterr().err
    assert main(["flops", "--config", str(tmp_path / "missing.json")]) == 2  # a typo'd path or inline JSON
    assert "--config" in (err := capsys.readouterr().err) and "No such file" in err
    threshold.write_text("[1, 2]")
    assert main(["flops", "--config", str(threshold)]) == 2
    assert "JSON object of FrescoConfig fields" in capsys.readouterr().err
    threshold.write_text("{stage_steps")
    assert main(["flops", "--config", str(threshold)]) == 2
    assert "is not JSON" in capsys.readouterr().err


def _tiny_recorded_run(cache=None):
    from conftest import text_inputs

    from fresco_plugin import apply_fresco
    from fresco_plugin.tools.flops_trace import ForwardRecorder

    pipe = tiny_flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0)))
    if cache is not None:
        pipe.transformer.enable_cache(cache)
    with ForwardRecorder(pipe.transformer) as recorder:
        pipe(**text_inputs(batch=2), height=64, width=64, num_inference_steps=10, output_type="latent",
             generator=[torch.Generator().manual_seed(s) for s in range(2)])
    return pipe, recorder


def test_a_recorded_run_is_priced_forward_by_forward():
    pipe, recorder = _tiny_recorded_run()
    tokens = list(pipe._fresco_runner.last_run.tokens_per_step)
    # once the two images' layouts differ they run one by one (FLUX shares img_ids across a batch)
    assert sum(r.batch * r.image_tokens for r in recorder.records) == 2 * sum(tokens)
    assert {r.batch for r in recorder.records} == {1, 2}
    config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
    counter = TransformerFlops("flux", config, recorder.records[0].text_tokens)
    assert recorder.flops() == sum(r.batch * counter(r.image_tokens) for r in recorder.records)
    # the per-block fits agree with a direct trace of one forward, module by module
    n = tokens[-1]
    with torch.no_grad(), FlopCounterMode(display=False) as direct:
        counter._transformer(**counter._inputs(n), return_dict=False)
    per_module = direct.get_flop_counts()
    for kind in ("transformer_blocks", "single_transformer_blocks"):
        assert counter.block(kind, n) == sum(per_module[f"FluxTransformer2DModel.{kind}.0"].values()) > 0


def test_a_wan_run_is_priced_by_its_patches_in_grids_and_in_mixed_strips():
    """Wan takes a latent grid (stock, uniform stages) or a one-row strip of tokens (mixed stages): either way the
    recorder counts patches, and a plan's recorded tokens are the ones its run reports."""
    from fresco_plugin import apply_fresco
    from fresco_plugin.tools.flops_trace import ForwardRecorder
    from fresco_plugin.tools.tiny import tiny_wan_pipeline

    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    call = dict(prompt_embeds=torch.randn(1, 6, 32, generator=g), negative_prompt_embeds=torch.randn(1, 6, 32,
                generator=g), height=48, width=80, num_frames=5, guidance_scale=1.0, output_type="latent")
    with ForwardRecorder(pipe.transformer) as stock:
        pipe(**call, num_inference_steps=3)
    assert [(r.batch, r.image_tokens, r.text_tokens) for r in stock.records] == [(1, 2 * 3 * 5, 6)] * 3
    apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(6, 4), promotion_rounds=2))
    with ForwardRecorder(pipe.transformer) as recorder:
        pipe(**call)
    tokens = list(pipe._fresco_runner.last_run.tokens_per_step)
    assert [r.image_tokens for r in recorder.records] == tokens and len(set(tokens)) > 2  # mixed steps included
    config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
    counter = TransformerFlops("wan", config, 6)
    assert recorder.flops() == sum(counter(n) for n in tokens) and recorder.to_dict()["family"] == "wan"


def test_blocks_a_cache_skips_are_not_counted():
    from diffusers.hooks import FirstBlockCacheConfig

    _, cached = _tiny_recorded_run(FirstBlockCacheConfig(threshold=1e9))  # skips every step it may
    skipped = [r for r in cached.records if r.blocks_run["single_transformer_blocks"] == 0]
    assert skipped and all(r.blocks_run["transformer_blocks"] == 1 for r in cached.records)
    config = {k: v for k, v in cached.transformer.config.items() if not k.startswith("_")}
    counter = TransformerFlops("flux", config, cached.records[0].text_tokens)
    full = sum(r.batch * counter(r.image_tokens) for r in cached.records)
    saved = sum(r.batch * counter.block("single_transformer_blocks", r.image_tokens) for r in skipped)
    assert cached.flops() == full - saved < full


def test_fresco_flops_prices_a_recorded_run(tmp_path, capsys):
    from diffusers.hooks import FirstBlockCacheConfig

    _, cached = _tiny_recorded_run(FirstBlockCacheConfig(threshold=1e9))
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cached.to_dict()))
    assert main(["flops", "--recorded", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"recorded run: {cached.flops() / 1e12:.4f} TFLOPs" in out and "the cache saved" in out
    skipped = sum(1 for r in cached.records if r.blocks_run["single_transformer_blocks"] == 0)
    assert f"{skipped} forward(s) skipped blocks" in out and skipped > 0


@pytest.mark.parametrize("target", [3, 5, 10])
def test_the_flux_dev_presets_are_points_of_for_speedup(target):
    assert FrescoConfig.for_speedup(target) == FrescoConfig.preset(f"flux-dev-{target}x")


def test_for_speedup_meets_any_target_with_the_most_steps_and_refuses_the_unreachable():
    for target in (2.5, 7, 16):
        config = FrescoConfig.for_speedup(target, height=1024, width=1024)
        assert count_plan_flops(config, "flux-dev").speedup >= target
        longer = FrescoConfig(**{**config.__dict__, "stage_steps": (config.stage_steps[0], config.stage_steps[1] + 1)})
        assert count_plan_flops(longer, "flux-dev").speedup < target  # one more full-resolution step would miss it
    with pytest.raises(ValueError, match=r"target=100x is out of reach .* at most 38.79x"):
        FrescoConfig.for_speedup(100)
    with pytest.raises(ValueError, match="target=-1"):
        FrescoConfig.for_speedup(-1)


def test_fresco_plan_prints_a_config_fresco_flops_takes(tmp_path, capsys):
    assert main(["plan", "--target", "8", "--json"]) == 0
    fields = json.loads(capsys.readouterr().out)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(fields))
    assert main(["flops", "--config", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["speedup"] >= 8
    assert main(["plan", "--target", "1000"]) == 2
