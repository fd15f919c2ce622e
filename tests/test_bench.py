"""The shipped scenes model, ``fresco demo`` and ``fresco bench --quick`` (sanity only: no quality thresholds)."""

import json

from PIL import Image

from fresco_plugin.tools.bench import REGIMES, benchmark_methods
from fresco_plugin.tools.cli import main
from fresco_plugin.tools.scenes import parse_prompt
from fresco_plugin.tools.shipped_model import SIZE, TEXT_TOKENS, load_scenes_pipeline


def test_the_shipped_model_loads_with_the_stock_from_pretrained():
    from diffusers import FluxPipeline

    pipe = load_scenes_pipeline(progress=False)
    assert type(pipe) is FluxPipeline and pipe.vae_scale_factor == 4
    assert pipe.tokenizer_2.model_max_length == TEXT_TOKENS
    params = sum(p.numel() for p in pipe.transformer.parameters())
    assert 1e6 < params < 1e7  # "a few million"


def test_quick_bench_runs_every_method_in_both_regimes_and_repeats_the_baseline_exactly(tmp_path, capsys):
    assert main(["bench", "--quick", "--resamples", "50", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert list(report["regimes"]) == list(REGIMES)
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
        # the FLOPs peers match: within one stock step of the Fresco plan
        assert abs(by_name["steps@10x"]["flops_ratio"] / fresco["flops_ratio"] - 1) < 0.25
    assert len(report["prompts"]) == 3 and sum(p["held_out"] for p in report["prompts"]) == 1
    for prompt in report["prompts"]:
        parse_prompt(prompt["prompt"])
    assert Image.open(tmp_path / "bench.png").size[0] > 1000
    out = capsys.readouterr().out
    assert "| fresco@10x |" in out and "guided (true_cfg_scale" in out


def test_demo_writes_its_grid(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--prompts", "1", "--presets", "flux-dev-10x", "--repeats", "1", "--out", str(out)]) == 0
    width, height = Image.open(out).size
    assert width == 3 * 2 * SIZE and height > 2 * SIZE  # stock, Fresco 10x, fewer steps at its FLOPs
    printed = capsys.readouterr().out
    assert "| Fresco 10x |" in printed and "(FLOPs of Fresco 10x)" in printed and str(out) in printed
