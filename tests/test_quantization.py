"""Fresco on quantized transformers (torchao and optimum-quanto, CPU).

Tolerance: with whole-stage switches (no promotion rounds) Fresco's sampling is a fixed sequence of smooth operations,
so quantization should move its output no more than it moves the stock pipeline's: we allow 1.5x the stock run's
relative error plus 1e-3. Promotion rounds make a discrete choice (which tokens to promote) that quantization noise can
flip for near-tied tokens, so with rounds the output moves further; there we only bound it (relative error < 0.15) and
check that the run is whole.
"""

import pytest
import torch
from conftest import text_inputs
from quantizers import QUANTIZERS, quanto
from quantizers import relative_error as _relative

from fresco_plugin import FrescoConfig, apply_fresco
from fresco_plugin.integrations.quanto import calibrate_activations
from fresco_plugin.tools.tiny import tiny_flux_pipeline

WHOLE_STAGES = FrescoConfig(stage_scales=(0.25, 0.5, 1.0), promotion_rounds=0)
WITH_ROUNDS = FrescoConfig(stage_scales=(0.25, 0.5, 1.0), promotion_rounds=1)


def _pipe(quantize=None, config=None):
    pipe = tiny_flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    if quantize is not None:
        quantize(pipe.transformer)
    if config is not None:
        apply_fresco(pipe, config)
    return pipe


def _run(pipe, seed=0):
    return pipe(**text_inputs(), height=64, width=64, num_inference_steps=12, output_type="latent",
                generator=torch.Generator().manual_seed(seed)).images


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_quantized_fresco_stays_as_close_as_quantized_stock(name):
    quantize = QUANTIZERS[name]
    stock_error = _relative(_run(_pipe(quantize)), _run(_pipe()))
    fresco_error = _relative(_run(_pipe(quantize, WHOLE_STAGES)), _run(_pipe(config=WHOLE_STAGES)))
    assert 0 < fresco_error <= 1.5 * stock_error + 1e-3
    with_rounds = _run(_pipe(quantize, WITH_ROUNDS))
    assert torch.isfinite(with_rounds).all()
    assert _relative(with_rounds, _run(_pipe(config=WITH_ROUNDS))) < 0.15


def test_static_activation_scales_calibrated_through_fresco():
    def quantize(module):
        quanto.quantize(module, weights=quanto.qint8, activations=quanto.qint8)

    reference = _run(_pipe(config=WHOLE_STAGES))
    uncalibrated = _pipe(quantize, WHOLE_STAGES)
    quanto.freeze(uncalibrated.transformer)
    calibrated = _pipe(quantize, WHOLE_STAGES)
    calls = [dict(**text_inputs(seed=s), height=64, width=64, num_inference_steps=12, output_type="latent",
                  generator=torch.Generator().manual_seed(s)) for s in range(3, 7)]
    assert calibrate_activations(calibrated, calls) == 4
    quanto.freeze(calibrated.transformer)
    assert _relative(_run(calibrated), reference) < 0.02
    assert _relative(_run(uncalibrated), reference) > 0.1  # the scales matter: without calibration it is far off


def test_calibration_needs_fresco_first():
    with pytest.raises(ValueError, match="apply_fresco"):
        calibrate_activations(_pipe(), [{}])
