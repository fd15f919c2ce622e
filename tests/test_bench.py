"""The shipped scenes model, ``fresco demo`` and ``fresco bench --quick`` (sanity only: no quality thresholds)."""

import json

from PIL import Image

from fresco_plugin.cli import main
from fresco_plugin.integrations.bench import benchmark_methods
from fresco_plugin.integrations.shipped_model import SIZE, TEXT_TOKENS, load_scenes_pipeline
from fresco_plugin.scenes import parse_prompt


def test_the_shipped_model_loads_with_the_stock_from_pretrained():
    from diffusers import FluxPipeline

    pipe = load_scenes_pipeline(progress=False)
    assert type(pipe) is FluxPipeline and pipe.vae_scale_factor == 4
    assert pipe.tokenizer_2.model_max_length == TEXT_TOKENS
    params = sum(p.numel() for p in pipe.transformer.parameters())
    assert 1e6 < params < 1e7  # "a few million"


def test_quick_bench_runs_every_method_and_repeats_the_baseline_exactly(tmp_path, capsys):
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    names = [row["method"] for row in report["methods"]]
    assert names == [m.name for m in benchmark_methods()] + ["baseline (timed again)"]
    again = report["methods"][-1]
    assert again["identical_to_baseline"] and again["psnr"] is None  # null: identical pictures
    assert all(row["flops_ratio"] > 0 and row["wall_ratio"] > 0 for row in report["methods"])
    assert len(report["prompts"]) == 3 and sum(p["held_out"] for p in report["prompts"]) == 1
    for prompt in report["prompts"]:
        parse_prompt(prompt["prompt"])
    assert Image.open(tmp_path / "bench.png").size[0] > 1000
    assert "| fresco@10x |" in capsys.readouterr().out


def test_demo_writes_its_grid(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--prompts", "2", "--presets", "flux-dev-10x", "--out", str(out)]) == 0
    width, height = Image.open(out).size
    assert width == 2 * 2 * SIZE and height > 2 * 2 * SIZE
    assert "| flux-dev-10x |" in capsys.readouterr().out
