#!/usr/bin/env bash
# The main job: train the bundled MLP on scikit-learn's digits with AdaMax inside the ONNX graph,
# show accuracy before and after, export the trained inference model and run it in onnxruntime.
# Usage: bash scripts/main_job.sh [OUT_DIR]   (default: runs/digits)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/digits}
PY=.venv/bin/python
AX=.venv/bin/adamax-onnx
mkdir -p "$OUT"

echo "== 1. build the inference model and the dataset"
$PY -m adamax_onnx.models.mlp --out "$OUT/mlp.onnx"
$PY -m adamax_onnx.models.data --out "$OUT/digits"

echo "== 2. build the training model (loss + gradients + AdaMax update in one ONNX graph)"
$AX build "$OUT/mlp.onnx" -o "$OUT/mlp.train.onnx" --loss cross_entropy --lr 0.01

echo "== 3. accuracy of the untrained model on the held-out digits"
$AX evaluate "$OUT/mlp.onnx" --data "$OUT/digits_test.npz"

echo "== 4. train (one onnxruntime run per step)"
$AX train "$OUT/mlp.train.onnx" --data "$OUT/digits_train.npz" --val "$OUT/digits_test.npz" \
    --checkpoint "$OUT/ckpt" --epochs 10 --batch-size 32 --no-resume

echo "== 5. export the trained inference model and evaluate it with plain onnxruntime"
$AX export "$OUT/mlp.train.onnx" --checkpoint "$OUT/ckpt" -o "$OUT/mlp.trained.onnx"
$AX evaluate "$OUT/mlp.trained.onnx" --data "$OUT/digits_test.npz"
echo "trained model: $OUT/mlp.trained.onnx"
