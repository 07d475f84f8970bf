"""``python -m adamax_onnx.federated.deploy``: a federation of real processes on this machine.

Flower's Deployment Runtime: one ``flower-superlink`` and ``--nodes`` ``flower-supernode``
processes on 127.0.0.1 (each SuperNode is one device: ``partition-id=<i>`` selects its
``client-<i>.npz``), then ``flwr run`` submits the run. Nothing is simulated: every ClientApp
runs in its own process started by its SuperNode, and parameters travel over Flower's
transport. ``--kill-node ID`` stops SuperNode ID (SIGKILL) as soon as it has finished its first
training round (its checkpoint appears), to show that a device dropping out mid-run does not
stop the federation: the server goes on with the replies it gets within ``--round-timeout``.

    python -m adamax_onnx.federated.deploy --train-model M.onnx --data-dir DATA --nodes 3
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import FederatedError
from .simulate import common_arguments, report, run_config

__all__ = ["main"]


def _kill_after_first_round(fed, node: int, state_dir: Path, stop: threading.Event) -> None:
    """SIGKILL SuperNode ``node`` once its first local checkpoint exists."""
    while not stop.is_set():
        if any(state_dir.glob(f"run-*/client-{node}.npz")):
            fed.kill_supernode(node)
            return
        stop.wait(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m adamax_onnx.federated.deploy",
        description="Federated AdaMax training with Flower's Deployment Runtime on localhost.",
    )
    common_arguments(p)
    p.add_argument("--nodes", type=int, default=3, help="SuperNode processes (default 3)")
    p.add_argument(
        "--kill-node", type=int, help="SIGKILL SuperNode ID after its first training round"
    )
    args = p.parse_args(argv)
    from .launch import Federation, write_app

    t0 = time.perf_counter()
    try:
        if args.nodes < 2:
            raise FederatedError(f"--nodes must be >= 2, got {args.nodes}")
        kill = args.kill_node
        if kill is not None and not 0 <= kill < args.nodes:
            raise FederatedError(f"--kill-node {kill} is not a node id in 0..{args.nodes - 1}")
        config = run_config(args, args.nodes)
    except FederatedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    work = Path(args.work).resolve()
    app_dir = write_app(work / "app")
    with Federation(work, simulation=False) as fed:
        for i in range(args.nodes):
            fed.add_supernode(i, args.nodes)
        stop = threading.Event()
        if kill is not None:
            watcher = threading.Thread(
                target=_kill_after_first_round,
                args=(fed, kill, Path(config["state-dir"]), stop),
                daemon=True,
            )
            watcher.start()
        try:
            done = fed.run(app_dir, config, echo=not args.quiet)
        finally:
            stop.set()
    return report(done, config, work, f"{args.nodes} SuperNodes", args, t0)


if __name__ == "__main__":
    raise SystemExit(main())
