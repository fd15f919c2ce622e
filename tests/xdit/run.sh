#!/usr/bin/env bash
# xDiT's tests, in their own virtual environment: xfuser 0.7.0 brings packages the main suite should not see (peft,
# yunchang, distvae) and imports triton unconditionally. The environment sits on top of the main one (its torch,
# diffusers and this project, pinned so nothing is upgraded); it is built beside the checkout on first use
# (override with FRESCO_XDIT_VENV) and reused after. xfuser needs a GPU to import: the tests go through
# fresco_plugin.tools.xdit_cpu.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${FRESCO_XDIT_VENV:-.venv-xdit}
[ -x "$VENV/bin/python" ] || python -m venv "$VENV"
PY="$VENV/bin/python"
OUTER=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "import site; site.addsitedir('$OUTER')" > "$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_fresco_outer_env.pth"
PINS=$(mktemp)
trap 'rm -f "$PINS"' EXIT
python -m pip freeze | grep -i -E "^(torch|diffusers|transformers|accelerate)==" > "$PINS"
"$PY" -m pip install -q -c "$PINS" xfuser==0.7.0
"$PY" -m pip install -q --no-deps triton==3.9.0
"$PY" -m pytest -q tests/xdit "$@"
