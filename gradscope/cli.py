"""The ``gradscope`` command line: one sub-command per module.

Each sub-command lives in its own module, which defines ``configure(parser)`` (add
arguments) and ``run(args) -> int`` (the exit code). Modules are imported only
when their command runs, so ``gradscope --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Optional

__all__ = ["COMMANDS", "main"]

#: command name -> (module, one-line help)
COMMANDS = {
    "demo": ("gradscope.demo", "train a small model under the monitor and write a TensorBoard run"),
    "report": ("gradscope.report", "per-layer tables and findings from TensorBoard runs written "
               "by gradscope"),
    "compare": ("gradscope.experiments.compare",
                "MNIST: activations × init × BatchNorm under the monitor; table, plots, TensorBoard"),
    "preset": ("gradscope.experiments.preset_cmd",
               "MNIST: re-run a classic result (glorot2010, he2015, ioffe2015, dying_relu) with a verdict"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command configured."""
    from gradscope import __version__

    parser = argparse.ArgumentParser(
        prog="gradscope",
        description="See why your network trains badly: per-layer activation and gradient "
        "diagnostics for PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"gradscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module_name).configure(p)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``gradscope`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
