"""Import xDiT (xfuser 0.7.0) on a machine without a GPU, for tests and CPU trials over gloo. Not needed on a GPU.

xfuser refuses to import without an accelerator: ``xfuser.envs.get_device_version()`` raises
``NotImplementedError: No Accelerators(...) available`` while its config module loads, its process groups ask
``get_torch_distributed_backend()`` (nccl, or gloo only on Apple's MPS), it reports yunchang (its Ulysses/ring
attention) missing unless CUDA is present, and its attention module binds yunchang's process groups only on CUDA.
The computation itself is portable (torch functional all-to-all and SDPA). :func:`import_xfuser_on_cpu` loads
``xfuser.envs`` alone first, answers those four questions for a CPU (no device version, gloo, yunchang present,
yunchang's groups), then imports xfuser as usual. It also needs triton installed (xfuser imports it
unconditionally; ``pip install --no-deps triton``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types
from typing import Any

__all__ = ["import_xfuser_on_cpu"]

SUPPORTED_XFUSER = "0.7.0"


def import_xfuser_on_cpu() -> Any:
    """Import and return ``xfuser`` with its accelerator checks answered for a CPU (gloo)."""
    if "xfuser" in sys.modules:
        envs = sys.modules.get("xfuser.envs")
        if envs is None or envs.get_torch_distributed_backend.__name__ != "_gloo":
            raise RuntimeError("xfuser was imported before import_xfuser_on_cpu(); call it first")
        return sys.modules["xfuser"]
    version = importlib.metadata.version("xfuser")
    if version != SUPPORTED_XFUSER:
        raise ImportError(f"this shim answers xfuser {SUPPORTED_XFUSER}'s accelerator checks; xfuser {version} is "
                          f"installed (pip install xfuser=={SUPPORTED_XFUSER})")
    spec = importlib.util.find_spec("xfuser")
    placeholder = types.ModuleType("xfuser")  # lets xfuser.envs load without running xfuser/__init__.py
    placeholder.__path__ = list(spec.submodule_search_locations)
    sys.modules["xfuser"] = placeholder
    try:
        envs = importlib.import_module("xfuser.envs")
    finally:
        del sys.modules["xfuser"]

    def _no_device_version() -> None:
        return None

    def _gloo() -> str:
        return "gloo"

    envs.get_device_version = _no_device_version
    envs.get_torch_distributed_backend = _gloo
    envs.PACKAGES_CHECKER.packages_info["has_long_ctx_attn"] = True
    xfuser = importlib.import_module("xfuser")
    from yunchang.globals import PROCESS_GROUP

    importlib.import_module("xfuser.model_executor.layers.usp").PROCESS_GROUP = PROCESS_GROUP
    return xfuser
