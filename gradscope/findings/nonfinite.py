"""The ``nonfinite`` rule: the first NaN/Inf of the run, and where it appeared first.

It reads each series' first alarm (:meth:`gradscope.History.alarm`, kept through
the history's thinning), so its cost is the number of series, not of values. A
non-finite value is an alarm, not an episode: it is reported from its first step
on and never resolves.
"""

from __future__ import annotations

import math
from typing import Optional

from gradscope.findings.amp import skipped_steps
from gradscope.findings.scan import Scan
from gradscope.findings.thresholds import Finding, Thresholds
from gradscope.history import History

__all__ = ["nonfinite"]


_NONFINITE_REMEDY = ("lower the learning rate, clip gradients (torch.nn.utils.clip_grad_norm_), "
                     "look for log(0) or division by zero in the loss, and under fp16 use a "
                     "GradScaler or bf16")
#: Where a non-finite value can show: (kind, metric, where); the ``*_check`` metrics
#: come from the every-step check of unsampled steps.
_NONFINITE_SERIES = (("activation", "nonfinite", "forward"),
                     ("activation", "nonfinite_check", "forward"),
                     ("step", "output_nonfinite", "output"),
                     ("activation", "grad_out_nonfinite", "backward"),
                     ("layer", "grad_nonfinite", "parameter"),
                     ("layer", "grad_nonfinite_check", "parameter"),
                     ("layer", "weight_norm", "weights"))


# -------------------------------------------------------------------- rules
def nonfinite(history: History, t: Thresholds, scan: Optional[Scan] = None) -> list[Finding]:
    """The first step with a non-finite value, and the layer it appeared at first.

    Reads each series' first alarm (:meth:`History.alarm`, kept through thinning):
    its cost is the number of series, not of values. Steps a GradScaler skipped
    (inf gradients are expected there) do not count for gradients; only then is
    the series read further, for its first bad value at a step that was not skipped.
    """
    found: list[tuple[int, str, str, str]] = []
    skipped = skipped_steps(history)
    for kind, metric, where in _NONFINITE_SERIES:
        for layer in history.layers(kind):
            if metric not in history.metrics(layer):
                continue
            if scan is not None:
                scan.reads += 1
            alarm = history.alarm(layer, metric)
            if alarm is None:
                continue
            if alarm[0] in skipped and where in ("backward", "parameter"):
                steps, values = history.series(layer, metric)
                later = [s for s, v in zip(steps, values)
                         if s not in skipped and (v > 0 or math.isnan(v))]
                if not later:
                    continue
                alarm = (later[0], *alarm[1:])
            found.append((alarm[0], layer, where, metric))
    if not found:
        return []
    first = min(s for s, *_ in found)
    hits: dict[str, list[tuple[str, str]]] = {"forward": [], "output": [], "backward": [],
                                              "parameter": [], "weights": []}
    for s, layer, where, metric in found:
        if s == first:
            hits[where].append((layer, metric))
    if hits["forward"]:
        (layer, metric), what = hits["forward"][0], "in the forward pass (activations)"
    elif hits["backward"]:
        # The backward pass runs from the output: the deepest call-site sees it first.
        (layer, metric), what = hits["backward"][-1], "in the backward pass (gradients reaching it)"
    elif hits["parameter"]:
        (layer, metric), what = hits["parameter"][-1], "in parameter gradients"
    elif hits["output"]:  # neither an activation output nor a gradient was
        (layer, metric), what = hits["output"][0], ("in the model's output (no activation "
                                                    "output or gradient was)")
    else:
        (layer, metric), what = hits["weights"][0], "in the weights"
    how = (" (an unsampled step: found by the every-step check, which sees that a value is "
           "not finite but does not count them)") if metric.endswith("_check") else ""
    return [Finding("error", "nonfinite", layer, first,
                    f"first NaN/Inf at step {first}{how} {what}, at layer {layer}; "
                    f"{_NONFINITE_REMEDY}", _NONFINITE_REMEDY, last_step=first)]
