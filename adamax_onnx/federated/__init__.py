"""Federated training of adamax-onnx training models on Flower (optional extra ``federated``).

Each device runs a Flower ``ClientApp`` (:mod:`.client`) that wraps a
:class:`~adamax_onnx.TrainingSession`: it loads the global parameters by name, trains a few local
epochs with the AdaMax graph on its own data, keeps its optimizer state in a local checkpoint
across rounds, and replies with its parameters and example count. The ``ServerApp``
(:mod:`.server`) runs one of Flower's own strategies (FedAvg, FedAdam, FedYogi, ...) wrapped by
:class:`~.strategy.FiniteUpdates`, which excludes updates holding NaN/Inf with a logged reason.
Flower does the orchestration, transport and aggregation; nothing here re-implements them.

Clients need only stock ``onnxruntime``, ``numpy``, ``onnx`` and ``flwr``; the training model
is built once (standard ONNX ops only) and shipped as a file.

Entry points (``scripts/federated.sh`` and ``scripts/federated_deploy.sh`` chain them):

* ``python -m adamax_onnx.federated.prepare`` - the training model and the per-client data
  (needs scikit-learn for the digits data).
* ``python -m adamax_onnx.federated.simulate`` - Flower's Simulation Runtime (10 clients,
  digits split non-IID by label), accuracy per round.
* ``python -m adamax_onnx.federated.deploy`` - Flower's Deployment Runtime: a SuperLink and
  SuperNodes as separate processes on the loopback interface.

Only :mod:`.data` and :mod:`.params` import without ``flwr``.
"""

from __future__ import annotations

__all__ = ["data", "params"]
