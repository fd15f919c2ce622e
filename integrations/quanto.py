"""optimum-quanto with Fresco: calibrate static activation scales on the token counts Fresco actually runs.

Weight-only quantization (``qint8``, ``qfloat8``) needs nothing: it does not depend on the token count. Static
activation quantization records activation ranges during calibration, and Fresco's low-resolution and mixed stages
see other token counts (and other activation statistics) than a full-resolution run, so calibrate through Fresco:

    quantize(pipe.transformer, weights=qint8, activations=qint8)
    apply_fresco(pipe, FrescoConfig.preset("flux-dev-10x"))
    calibrate_activations(pipe, [dict(prompt=p) for p in calibration_prompts])
    freeze(pipe.transformer)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fresco_plugin.api import fresco_config_of

__all__ = ["calibrate_activations"]


def calibrate_activations(pipe: Any, calls: Iterable[dict[str, Any]], *, momentum: float = 0.9) -> int:
    """Run ``pipe(**call)`` for each call under ``optimum.quanto.Calibration``; returns the number of calls.

    Fresco must already be applied, so that every stage's resolution and every promotion round is seen.
    """
    from optimum.quanto import Calibration

    if fresco_config_of(pipe) is None:
        raise ValueError("apply_fresco(pipe, ...) before calibrating, so that calibration sees every Fresco stage")
    count = 0
    with Calibration(momentum=momentum):
        for call in calls:
            pipe(**call)
            count += 1
    if count == 0:
        raise ValueError("calibrate_activations needs at least one call")
    return count
