"""The ``gradscope`` command line: one sub-command per module.

Each sub-command lives in its own module, which defines ``configure(parser)`` (add
arguments), ``run(args) -> int`` (the exit code), ``HELP`` (one line, or
``help_text()`` where it depends on a registry) and ``EXAMPLES`` (the Examples block
of its ``--help``).

An unknown option of a sub-command (``gradscope report runs --fromat json``) is
reported by that sub-command, with the closest valid option (``did you mean
--format?``), as :func:`gradscope.watch` does for its options.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
import textwrap
from collections.abc import Sequence
from types import ModuleType
from typing import Optional

__all__ = ["COMMANDS", "EXAMPLES", "build_parser", "main"]

#: command name -> its module
COMMANDS = {
    "demo": "gradscope.demo",
    "report": "gradscope.report",
    "compare": "gradscope.experiments.compare",
    "preset": "gradscope.experiments.preset_cmd",
}

DESCRIPTION = ("See why your network trains badly: per-layer activation and gradient "
               "diagnostics for PyTorch. `gradscope COMMAND --help` describes each command.")

EXAMPLES = """\
examples:
  gradscope demo                          # a sigmoid and a ReLU net side by side, offline
  tensorboard --logdir runs/demo          # their dashboards
  gradscope report runs/demo              # the same numbers as tables, worst run first
  gradscope compare --quick               # MNIST: 5 activations x 3 inits x BatchNorm (30 runs)
  gradscope preset --list                 # the classic results that `preset` re-runs
  gradscope preset glorot2010 --quick     # one of them, with its verdict
"""


def _help(module: ModuleType) -> str:
    """A command's one-line help: its module's ``help_text()`` or ``HELP``."""
    text = getattr(module, "help_text", None)
    return text() if callable(text) else str(module.HELP)


def _wrap(text: str) -> str:
    """``text`` filled to 79 columns (a raw formatter does not wrap descriptions)."""
    return textwrap.fill(text, 79)


def _parsers(parser: argparse.ArgumentParser) -> dict[Optional[str], argparse.ArgumentParser]:
    """The top-level parser (key ``None``) and each sub-command's, by name."""
    found: dict[Optional[str], argparse.ArgumentParser] = {None: parser}
    for action in parser._actions:  # argparse has no public accessor for sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """Every long option string of ``parser`` (``--format``, ...)."""
    return [s for a in parser._actions for s in a.option_strings if s.startswith("--")]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command configured."""
    from gradscope import __version__

    parser = argparse.ArgumentParser(
        prog="gradscope", description=_wrap(DESCRIPTION), epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gradscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        help_text = _help(module)
        p = sub.add_parser(name, help=help_text, description=_wrap(help_text),
                           epilog=module.EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure(p)
    return parser


def _unknown(parser: argparse.ArgumentParser, extra: list[str]) -> str:
    """The error for unrecognised arguments, with the closest option of ``parser``."""
    valid = _options(parser)
    flags = [t.split("=", 1)[0] for t in extra if t.startswith("--")]
    close = {f: difflib.get_close_matches(f, valid, n=1) for f in flags}
    hints = [(f, c[0]) for f, c in close.items() if c]
    message = f"unrecognized arguments: {' '.join(extra)}"
    if len(hints) == 1:
        return f"{message}; did you mean {hints[0][1]}?"
    if hints:
        return message + "; " + "; ".join(f"{f}: did you mean {c}?" for f, c in hints)
    return f"{message}; the options are: {', '.join(valid)}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``gradscope`` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the command they were given to, which exits with status 2
        owner = _parsers(parser)[args.command]
        owner.error(_unknown(owner, extra))
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
