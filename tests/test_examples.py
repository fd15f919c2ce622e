"""The offline modes of the examples run as documented in the README."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("command,expected", [
    ([sys.executable, str(EXAMPLES / "flux_dev.py"), "--tiny"],
     "after remove_fresco the pipeline is bit-identical to stock: True"),
    ([sys.executable, str(EXAMPLES / "hunyuan_video.py"), "--tiny"],
     "after remove_fresco the pipeline is bit-identical to stock: True"),
    pytest.param([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                  str(EXAMPLES / "flux_multi_gpu.py"), "--tiny"], "2 ranks, image tokens per step",
                 marks=pytest.mark.multiprocess),
    pytest.param([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                  str(EXAMPLES / "hunyuan_video_multi_gpu.py"), "--tiny"], "2 ranks, image tokens per step",
                 marks=pytest.mark.multiprocess),
])
def test_offline_example_runs(command, expected):
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"stdout:\n{result.stdout[-1500:]}\nstderr:\n{result.stderr[-3000:]}"
    assert expected in result.stdout


@pytest.mark.parametrize("command", [[], ["flops"], ["plan"], ["demo"], ["bench"]])
def test_every_fresco_command_explains_itself(command):
    """``--help`` runs without third-party noise and shows each option's default or accepted values."""
    result = subprocess.run([sys.executable, "-m", "fresco_plugin.tools.cli", *command, "--help"], capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""  # no import warnings from torchao, torch or transformers
    text = " ".join(result.stdout.split())
    if command == ["flops"]:
        assert "(default: the preset's model; flux-dev with --config)" in text
        assert "default: the model's usual count" in text
    if command == ["demo"]:
        assert "(default: fresco-out/demo.png)" in text and "(default: 4)" in text and "hunyuan" not in text
    if command == ["bench"]:
        assert "fresco@10x" in text and "(default: 128)" in text and "(default: fresco-out/bench)" in text
