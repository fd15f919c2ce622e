"""The offline modes of the examples run as documented in the README."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("command,expected", [
    ([sys.executable, str(EXAMPLES / "flux_dev.py"), "--tiny"],
     "after remove_fresco the pipeline is bit-identical to stock: True"),
    ([sys.executable, str(EXAMPLES / "hunyuan_video.py"), "--tiny"], "Fresco (hunyuan-video-5x)"),
    ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
      str(EXAMPLES / "flux_multi_gpu.py"), "--tiny"], "2 ranks, image tokens per step"),
    ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
      str(EXAMPLES / "hunyuan_video_multi_gpu.py"), "--tiny"], "2 ranks, image tokens per step"),
])
def test_offline_example_runs(command, expected):
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout
