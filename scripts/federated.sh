#!/usr/bin/env bash
# Federated AdaMax training with Flower's Simulation Runtime: 10 clients, scikit-learn's digits
# split by label (each client holds 3 of the 10 digits), FedAvg, 10 rounds; prints the held-out
# accuracy of the global model after every round.
#
#   bash scripts/federated.sh            # MLP
#   bash scripts/federated.sh cnn        # CNN
#   bash scripts/federated.sh mlp --strategy fedadam --server-lr 0.05   # extra simulate args
#
# The training model is built once in .venv (onnxruntime-training); the server and the clients
# run in .venv-fed (Flower + stock onnxruntime). Output: runs/federated-<model>/.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-mlp}
shift || true
OUT=runs/federated-$MODEL
bash scripts/setup.sh
bash scripts/federated_venv.sh
echo "== 1. training model and label-skewed client data (training build, .venv)"
.venv/bin/python -m adamax_onnx.federated.prepare --model "$MODEL" --out "$OUT" --clients 10
echo "== 2. federation: Flower Simulation Runtime, 10 clients (stock onnxruntime, .venv-fed)"
.venv-fed/bin/python -m adamax_onnx.federated.simulate --train-model "$OUT/$MODEL.train.onnx" \
    --data-dir "$OUT/data" --work "$OUT/sim" --clients 10 --quiet "$@"
