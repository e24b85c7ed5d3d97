"""The finding and its thresholds: what a rule reports, and what it compares against."""

from __future__ import annotations

from dataclasses import dataclass, fields

from gradscope.records import Finding

__all__ = ["SEVERITIES", "Finding", "Thresholds", "threshold_names"]

#: Severities, most serious first.
SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Thresholds:
    """The thresholds of the rules in :mod:`gradscope.findings`; every one can be changed.

    Args:
        window: a condition fires only when it holds on the last ``window``
            recorded steps of a series (all of them when fewer were recorded).
        vanishing_ratio: ``vanishing_gradients`` when the first layer's gradient
            RMS is below this fraction of the last layer's (1e-2: two decades).
        exploding_ratio: ``exploding_gradients`` when the first layer's gradient
            RMS is above this multiple of the last layer's.
        exploding_growth: ``exploding_gradients`` when the total gradient norm
            exceeds this multiple of its median over the first ``window`` records.
        saturation: ``saturation`` when more than this fraction of a call-site's
            outputs lie within ``eps`` of the activation's limits.
        dead_units: ``dead_units`` when more than this fraction of a ReLU
            call-site's units are dead (``dead_units_window`` when recorded, i.e.
            never positive during the monitor's ``dead_window``; else per batch).
        dead_growth: ``dead_units_growing`` when the dead fraction rose by at
            least this much since the first record (and is not yet a ``dead_units``).
        scale_collapse: ``activation_collapse`` when the activation std of the
            deepest call-site is below this fraction of the first call-site's.
        scale_blowup: ``activation_blowup`` when it is above this multiple.
        update_ratio_low: ``update_ratio_low`` when a layer's ``‖Δw‖/‖w‖`` per step
            is below this (the common rule of thumb is about 1e-3).
        update_ratio_high: ``update_ratio_high`` when it is above this.
        update_settle: the update-ratio rules judge a layer only from this many steps
            after its first record on. In the first steps the ratio tells the start,
            not the learning rate: the weights are their initialisation and the
            gradients the run's largest, Adam's first steps are about ``lr`` per weight
            whatever the gradient, momentum builds up over ``1/(1-β)`` steps, and a
            weight followed by a normalisation is scale-invariant: its ratio is an
            angle that shrinks as ``‖w‖`` grows. Healthy runs measured above 1e-1 there
            and below it after: resnet18's ``conv1`` (0.62 at step 0, SGD lr 0.05,
            momentum 0.9) and ``fc`` (to step 18), a 3×256 ReLU MLP's output layer at SGD
            lr 0.5 (to step 35); ``0`` judges every step.

    Example:
        >>> Thresholds(dead_units=0.5).dead_units
        0.5
        >>> Thresholds(saturation=2)
        Traceback (most recent call last):
        ...
        ValueError: Thresholds(saturation=2): a fraction must be in (0, 1), e.g. 0.3
    """

    window: int = 3
    vanishing_ratio: float = 1e-2
    exploding_ratio: float = 1e2
    exploding_growth: float = 1e2
    saturation: float = 0.3
    dead_units: float = 0.3
    dead_growth: float = 0.2
    scale_collapse: float = 1e-2
    scale_blowup: float = 1e2
    update_ratio_low: float = 1e-5
    update_ratio_high: float = 1e-1
    update_settle: int = 100

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 1:
            raise ValueError(f"Thresholds(window={self.window!r}): must be an int >= 1")
        settle = self.update_settle
        if not isinstance(settle, int) or isinstance(settle, bool) or settle < 0:
            raise ValueError(f"Thresholds(update_settle={settle!r}): must be an int >= 0 "
                             "(steps), e.g. 100")
        for name in ("saturation", "dead_units", "dead_growth"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ValueError(f"Thresholds({name}={v!r}): a fraction must be in (0, 1), e.g. 0.3")
        for name in ("vanishing_ratio", "scale_collapse"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ValueError(f"Thresholds({name}={v!r}): must be in (0, 1), e.g. 1e-2")
        for name in ("exploding_ratio", "exploding_growth", "scale_blowup"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v > 1:
                raise ValueError(f"Thresholds({name}={v!r}): must be > 1, e.g. 100")
        lo, hi = self.update_ratio_low, self.update_ratio_high
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0 < lo < hi):
            raise ValueError(
                f"Thresholds(update_ratio_low={lo!r}, update_ratio_high={hi!r}): need "
                "0 < low < high, e.g. 1e-5 and 1e-1")



def threshold_names() -> list[str]:
    """Names of the configurable thresholds (the fields of :class:`Thresholds`)."""
    return [f.name for f in fields(Thresholds)]
