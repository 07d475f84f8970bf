#!/usr/bin/env bash
# Create ./.venv with adamax-onnx and its pinned dependencies (requirements-lock.txt): stock
# onnxruntime, onnx, onnx_ir, numpy; no onnxruntime-training (gradients come from our own
# autodiff pass, adamax_onnx/passes/autodiff).
#   bash scripts/setup.sh               # library + examples (the main job)
#   bash scripts/setup.sh --federated   # + Flower (scripts/federated*.sh)
#   bash scripts/setup.sh --test        # + Flower + test tools (pytest, torch CPU, transformers)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras="examples"
case "${1:-}" in
    --test) extras="examples,federated,test" ;;
    --federated) extras="examples,federated" ;;
    "") ;;
    *) echo "usage: bash scripts/setup.sh [--test|--federated]" >&2; exit 2 ;;
esac
if [ -x .venv/bin/python ] && .venv/bin/python -c \
        "import onnxruntime.capi._pybind_state as C, sys; sys.exit(not hasattr(C, 'GradientGraphBuilder'))" 2>/dev/null; then
    # A venv from before the switch holds onnxruntime-training, which shares the onnxruntime
    # module with the stock package: start over rather than mix the two.
    echo "replacing the old .venv (it holds onnxruntime-training)"
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
quiet() { grep -v -e "is ignored: it is neither a file nor a directory" \
    -e "BuildBackendWarning" -e "^  *!!" -e "^  *\*\*\*" -e "^  *$" || true; }
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -c requirements-lock.txt -e ".[${extras}]" 2>&1 | quiet >/dev/null
.venv/bin/python -c "import onnxruntime, onnx, onnx_ir, numpy; print('onnxruntime', onnxruntime.__version__, '| onnx', onnx.__version__, '| onnx_ir', onnx_ir.__version__, '| numpy', numpy.__version__)"
