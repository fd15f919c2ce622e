"""The shipped scenes model and its distilled students, ``fresco demo`` and ``fresco bench --quick`` (sanity only: no
quality thresholds)."""

import json

import pytest
import torch
from PIL import Image

from fresco_plugin.tools.bench import DISTILLED, REGIMES, benchmark_methods, distilled_methods, run_benchmark
from fresco_plugin.tools.cli import main
from fresco_plugin.tools.scenes import parse_prompt
from fresco_plugin.tools.shipped_model import (
    SCHNELL_STEPS,
    SIZE,
    TEXT_TOKENS,
    VARIANTS,
    load_scenes_pipeline,
    prompt_set,
    sketch_position_units,
)


def test_the_shipped_model_loads_with_the_stock_from_pretrained():
    from diffusers import FluxPipeline

    pipe = load_scenes_pipeline(progress=False)
    assert type(pipe) is FluxPipeline and pipe.vae_scale_factor == 4
    assert pipe.tokenizer_2.model_max_length == TEXT_TOKENS
    params = sum(p.numel() for p in pipe.transformer.parameters())
    assert 1e6 < params < 1e7  # "a few million"


def test_a_model_trained_with_its_sketch_on_the_final_grid_is_sampled_there(monkeypatch, tmp_path):
    shipped = json.loads((VARIANTS["base"] / "training_report.json").read_text())["arguments"]
    assert sketch_position_units("base") == shipped.get("sketch_positions", "stage")  # older reports: the stock grid
    for trained, units in (("final", "final"), ("stage", "stage"), (None, "stage")):
        folder = tmp_path / str(trained)
        folder.mkdir()
        arguments = {} if trained is None else {"sketch_positions": trained}
        (folder / "training_report.json").write_text(json.dumps({"arguments": arguments}))
        monkeypatch.setitem(VARIANTS, "dev", folder)
        assert sketch_position_units("dev") == units


