"""The ``adamax-onnx`` command: build, train, evaluate and export from the shell.

It only parses arguments (:mod:`.parser`, the config file in :mod:`.config`) and calls the
public API (:mod:`.commands`). Every library error ends the command with exit code 2 and one
line on stderr (no traceback); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..errors import AdamaxOnnxError
from .parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("adamax-onnx: interrupted", file=sys.stderr)
        return 130
    except (AdamaxOnnxError, ValueError, TypeError, KeyError, RuntimeError, OSError) as exc:
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"adamax-onnx {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:  # onnxruntime's errors derive from Exception only (Fail, InvalidGraph)
        if args.debug:
            raise
        text = str(exc).strip()
        message = text.splitlines()[0].strip() if text else ""
        print(
            f"adamax-onnx {args.command}: error: {type(exc).__name__}: {message} "
            "(--debug shows the traceback)",
            file=sys.stderr,
        )
        return 2
