"""Writers: sinks that receive the monitor's records at each flush and only write them.

* :class:`TensorBoardWriter` writes a TensorBoard run (scalars, a custom-scalars
  layout, histograms, gradient-flow and unit-health images, findings as text)
  through ``torch.utils.tensorboard.SummaryWriter``.
* :class:`MemoryWriter` keeps everything it receives in lists (tests, notebooks).

``gradscope.watch(model, logdir="runs/x")`` creates a :class:`TensorBoardWriter`
for you and exposes it as ``monitor.writer``.

Example:
    >>> import torch, torch.nn as nn, gradscope
    >>> from gradscope.writers import MemoryWriter
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> mem = MemoryWriter()
    >>> with gradscope.watch(model, sinks=[mem]):
    ...     model(torch.randn(16, 4)).mean().backward()
    >>> ("1", "dead_units") in {(r[1], r[2]) for r in mem.records}
    True
"""

from gradscope.writers.memory import MemoryWriter
from gradscope.writers.tensorboard import TensorBoardWriter, scalar_tag

__all__ = ["MemoryWriter", "TensorBoardWriter", "scalar_tag"]
