#!/usr/bin/env bash
# Create ./.venv-fed: Flower 1.42 (with its Ray simulation backend), *stock* onnxruntime 1.32 and
# adamax-onnx (extras runtime + federated), pinned by requirements-federated.txt. Devices and the
# server of a federated run need nothing else: no torch, no onnxruntime-training.
#
#   bash scripts/federated_venv.sh   # idempotent: an existing venv with the same pins is kept
#
# FED_VENV overrides the location, PYTHON the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${FED_VENV:-.venv-fed}
stamp="$(sha256sum requirements-federated.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ -x "$VENV/bin/python" ] && [ -f "$VENV/.stamp" ] && [ "$(cat "$VENV/.stamp")" = "$stamp" ]; then
    exit 0
fi
start=$(date +%s)
rm -rf "$VENV"
"$PY" -m venv "$VENV"
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | quiet
"$VENV/bin/python" -m pip install -q -c requirements-federated.txt -e ".[runtime,federated]" 2>&1 | quiet
"$VENV/bin/python" - <<'PYEOF'
import flwr
import onnxruntime
from onnxruntime.capi import _pybind_state as C

import adamax_onnx.federated.client  # noqa: F401  (the ClientApp imports)

assert not hasattr(C, "GradientGraphBuilder"), "this is the training build, not stock onnxruntime"
print(f"federated venv: flwr {flwr.__version__}, onnxruntime {onnxruntime.__version__} (stock)")
PYEOF
echo "$stamp" > "$VENV/.stamp"
echo "federated venv created in $(( $(date +%s) - start )) s"
