#!/usr/bin/env bash
# The GPU checks, in one go, on a machine with one CUDA GPU and no network (the device tool's H100/H200).
# Wheels for what its image lacks (diffusers, importlib_metadata, torchao) are expected in .whl/.
# Results land in $OUT (default ./gpu_results): gpu_tests.xml, gpu_video_latency.json, gpu_flux_latency.json,
# float8_dynamic_gpu.json, log.txt. The video wall time runs before FLUX's (measured in earlier sessions already).
set -uo pipefail
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())"
# -P: the installed fresco_plugin (with its integrations and tools), not the source folder in the working directory
echo "== host synchronisations per step, stock vs Fresco, every adapter (CUDA sync debug mode)"
timeout 240 python3 -P -m pytest -q -p no:cacheprovider -m gpu -rA tests/test_adapter_contract.py \
    --junitxml "$OUT/gpu_tests.xml"
echo "== multi-GPU example, one rank (nccl, real FLUX.1-dev size, random weights)"
timeout 240 torchrun --standalone --nproc_per_node 1 examples/flux_multi_gpu.py --random-weights --preset flux-dev-10x
echo "== torchao float8 dynamic activations with Fresco"
timeout 180 python3 benchmarks/float8_dynamic_gpu.py --out "$OUT/float8_dynamic_gpu.json"
echo "== HunyuanVideo wall time (13B, random weights, 480x848x61), stock vs the video plans"
timeout 480 python3 benchmarks/gpu_video_latency.py --out "$OUT/gpu_video_latency.json"
echo "== FLUX.1-dev wall time, stock vs presets"
timeout 420 python3 benchmarks/gpu_flux_latency.py --out "$OUT/gpu_flux_latency.json" --repeats 2
echo "== done"
