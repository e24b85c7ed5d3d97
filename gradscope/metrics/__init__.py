"""Metrics by name: every statistic gradscope records is one :class:`Metric` spec.

A spec says what the statistic means (``doc``), which **reductions** it reads
(computed on the tensor's own device inside a hook, each at most once per call,
see :mod:`gradscope.reductions`), how the host **finishes** it at the flush (a
division by an element or unit count, a ratio, a square root), which activation
**families** have it, and where it is shown: the TensorBoard custom-scalars
**section** and health chart, the ``gradscope report`` **column** and the
dashboard **image**. The hot path, the decoders, the TensorBoard layout,
``gradscope report`` and the figures all read these specs, so adding a metric
is one entry in :mod:`gradscope.metrics.catalogue` (plus a reduction in
:mod:`gradscope.reductions` if it needs a new one) and its test. The machinery (the
:class:`Metric` spec, kinds, sections, finishing helpers) is :mod:`gradscope.metrics.spec`;
the lookups and :func:`register` are :mod:`gradscope.metrics.registry`.

Kinds (where the values come from):

==============  ==============================================================
``activation``  one activation call: ``y`` (output) and ``x`` (input)
``window``      an activation call-site's unit window, updated at each step's end
``backprop``    the gradient flowing back into a call-site's output, ``∂L/∂y``
``grad_in``     the gradient the activation passes back to its input, ``∂L/∂x``
                (with respect to the pre-activation)
``parameter``   a parameter's gradient and weights (a layer combines its
                parameters as ``aggregate`` says)
``step``        model-wide, once per step (the GradScaler's ``skipped``, ``scale``)
``run``         one value per run and step from that step's per-layer values
                (:func:`gradscope.runlevel.run_values`: ``aggregate`` combines a
                need over the layers, ``finish`` the combined needs); written by
                the TensorBoard writer as ``0_health/<name>``, first in the layout
``gates``       a recurrent layer's gates and hidden states, replayed on sampled
                steps (:mod:`gradscope.recurrence`)
``through_time`` a recurrent layer's profile ``‖∂L/∂h_t‖`` over its time steps,
                summarised on the host (:func:`gradscope.recurrent_stats.profile_summary`)
==============  ==============================================================

Example:
    >>> from gradscope.metrics import METRICS, for_family
    >>> from gradscope.activations import FAMILIES
    >>> import torch.nn as nn
    >>> METRICS["grad_in_rms"].doc
    'grad_in_norm / sqrt(x.numel()): comparable across widths'
    >>> [m.name for m in for_family(FAMILIES[nn.Tanh], "activation")][-3:]
    ['saturation', 'small_deriv', 'mean_deriv']
"""

from gradscope.metrics.catalogue import METRICS
from gradscope.metrics.registry import (
    by_kind,
    columns,
    emitted,
    for_family,
    health,
    layer_values,
    register,
    series_kind,
)
from gradscope.metrics.spec import KINDS, SECTIONS, Metric, Shape, copies, ratio
from gradscope.metrics.spec import RUN_AGGREGATES as RUN_AGGREGATES
from gradscope.metrics.spec import Finish as Finish

__all__ = [
    "KINDS",
    "METRICS",
    "SECTIONS",
    "Metric",
    "Shape",
    "by_kind",
    "columns",
    "copies",
    "emitted",
    "for_family",
    "health",
    "layer_values",
    "ratio",
    "register",
    "series_kind",
]
