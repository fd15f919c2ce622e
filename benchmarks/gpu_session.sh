#!/usr/bin/env bash
# The GPU checks, in one go, on a machine with one CUDA GPU and no network (the device tool's H100/H200), in under
# ten minutes. Wheels for what its image lacks (diffusers, importlib_metadata, torchao) are expected in .whl/.
# Results land in $OUT (default ./gpu_results): gpu_tests.xml, gpu_wall_table.json, log.txt.
set -uo pipefail
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
SECONDS=0
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())"
git rev-parse HEAD 2>/dev/null || true
echo "== [$SECONDS s] host synchronisations per step, stock vs Fresco, every adapter (CUDA sync debug mode)"
# -P: the installed fresco_plugin (with its integrations and tools), not the source folder in the working directory
timeout 100 python3 -P -m pytest -q -p no:cacheprovider -m gpu -rA tests/test_adapter_contract.py \
    --junitxml "$OUT/gpu_tests.xml"
echo "== [$SECONDS s] FLUX.1-dev / schnell wall time vs FLOPs: eager, compiled, CUDA graphs, float8; Fresco and peers"
timeout 450 python3 -P benchmarks/gpu_wall_table.py --out "$OUT/gpu_wall_table.json" --budget 330
echo "== [$SECONDS s] done"
