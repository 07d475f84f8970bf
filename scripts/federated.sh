#!/usr/bin/env bash
# Federated AdaMax training with Flower's Simulation Runtime: 10 clients, scikit-learn's digits
# split by label (each client holds 3 of the 10 digits), FedAvg, 10 rounds; prints the held-out
# accuracy of the global model after every round.
#
#   bash scripts/federated.sh            # MLP
#   bash scripts/federated.sh cnn        # CNN
#   bash scripts/federated.sh mlp --strategy fedadam --server-lr 0.05   # extra simulate args
#
# Everything runs in .venv (stock onnxruntime + Flower): the training model is built once, then
# the server and every client run it. Output: runs/federated-<model>/.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-mlp}
shift || true
OUT=runs/federated-$MODEL
bash scripts/setup.sh --federated
echo "== 1. training model and label-skewed client data"
.venv/bin/python -m adamax_onnx.federated.prepare --model "$MODEL" --out "$OUT" --clients 10
echo "== 2. federation: Flower Simulation Runtime, 10 clients"
.venv/bin/python -m adamax_onnx.federated.simulate --train-model "$OUT/$MODEL.train.onnx" \
    --data-dir "$OUT/data" --work "$OUT/sim" --clients 10 --quiet "$@"