# both regimes take 2 min on 2 cores (guided runs two forwards a step): the default run keeps the unguided one
@pytest.mark.parametrize("regimes", [["unguided"], pytest.param(list(REGIMES), marks=pytest.mark.slow)])
def test_quick_bench_runs_every_method_and_repeats_the_baseline_exactly(tmp_path, capsys, regimes):
    assert main(["bench", "--quick", "--resamples", "50", "--out", str(tmp_path),
                 "--regime", *regimes]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert list(report["regimes"]) == regimes
    steps = report["equal_flops_steps"]
    assert steps["10x"] < steps["5x"] < steps["3x"] < 50
    for block in report["regimes"].values():
        names = [row["method"] for row in block["methods"]]
        assert names == [m.name for m in benchmark_methods()] + ["baseline (timed again)"]
        again = block["methods"][-1]
        assert again["identical_to_baseline"] and again["psnr"] is None  # null: identical pictures
        by_name = {row["method"]: row for row in block["methods"]}
        assert by_name["steps@10x"]["steps"] == steps["10x"]
        fresco = by_name["fresco@10x"]
        assert fresco["versus_fewer_steps"]["method"] == "steps@10x"
        low, high = fresco["kid"]["ci"]
        assert low <= high and fresco["flops_ratio"] > 8  # the 10x plan, counted
        low, high = fresco["patch_swd"]["ci"]  # texture: centred prompt resamples around the figure
        assert low <= fresco["patch_swd"]["value"] <= high
        assert fresco["versus_fewer_steps"]["patch_swd"]["value"] == pytest.approx(
            fresco["patch_swd"]["value"] - by_name["steps@10x"]["patch_swd"]["value"])
        # the FLOPs peers match: within one stock step of the Fresco plan
        assert abs(by_name["steps@10x"]["flops_ratio"] / fresco["flops_ratio"] - 1) < 0.25
    assert len(report["prompts"]) == 3 and sum(p["held_out"] for p in report["prompts"]) == 1
    for prompt in report["prompts"]:
        parse_prompt(prompt["prompt"])
    assert Image.open(tmp_path / "bench.png").size[0] > 1000
    out = capsys.readouterr().out
    tables = [line.split(" (")[0] for line in out.splitlines() if "(true_cfg_scale" in line]
    assert "| fresco@10x |" in out and tables == regimes


def test_demo_writes_its_grid(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--prompts", "1", "--presets", "flux-dev-10x", "--repeats", "1", "--out", str(out)]) == 0
    width, height = Image.open(out).size
    assert width == 3 * 2 * SIZE and height > 2 * SIZE  # stock, Fresco 10x, fewer steps at its FLOPs
    printed = capsys.readouterr().out
    assert "| Fresco 10x |" in printed and "(FLOPs of Fresco 10x)" in printed and str(out) in printed


def test_the_distilled_students_load_and_take_their_own_inputs():
    """The dev-like student is guidance-distilled (``guidance_embeds``: the scale is an input, one forward a step)
    and the schnell-like one is step-distilled on FLUX.1-schnell's unshifted schedule; both keep the teacher's text
    encoders and VAE."""
    teacher = load_scenes_pipeline(progress=False)
    dev, schnell = load_scenes_pipeline("dev", progress=False), load_scenes_pipeline("schnell", progress=False)
    assert dev.transformer.config.guidance_embeds and not schnell.transformer.config.guidance_embeds
    assert not schnell.scheduler.config.use_dynamic_shifting and schnell.scheduler.config.shift == 1.0
    for student in (dev, schnell):
        for name in ("text_encoder", "text_encoder_2", "vae"):
            ours, theirs = getattr(student, name).state_dict(), getattr(teacher, name).state_dict()
            assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    call = dict(prompt="a red circle left of a blue square on a white background", height=SIZE, width=SIZE,
                max_sequence_length=TEXT_TOKENS, num_inference_steps=4, output_type="latent")
    pictures = {scale: dev(**call, guidance_scale=scale, generator=torch.Generator().manual_seed(0)).images
                for scale in (1.0, 5.0)}
    # a trained guidance embedder moves the picture (an untrained, zeroed one would leave it unchanged)
    assert (pictures[1.0] - pictures[5.0]).abs().mean() > 0.05
    fast = schnell(**{**call, "num_inference_steps": SCHNELL_STEPS}, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(fast.images).all()


def test_unknown_or_missing_variants_say_what_to_do(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="variant='pro' .* base, dev, schnell"):
        load_scenes_pipeline("pro")
    monkeypatch.setitem(VARIANTS, "dev", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="distill_scenes_model.py dev"):
        load_scenes_pipeline("dev")


def test_quick_distilled_bench_runs_the_students_and_their_stack(tmp_path, capsys):
    assert main(["bench", "--distilled", "--quick", "--only", "fresco@10x", "fresco@22x", "fresco@22x+fbc+int8",
                 "--resamples", "50", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert list(report["regimes"]) == [DISTILLED]
    rows = {row["method"]: row for row in report["regimes"][DISTILLED]["methods"]}
    assert list(rows) == ["baseline", "steps@10x", "fresco@10x", "steps@22x", "fresco@22x", "fresco@22x+fbc+int8",
                          "baseline (timed again)"]
    assert rows["baseline"]["model"] == "dev" and rows["fresco@22x"]["model"] == "schnell"
    assert rows["baseline (timed again)"]["identical_to_baseline"]
    assert rows["fresco@22x"]["flops_ratio"] > 15 and rows["fresco@22x"]["versus_fewer_steps"]["method"] == "steps@22x"
    assert rows["steps@22x"]["steps"] == report["equal_flops_steps"]["22x"] < 4
    assert "distilled (the students; dev-like guidance_scale 3)" in capsys.readouterr().out


def test_the_distilled_regime_is_benchmarked_apart(tmp_path, capsys):
    assert main(["bench", "--distilled", "--regime", "guided", "--quick", "--out", str(tmp_path)]) == 2
    assert "--regime chooses among the teacher's regimes; --distilled" in capsys.readouterr().err
    with pytest.raises(ValueError, match="separate benchmarks"):
        run_benchmark(prompt_set(2, 0), distilled_methods(), regimes=["guided"])
    with pytest.raises(ValueError, match="separate benchmarks"):
        run_benchmark(prompt_set(2, 0), benchmark_methods(), regimes=[DISTILLED])


def test_a_plan_paired_against_another_reports_the_difference():
    from fresco_plugin.config import PRESETS
    from fresco_plugin.tools.bench import Method

    ten = PRESETS["flux-dev-10x"]
    # a short baseline: the pairing is under test, not the 50-step reference
    methods = [Method("baseline", "baseline", steps=6), Method("steps@10x", "fewer steps", budget="10x"),
               Method("plan", "Fresco", config=ten, budget="10x"),
               Method("same plan", "Fresco", config=ten, budget="10x", against="plan"),
               Method("more steps", "fewer steps", steps=8, against="steps@10x")]
    report = run_benchmark(prompt_set(3, 0), methods, regimes=["unguided"], resamples=20, progress=False)
    rows = {row["method"]: row for row in report["regimes"]["unguided"]["methods"]}
    assert rows["plan"]["versus_other"] is None
    same = rows["same plan"]["versus_other"]
    assert same["method"] == "plan" and same["kid"]["value"] == 0 and same["adherence"]["value"] == 0
    assert same["patch_swd"] == dict(value=0.0, ci=[0.0, 0.0])  # the same pictures, read at the same places
    other = rows["more steps"]["versus_other"]
    assert other["method"] == "steps@10x" and other["kid"]["value"] != 0
    with pytest.raises(ValueError, match="against='plans' names no other method of this run"):
        run_benchmark(prompt_set(3, 0), [*methods[:3], Method("x", "Fresco", config=ten, budget="10x",
                                                              against="plans")], regimes=["unguided"])
