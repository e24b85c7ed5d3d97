"""Monitors still open when the interpreter exits are closed while it is whole.

Left to the garbage collector during interpreter finalization, a monitor's last
flush ran its across-rank collective after Python had started tearing down: gloo's
worker thread, waiting for the GIL to free the collective's tensors, aborted the
process under ``torchrun`` ("terminate called without an active exception"), and the
TensorBoard writer's thread was cut off with the last steps unwritten. Here an
``atexit`` handler closes every open monitor first, in the order they were made, so
that every rank's last collectives match (``benchmarks/torchrun_exit.py`` counts the
aborts; ``tests/test_distributed.py`` runs a careless script under torchrun).

Example:
    >>> class Closable:
    ...     def close(self) -> None:
    ...         print("closed")
    >>> c = Closable()
    >>> opened(c)
    >>> close_open()
    closed
"""

from __future__ import annotations

import atexit
import itertools
import warnings
import weakref
from typing import Any

__all__ = ["close_open", "closed", "opened"]

_OPEN: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()  # -> creation order
_SERIAL = itertools.count()


def opened(monitor: Any) -> None:
    """Remember ``monitor`` (weakly) until :func:`closed`; it is closed at exit otherwise."""
    _OPEN[monitor] = next(_SERIAL)


def closed(monitor: Any) -> None:
    """Forget ``monitor``: it was closed."""
    _OPEN.pop(monitor, None)


@atexit.register
def close_open() -> None:
    """Close every remembered monitor, oldest first; report a failure, never raise."""
    for monitor, _ in sorted(_OPEN.items(), key=lambda item: item[1]):
        try:
            monitor.close()
        except Exception as e:  # at exit: report, never raise
            warnings.warn(f"gradscope: closing {monitor!r} at exit: {e}", RuntimeWarning,
                          stacklevel=1)
        closed(monitor)
