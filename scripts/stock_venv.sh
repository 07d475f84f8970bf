#!/usr/bin/env bash
# Create ./.venv-stock: a second virtual environment with the newest stock onnxruntime, onnx,
# onnx_ir, numpy and the onnxruntime-ggml plugin execution provider, and without adamax-onnx
# installed (a deployment). tests/integration/test_portability.py trains the built models in it.
#
#   bash scripts/stock_venv.sh     # idempotent: an existing venv with the same pins is kept
#
# STOCK_VENV overrides the location, PYTHON the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${STOCK_VENV:-.venv-stock}
ORT=1.32.0
ONNX=1.23.2
NUMPY=2.4.6
ONNX_IR=1.1.0
GGML=0.2.0
stamp="onnxruntime==$ORT onnx==$ONNX onnx-ir==$ONNX_IR numpy==$NUMPY onnxruntime-ggml==$GGML"
if [ -x "$VENV/bin/python" ] && [ -f "$VENV/.stamp" ] && [ "$(cat "$VENV/.stamp")" = "$stamp" ]; then
    exit 0
fi
start=$(date +%s)
rm -rf "$VENV"
"$PY" -m venv "$VENV"
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }
"$VENV/bin/python" -m pip install -q "onnxruntime==$ORT" "onnx==$ONNX" "onnx-ir==$ONNX_IR" \
    "numpy==$NUMPY" 2>&1 | quiet
# onnxruntime-ggml 0.2.0 declares onnxruntime<1.31 and would make pip downgrade onnxruntime.
# Its plugin library talks to onnxruntime through the versioned plugin-EP API and loads into
# 1.32 (the portability tests check that it registers and runs), so it goes in without deps.
"$VENV/bin/python" -m pip install -q --no-deps "onnxruntime-ggml==$GGML" 2>&1 | quiet
"$VENV/bin/python" - "$ORT" <<'EOF'
import sys

import onnxruntime
from onnxruntime.capi import _pybind_state as C

assert onnxruntime.__version__ == sys.argv[1], onnxruntime.__version__
assert not hasattr(C, "GradientGraphBuilder"), "this is the training build, not stock onnxruntime"
print(f"stock venv: onnxruntime {onnxruntime.__version__}")
EOF
echo "$stamp" > "$VENV/.stamp"
echo "stock venv created in $(( $(date +%s) - start )) s"
