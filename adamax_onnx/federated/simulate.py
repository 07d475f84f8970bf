"""``python -m adamax_onnx.federated.simulate``: a federation in Flower's Simulation Runtime.

Takes a training model and per-client data made by :mod:`.prepare`, starts a SuperLink in
simulation mode on 127.0.0.1 (:class:`.launch.Federation`) and submits the run with
``flwr run``; Flower's Simulation Runtime then runs one ClientApp per virtual SuperNode (Ray
actors). Prints the held-out accuracy per round and writes ``<work>/results.json``.

    python -m adamax_onnx.federated.simulate --train-model M.onnx --data-dir DATA --clients 10
    python -m adamax_onnx.federated.simulate ... --strategy fedadam --server-lr 0.03
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import FederatedError
from .data import client_file

__all__ = ["main", "print_history", "common_arguments", "run_config", "report"]


def common_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by ``simulate`` and ``deploy``."""
    p.add_argument(
        "--train-model", required=True, help="the training model (from federated.prepare)"
    )
    p.add_argument(
        "--data-dir", required=True, help="client-<i>.npz and test.npz (from federated.prepare)"
    )
    p.add_argument("--rounds", type=int, default=10, help="federated rounds (default 10)")
    p.add_argument("--local-epochs", type=int, default=5, help="epochs per round (default 5)")
    p.add_argument("--batch-size", type=int, default=16, help="local batch size (default 16)")
    p.add_argument(
        "--strategy", default="fedavg", help="fedavg (default), fedadam, fedyogi, fedavgm, ..."
    )
    p.add_argument(
        "--server-lr", type=float, default=0.05, help="eta of fedadam/fedyogi (default 0.05)"
    )
    p.add_argument("--faults", default="", help="fault injection, e.g. 'crash:2,nan:5@3'")
    p.add_argument("--round-timeout", type=float, default=300.0, help="seconds per round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", required=True, help="folder for state, logs and results.json")
    p.add_argument("--quiet", action="store_true", help="do not echo Flower's log")


def run_config(args: argparse.Namespace, clients: int) -> dict[str, Any]:
    """The apps' run config from the arguments; clears the work folder's previous run."""
    work = Path(args.work).resolve()
    model = Path(args.train_model).resolve()
    data = Path(args.data_dir).resolve()
    if not model.is_file():
        raise FederatedError(f"--train-model {str(model)!r} does not exist")
    missing = [str(client_file(data, i)) for i in range(clients) if not client_file(data, i).is_file()]
    if missing:
        raise FederatedError(
            f"--data-dir has no data for {len(missing)} of {clients} clients (first: "
            f"{missing[0]}); run adamax_onnx.federated.prepare with --clients {clients}"
        )
    for stale in ("state", "results.json", "logs", "flwr-home", "app"):
        path = work / stale
        if path.is_dir():
            shutil.rmtree(path)  # a fresh run: old checkpoints or results would mislead
        elif path.exists():
            path.unlink()
    work.mkdir(parents=True, exist_ok=True)
    return {
        "train-model": str(model),
        "data-dir": str(data),
        "state-dir": str(work / "state"),
        "results": str(work / "results.json"),
        "num-server-rounds": args.rounds,
        "local-epochs": args.local_epochs,
        "batch-size": args.batch_size,
        "strategy": args.strategy,
        "server-lr": args.server_lr,
        "round-timeout": args.round_timeout,
        "min-nodes": min(2, clients),
        "seed": args.seed,
        "fault-injection": args.faults,
    }


def print_history(results: Path, out: Any = sys.stdout) -> dict[str, Any]:
    """Print the per-round held-out accuracy of a results file; returns its contents."""
    history = json.loads(Path(results).read_text())
    print("round  held-out acc  held-out loss  train replies  seconds", file=out)
    for r in history["rounds"]:
        print(
            f"{r['round']:5d}  {r['accuracy']:12.4f}  {r['loss']:13.4f}  "
            f"{r.get('train_replies', '-'):>13}  {r['seconds']:7.1f}",
            file=out,
        )
    for e in history["excluded"]:
        print(f"excluded: round {e['round']} node {e['node']}: {e['reason']}", file=out)
    for e in history.get("failed", []):
        print(f"failed: round {e['round']} {e['phase']}: {e['count']} node(s) gave no reply", file=out)
    return history


def report(
    done: subprocess.CompletedProcess,
    config: dict[str, Any],
    work: Path,
    who: str,
    args: argparse.Namespace,
    t0: float,
) -> int:
    """Print a finished run's history and summary line; the command's exit code."""
    results = Path(config["results"])
    if done.returncode != 0 or not results.exists():
        print(f"flwr run failed (exit {done.returncode}); logs: {work / 'logs'}", file=sys.stderr)
        return 1
    history = print_history(results)
    print(
        f"{who}, {args.rounds} rounds ({args.strategy}): final held-out "
        f"accuracy {history['rounds'][-1]['accuracy']:.4f}; federation "
        f"{history['wall_seconds']:.1f} s, wall {time.perf_counter() - t0:.1f} s"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m adamax_onnx.federated.simulate",
        description="Federated AdaMax training of an ONNX model with Flower's Simulation Runtime.",
    )
    common_arguments(p)
    p.add_argument("--clients", type=int, default=10, help="virtual SuperNodes (default 10)")
    p.add_argument(
        "--cpus-per-client", type=float, default=1, help="Ray CPUs per ClientApp (default 1)"
    )
    args = p.parse_args(argv)
    from .launch import Federation, write_app

    t0 = time.perf_counter()
    try:
        config = run_config(args, args.clients)
    except FederatedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    work = Path(args.work).resolve()
    app_dir = write_app(work / "app")
    sim = {
        "num-supernodes": args.clients,
        "client-resources-num-cpus": args.cpus_per_client,
        "init-args-logging-level": "ERROR",
    }
    with Federation(work, simulation=True) as fed:
        done = fed.run(app_dir, config, sim, echo=not args.quiet)
    return report(done, config, work, f"{args.clients} clients", args, t0)


if __name__ == "__main__":
    raise SystemExit(main())
