"""Writers: sinks that receive the monitor's records at each flush and only write them.

* :class:`Sink` and :class:`Record` (:mod:`gradscope.writers.base`): the base class
  every sink subclasses (optional methods are no-ops) and what it receives;
* :class:`TensorBoardWriter` writes a TensorBoard run (scalars, a custom-scalars
  layout, histograms, gradient-flow and unit-health images, findings as text)
  through ``torch.utils.tensorboard.SummaryWriter``;
* :class:`MemoryWriter` keeps everything it receives in lists (tests, notebooks).

``gradscope.watch(model, logdir="runs/x")`` creates a :class:`TensorBoardWriter`
for you and exposes it as ``monitor.writer``.

Example:
    >>> import torch, torch.nn as nn, gradscope
    >>> from gradscope.writers import MemoryWriter
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> mem = MemoryWriter()
    >>> with gradscope.watch(model, sinks=[mem], summary=False):
    ...     model(torch.randn(16, 4)).mean().backward()
    >>> ("1", "dead_units") in {(r.layer, r.metric) for r in mem.records}
    True
"""

from gradscope.writers.base import Record, Sink
from gradscope.writers.layout import scalar_tag
from gradscope.writers.memory import MemoryWriter
from gradscope.writers.tensorboard import TensorBoardWriter

__all__ = ["MemoryWriter", "Record", "Sink", "TensorBoardWriter", "scalar_tag"]
