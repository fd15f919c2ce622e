"""The quantization configs every Fresco quantization test runs (torchao and optimum-quanto weights, CPU), and the
error measure they compare."""

import warnings

import torch

warnings.filterwarnings("ignore", module="torchao")
import optimum.quanto as quanto  # noqa: E402  (installed by the test command's extras)
import torchao.quantization as torchao_quantization  # noqa: E402


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _torchao(config_name):
    return lambda module: torchao_quantization.quantize_(module, getattr(torchao_quantization, config_name)())


def _quanto_weights(kind):
    def apply(module):
        quanto.quantize(module, weights=getattr(quanto, kind))
        quanto.freeze(module)

    return apply


QUANTIZERS = {
    "torchao-int8-weight-only": _torchao("Int8WeightOnlyConfig"),
    "torchao-int8-dynamic": _torchao("Int8DynamicActivationInt8WeightConfig"),
    "torchao-float8-weight-only": _torchao("Float8WeightOnlyConfig"),
    "quanto-qint8": _quanto_weights("qint8"),
    "quanto-qfloat8": _quanto_weights("qfloat8"),
}
