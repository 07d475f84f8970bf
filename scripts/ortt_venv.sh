#!/usr/bin/env bash
# Create ./.venv-ortt: the optional onnxruntime-training 1.19.2 build (its C++ gradient builder
# and com.microsoft gradient kernels) with adamax-onnx, for the cross-check tests marked `ortt`
# (tests/passes/test_lowering.py, tests/integration/test_ortt_crosscheck.py). Nothing else needs
# it: the library, the README's commands and the default tests use stock onnxruntime.
# onnxruntime-training is frozen (last release 2024-09, wheels up to CPython 3.12) and provides
# the same `onnxruntime` module as the stock package, hence a venv of its own.
#
#   bash scripts/ortt_venv.sh      # idempotent: an existing venv with the same pins is kept
#
# ORTT_VENV overrides the location, PYTHON the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${ORTT_VENV:-.venv-ortt}
pins=(onnxruntime-training==1.19.2 onnx==1.23.2 onnx-ir==1.1.0 numpy==2.4.6 protobuf==6.33.6
      tqdm==4.70.1 pytest==9.0.3 torch==2.13.0 scikit-learn==1.9.1)
stamp="${pins[*]} $(sha256sum pyproject.toml | cut -c1-16)"
if [ -x "$VENV/bin/python" ] && [ -f "$VENV/.stamp" ] && [ "$(cat "$VENV/.stamp")" = "$stamp" ]; then
    exit 0
fi
start=$(date +%s)
rm -rf "$VENV"
"$PY" -m venv "$VENV"
quiet() { grep -v -e "is ignored: it is neither a file nor a directory" || true; }
"$VENV/bin/python" -m pip install -q "${pins[@]}" 2>&1 | quiet
# The library without its declared stock onnxruntime (same module name as the training build).
"$VENV/bin/python" -m pip install -q --no-deps -e . 2>&1 | quiet >/dev/null
"$VENV/bin/python" -m pip install -q ml_dtypes sympy typing_extensions packaging 2>&1 | quiet
"$VENV/bin/python" - <<'PYEOF'
import onnxruntime
from onnxruntime.capi import _pybind_state as C

assert hasattr(C, "GradientGraphBuilder"), "not the onnxruntime-training build"
print(f"ortt venv: onnxruntime-training {onnxruntime.__version__}")
PYEOF
echo "$stamp" > "$VENV/.stamp"
echo "ortt venv created in $(( $(date +%s) - start )) s"
