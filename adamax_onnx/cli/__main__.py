"""``python -m adamax_onnx.cli``: the ``adamax-onnx`` command."""

import sys

from . import main

sys.exit(main())
