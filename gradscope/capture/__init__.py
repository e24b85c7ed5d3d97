"""Where tensors come from: one module per source, all feeding the monitor's queue.

* :mod:`~gradscope.capture.base`: :class:`Context` and :class:`StepState`, what
  the captures share with the monitor;
* :mod:`~gradscope.capture.activation`: activation call-sites and what is
  recorded when one runs (forward statistics, the gradient flowing back, unit
  windows, histograms), whoever saw it run;
* :mod:`~gradscope.capture.modules`: forward hooks on activation modules;
* :mod:`~gradscope.capture.params`: parameters and the optimizer (gradient and
  weight norms, update ratios);
* :mod:`~gradscope.capture.recurrent`: ``nn.RNN``/``nn.LSTM``/``nn.GRU`` and
  recurrent cells (the gradient through time, gates and hidden states).

These are internal: use :func:`gradscope.watch`.
"""

from gradscope.capture.activation import ActivationRecorder, Site
from gradscope.capture.base import Context, StepState
from gradscope.capture.modules import ModuleCapture
from gradscope.capture.params import ParamCapture
from gradscope.capture.recurrent import RecurrentCapture

__all__ = ["ActivationRecorder", "Context", "ModuleCapture", "ParamCapture", "RecurrentCapture",
           "Site", "StepState"]
