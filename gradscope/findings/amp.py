"""The GradScaler's rule: skipped steps are information, not an error.

Under mixed precision a ``torch.amp.GradScaler`` skips the optimizer step when the
scaled gradients overflowed, halves the scale and goes on: a few skips while the
scale settles (and one every ``growth_interval`` steps after it grows) are how it
works. The monitor records them in the series ``scaler`` (``skipped``, ``scale``);
this rule reports them as ``info``, and the ``nonfinite`` rule ignores the
gradients of those steps.

Example:
    >>> from gradscope.history import History
    >>> h = History()
    >>> for step in range(1000):
    ...     h.add(step, "scaler", "skipped", float(step in (0, 1, 700)))
    >>> print(scaler_skipped(h, Thresholds())[0].message)
    GradScaler skipped 3 of 1,000 steps (first at step 0); normal while the scale settles or after a rare overflow
"""

from __future__ import annotations

from typing import Any, Optional

from gradscope.findings.thresholds import Finding, Thresholds
from gradscope.history import History
from gradscope.records import SCALER_SERIES

__all__ = ["SCALER_SERIES", "SKIPPED_RUN", "scaler_skipped", "skipped_steps"]

#: Trailing steps in a row a GradScaler must skip before ``scaler_skipped`` is a warning:
#: each skip halves the scale, so 10 in a row took the default 65,536 below 100; the
#: gradients overflow at every scale, which no longer is the scale settling.
SKIPPED_RUN = 10


def skipped_steps(history: History) -> set[int]:
    """The steps a GradScaler skipped (its ``skipped`` series is 1)."""
    if "skipped" not in history.metrics(SCALER_SERIES):
        return set()
    steps, values = history.series(SCALER_SERIES, "skipped")
    return {s for s, v in zip(steps, values) if v > 0}


def scaler_skipped(history: History, t: Thresholds, scan: Optional[Any] = None) -> list[Finding]:
    """Steps a GradScaler skipped: informational, unless it skips every step.

    Reads the ``skipped`` series whole (``scan`` is not needed: the history keeps
    it bounded, see :class:`gradscope.history.Retention`); when older points were
    thinned the message counts only the steps kept, and says so.
    """
    skipped = skipped_steps(history)
    if not skipped:
        return []
    steps, values = history.series(SCALER_SERIES, "skipped")
    scale = ""
    if "scale" in history.metrics(SCALER_SERIES):
        scale = f", scale {history.value(SCALER_SERIES, 'scale'):g} at the last step"
    first = min(skipped)
    run = 0  # the trailing run of skipped steps
    while run < len(values) and values[len(values) - 1 - run] > 0:
        run += 1
    if run >= SKIPPED_RUN:
        since = steps[len(steps) - run]
        remedy = ("look at the nonfinite values of the activations and the gradients of those "
                  "steps, lower the learning rate, or train in bf16 instead of fp16")
        return [Finding(
            "warning", "scaler_skipped", None, since,
            f"GradScaler skipped every step since step {since} ({run} in a row{scale}): the "
            f"gradients overflow at every scale; {remedy}",
            remedy, float(len(skipped)), steps[-1])]
    thinned = history.added(SCALER_SERIES, "skipped") - len(steps)
    of = (f"{len(steps):,} steps kept in memory (older ones thinned; the TensorBoard run "
          f"has every step)" if thinned else f"{len(steps):,} steps")
    return [Finding(
        "info", "scaler_skipped", None, first,
        f"GradScaler skipped {len(skipped):,} of {of} (first at step {first}"
        f"{scale}); normal while the scale settles or after a rare overflow",
        "", float(len(skipped)), steps[-1])]
