#!/usr/bin/env bash
# ParaAttention's tests, in its own virtual environment: para-attn 0.3.38 runs with diffusers 0.34 only (its issue
# #49 on newer diffusers) and its sdist is refused by pip 26.3 and later. The environment is built beside the
# checkout on first use (override with FRESCO_PARA_VENV) and reused after.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${FRESCO_PARA_VENV:-.venv-para-attention}
[ -x "$VENV/bin/python" ] || python -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q "pip<26.3"
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q "diffusers==0.34.0" "transformers==4.57.6" "para-attn==0.3.38" accelerate safetensors \
    sentencepiece "pytest>=8"
"$PY" -m pip install -q --no-deps -e .
"$PY" -m pytest -q tests/para_attention
