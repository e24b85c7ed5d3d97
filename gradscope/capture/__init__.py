"""Where tensors come from: one module per source, all feeding the monitor's queue.

* :mod:`~gradscope.capture.base`: :class:`Context` and :class:`StepState`, what
  the captures share with the monitor;
* :mod:`~gradscope.capture.activation`: activation call-sites and what is
  recorded when one runs (forward statistics, the gradients flowing back, unit
  windows, histograms), whoever saw it run;
* :mod:`~gradscope.capture.nancheck`: the every-step NaN/Inf check of unsampled steps
  (held activation outputs, the model's outputs);
* :mod:`~gradscope.capture.site`: the activation call-site (:class:`Site`) both of them hold;
* :mod:`~gradscope.capture.forward`: the forward in progress (call indices, the
  running modules, the layouts that decide unit dimensions);
* :mod:`~gradscope.capture.modules`: hooks on activation modules;
* :mod:`~gradscope.capture.functional`: functional activations (``F.relu``,
  ``x.sigmoid()``), seen by a ``TorchFunctionMode`` during monitored forwards;
* :mod:`~gradscope.capture.coverage`: what is and is not seen, reported once;
* :mod:`~gradscope.capture.compiled`: the sampled steps of a ``torch.compile``'d
  model run eagerly (``force_eager``), so that its activations are seen;
* :mod:`~gradscope.capture.params`: parameters and the optimizer (gradient and
  weight norms, update ratios);
* :mod:`~gradscope.capture.recurrent`: ``nn.RNN``/``nn.LSTM``/``nn.GRU`` and
  recurrent cells (the gradient through time, gates and hidden states), the cells'
  hooks in :mod:`~gradscope.capture.cells`;
* :mod:`~gradscope.capture.scaler`: a ``torch.amp.GradScaler`` (the scale, skipped steps);
* :mod:`~gradscope.capture.step`: what a step is (the root, backward and optimizer
  hooks the monitor registers); what happens at its end is :mod:`gradscope.flush`'s.

Captures only hook, reduce and defer to the queue (:attr:`Context.queue
<gradscope.capture.base.Context.queue>`, layers declared there too): none writes to a
sink or to the history.

These are internal: use :func:`gradscope.watch`.
"""

from gradscope.capture.activation import ActivationRecorder, Site
from gradscope.capture.base import Context, StepState
from gradscope.capture.coverage import Coverage, CoverageTracker
from gradscope.capture.forward import Forward
from gradscope.capture.functional import FunctionalCapture
from gradscope.capture.modules import ModuleCapture
from gradscope.capture.params import ParamCapture
from gradscope.capture.recurrent import RecurrentCapture

__all__ = ["ActivationRecorder", "Context", "Coverage", "CoverageTracker", "Forward",
           "FunctionalCapture", "ModuleCapture", "ParamCapture", "RecurrentCapture", "Site",
           "StepState"]
