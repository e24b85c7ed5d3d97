"""gradscope: see why a network trains badly.

``gradscope.watch(model)`` hooks any ``torch.nn`` model and records, per layer and
per step, activation saturation, dead units, activation moments, gradient norms
(parameters and the back-propagated signal), update/weight ratios and non-finite
values, computed on the device and moved to the host in one transfer per flush.

The public modules are this package's names below, :mod:`gradscope.writers`,
:mod:`gradscope.findings`, :mod:`gradscope.metrics` (the metric specs),
:mod:`gradscope.activations` (the family registry), :mod:`gradscope.history`,
:mod:`gradscope.schedules` and :mod:`gradscope.report`; :mod:`gradscope.capture`,
:mod:`gradscope.reductions`, :mod:`gradscope.queue` and :mod:`gradscope.stats`
are the implementation.

Example:
    >>> import torch, torch.nn as nn, gradscope
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> with gradscope.watch(model) as mon:
    ...     model(torch.randn(32, 4)).mean().backward()
    >>> "dead_units" in mon.history.metrics("1")
    True
"""

from gradscope._version import __version__
from gradscope.activations import ActivationFamily, family_of, register_family
from gradscope.api import watch
from gradscope.findings import Thresholds
from gradscope.history import History, LayerInfo, Retention
from gradscope.monitor import Monitor
from gradscope.options import Definitions
from gradscope.records import Coverage, Finding, Record
from gradscope.schedules import every, log_schedule
from gradscope.writers.base import Sink

__all__ = [
    "ActivationFamily",
    "Coverage",
    "Definitions",
    "Finding",
    "History",
    "LayerInfo",
    "Monitor",
    "Record",
    "Retention",
    "Sink",
    "Thresholds",
    "__version__",
    "every",
    "family_of",
    "log_schedule",
    "register_family",
    "watch",
]
