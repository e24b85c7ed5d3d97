"""What the framework callbacks share: options validated early, one monitor at a time."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from gradscope.history import History
from gradscope.monitor import Monitor
from gradscope.options import Options

__all__ = ["CallbackMonitor", "MonitorCallback"]

#: Options a callback finds in the framework itself.
FOUND = ("optimizer", "scaler")


class CallbackMonitor:
    """Validates ``watch`` options at construction; attaches and closes one monitor.

    Args:
        where: the callback's name, for error messages.
        options: :func:`gradscope.watch`'s keywords (``optimizer`` and ``scaler`` are
            found in the framework and may not be given).
    """

    def __init__(self, where: str, options: dict[str, Any]) -> None:
        given = sorted(set(options) & set(FOUND))
        if given:
            raise TypeError(f"{where}({given[0]}=...): the callback finds the {given[0]} in the "
                            "trainer; leave it out")
        Options.build(**options)  # every other option checked now, with watch()'s messages
        self.where = where
        self.options = options
        self.monitor: Optional[Monitor] = None

    def attach(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer],
               scaler: Optional[torch.amp.GradScaler], logdir: Optional[str]) -> Monitor:
        """Close a monitor left attached (a run that raised), then watch ``model``."""
        self.close()
        options = dict(self.options)
        if logdir is not None and "logdir" not in options and "sinks" not in options:
            options["logdir"] = logdir
        if scaler is not None and not scaler.is_enabled():
            scaler = None
        self.monitor = Monitor(model, optimizer=optimizer,
                               options=Options.build(scaler=scaler, **options)).attach()
        return self.monitor

    def close(self) -> None:
        """Flush, remove every hook and close the sinks (safe twice)."""
        monitor, self.monitor = self.monitor, None
        if monitor is not None:
            monitor.close()


class MonitorCallback:
    """What both callbacks hold: the options, the monitor while training, the last history.

    Mixed in before the framework's callback class, whose ``__init__`` takes nothing.
    """

    def __init__(self, **options: Any) -> None:
        self._monitor = CallbackMonitor(type(self).__name__, options)
        self.history: Optional[History] = None

    @property
    def monitor(self) -> Optional[Monitor]:
        """The monitor attached during training (``None`` otherwise)."""
        return self._monitor.monitor
