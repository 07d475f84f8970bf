#!/usr/bin/env bash
# Federated AdaMax training with Flower's Deployment Runtime on this machine: a SuperLink and
# NODES SuperNode processes on 127.0.0.1 (default 3), each training on its own label-skewed
# part of the digits. Extra arguments go to adamax_onnx.federated.deploy, e.g.
#
#   bash scripts/federated_deploy.sh                       # 3 SuperNodes, 10 rounds
#   NODES=4 bash scripts/federated_deploy.sh --kill-node 1@15 --round-timeout 20
#
# Output: runs/federated-deploy/.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-3}
MODEL=${MODEL:-mlp}
OUT=runs/federated-deploy
bash scripts/setup.sh --federated
echo "== 1. training model and label-skewed data for $NODES devices"
.venv/bin/python -m adamax_onnx.federated.prepare --model "$MODEL" --out "$OUT" \
    --clients "$NODES" --classes-per-client 4
echo "== 2. SuperLink + $NODES SuperNodes on 127.0.0.1"
.venv/bin/python -m adamax_onnx.federated.deploy --train-model "$OUT/$MODEL.train.onnx" \
    --data-dir "$OUT/data" --work "$OUT/run" --nodes "$NODES" --quiet "$@"
