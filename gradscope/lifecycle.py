"""Monitors still open when the interpreter exits are closed while it is whole.

Left to the garbage collector during interpreter finalization, a monitor's last
flush ran its across-rank collective after Python had started tearing down: gloo's
worker thread, waiting for the GIL to free the collective's tensors, aborted the
process under ``torchrun`` ("terminate called without an active exception"), and the
TensorBoard writer's thread was cut off with the last steps unwritten. Here an
``atexit`` handler closes every open monitor first, in the order they were made, so
that every rank's last collectives match (``benchmarks/torchrun_exit.py`` counts the
aborts; ``tests/test_distributed.py`` runs a careless script under torchrun).

A second abort is PyTorch's own (torch 2.14, gloo): a collective's work object holds
the Python context of the thread that made it, and the communication thread that ran
it drops it last; when that thread only gets to do so after finalization has begun, it
is killed taking the GIL and the process aborts the same way. A DDP script that calls
``destroy_process_group()`` and exits aborts in about half of its runs on 2 busy cores
with no gradscope at all (``benchmarks/torchrun_exit.py --scenarios torch-destroy``).
After closing the monitors, when a process group was ever seen, the exit handler gives
those threads a few short windows without the GIL (at most :data:`SETTLE_S` seconds) so
they finish while the interpreter is whole.

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
import time
import warnings
import weakref
from typing import Any

__all__ = ["SETTLE_S", "close_open", "closed", "opened"]

#: Seconds at most the exit handler leaves to communication threads (in short sleeps).
SETTLE_S = 0.05
_OPEN: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()  # -> creation order
_SERIAL = itertools.count()


_SAW_PROCESS_GROUP = False


def opened(monitor: Any) -> None:
    """Remember ``monitor`` (weakly) until :func:`closed`; it is closed at exit otherwise."""
    global _SAW_PROCESS_GROUP
    _OPEN[monitor] = next(_SERIAL)
    _SAW_PROCESS_GROUP = _SAW_PROCESS_GROUP or _process_group_up()


def _process_group_up() -> bool:
    try:
        import torch.distributed as dist

        return bool(dist.is_available() and dist.is_initialized())
    except Exception:  # an odd build: no process group to wait for
        return False


def settle() -> None:
    """Leave communication threads :data:`SETTLE_S` seconds without the GIL, in steps."""
    for _ in range(5):
        time.sleep(SETTLE_S / 5)


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
    if _SAW_PROCESS_GROUP or _process_group_up():
        settle()
