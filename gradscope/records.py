"""The values that travel through gradscope: :class:`Record`, :class:`Finding`, :class:`Coverage`.

Every stage passes these on (capture -> queue -> history -> sinks, rules -> sinks),
so they sit at the bottom of the package: this module imports nothing of gradscope.
The public names are re-exported where users find them (``gradscope.Record``,
``gradscope.writers.Record``, ``gradscope.Finding``, ``gradscope.findings.Finding``,
``gradscope.Coverage``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

__all__ = ["SCALER_SERIES", "Coverage", "Finding", "Record", "counted", "record"]

#: The series of a GradScaler's per-step records (``skipped``, ``scale``): written by
#: :mod:`gradscope.capture.scaler`, read by :mod:`gradscope.findings.amp`.
SCALER_SERIES = "scaler"


class Record(NamedTuple):
    """One flushed value of one series. A plain tuple: ``step, layer, metric, value = r``."""

    step: int
    layer: str
    metric: str
    value: float


def record(step: int, layer: str, metric: str, value: float) -> Record:
    """``Record(step, layer, metric, value)`` without the keyword handling (a flush makes many)."""
    return _tuple_new(Record, (step, layer, metric, value))


_tuple_new = tuple.__new__


@dataclass(frozen=True)
class Finding:
    """One diagnosis: an episode of a rule's condition, holding now or resolved.

    A finding is kept for the whole run: when its condition stops holding (on
    ``Thresholds.window`` points in a row) it stays in ``mon.findings()``, the
    closing summary and ``gradscope report``, marked ``resolved``, with the steps it
    held over and its worst value.

    Args:
        severity: ``"error"`` (training is broken), ``"warning"`` (likely hurts
            training) or ``"info"`` (a trend worth watching).
        rule: the rule that fired (a key of :data:`gradscope.findings.RULES`).
        layer: the layer or call-site it concerns (``None`` for the whole model).
        first_step: the step the condition has held since -- the first step of the
            episode (for ``nonfinite``, the first step a non-finite value was seen).
        message: one line: what is wrong, where, since when, and the usual remedy.
        remedy: the remedy part of the message on its own.
        value: the measured value the rule compared with its threshold.
        last_step: the latest step the rule looked at; for a resolved finding, the
            last step the condition held.
        resolved: the condition held from ``first_step`` to ``last_step`` and no
            longer holds.
        worst: the value furthest past the threshold over the episode (NaN when
            the rule does not track one).
        worst_step: the step of ``worst`` (-1 when not tracked).
        episodes: how many episodes this finding stands for: a resolved finding
            tells every episode of its rule and layer that no longer holds (from
            ``first_step`` to ``last_step``, each listed in the message).
    """

    severity: str
    rule: str
    layer: Optional[str]
    first_step: int
    message: str
    remedy: str = ""
    value: float = math.nan
    last_step: int = -1
    resolved: bool = False
    worst: float = math.nan
    worst_step: int = -1
    episodes: int = 1

    def __str__(self) -> str:
        return f"[{self.severity}] {self.rule}: {self.message}"


@dataclass(frozen=True)
class Coverage:
    """What gradscope sees of a model's activations (``mon.coverage()``).

    Attributes:
        step: the step it describes (the first monitored one).
        by_module: call-sites captured by hooks on activation modules.
        by_function: call-sites captured as functional calls (``F.relu``, ``x.tanh()``).
        unknown: class names of parameterless leaf modules that look like activations
            but have no family (and in which no functional activation was seen).
        unseen: activations no hook can see, one line each.
        no_grad_in: call-sites whose ``grad_in_*`` cannot be read exactly (the
            activation is not one autograd operation, like Softsign).
        replayed: fused modules whose insides another capture records (the recurrent
            capture's ``nn.LSTM``/``nn.GRU``/``nn.RNN`` gates).

    Example:
        >>> import torch, torch.nn as nn, torch.nn.functional as F, gradscope
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc, self.act = nn.Linear(4, 4), nn.Tanh()
        ...     def forward(self, x):
        ...         return F.relu(self.act(self.fc(x)))
        >>> net = Net()
        >>> with gradscope.watch(net, summary=False) as mon:
        ...     net(torch.randn(2, 4)).sum().backward()
        >>> mon.coverage().line()
        'gradscope: 2 activation call-sites captured (1 by module, 1 by function)'
    """

    step: int
    by_module: int
    by_function: int
    unknown: tuple[str, ...] = ()
    unseen: tuple[str, ...] = ()
    no_grad_in: tuple[str, ...] = ()
    replayed: tuple[str, ...] = ()

    @property
    def captured(self) -> int:
        """Every captured call-site."""
        return self.by_module + self.by_function

    def fixes(self) -> list[str]:
        """One ``register_family`` line per unknown module class."""
        return [f"gradscope.register_family({name}, gradscope.activations.FAMILIES[nn.X]) "
                "with nn.X the activation it behaves like" for name in self.unknown]

    def line(self) -> str:
        """The one-line summary printed to stderr."""
        parts = [f"gradscope: {counted(self.captured, 'activation call-site')} captured "
                 f"({self.by_module} by module, {self.by_function} by function)"]
        if self.replayed:
            parts.append("recurrent gates replayed in: " + ", ".join(self.replayed))
        if self.unseen:
            parts.append("not seen: " + "; ".join(self.unseen))
        if self.unknown:
            parts.append("unknown activation modules: " + ", ".join(self.unknown)
                         + " (teach gradscope one with gradscope.register_family)")
        if self.no_grad_in:
            parts.append("grad_in_* not measured (not one autograd op) at: "
                         + ", ".join(self.no_grad_in))
        return "; ".join(parts)

    def markdown(self) -> str:
        """The report as markdown (TensorBoard's ``gradscope/coverage`` text)."""
        lines = [f"**{counted(self.captured, 'activation call-site')}** captured at step {self.step}: "
                 f"{self.by_module} by module hooks, {self.by_function} as functional calls.", ""]
        if self.replayed:
            lines += ["Recurrent gates replayed (fused kernels, recorded by the recurrent "
                      "capture): " + ", ".join(f"`{n}`" for n in self.replayed), ""]
        if self.unseen:
            lines += ["Not seen (fused into one kernel, no hook can see inside):", ""]
            lines += [f"* {u}" for u in self.unseen] + [""]
        if self.unknown:
            lines += ["Modules that look like activations but have no family:", ""]
            lines += [f"* `{n}`: `{fix}`" for n, fix in zip(self.unknown, self.fixes())] + [""]
        if self.no_grad_in:
            lines += ["`grad_in_*` not measured (the activation is not one autograd op): "
                      + ", ".join(f"`{n}`" for n in self.no_grad_in)]
        return "\n".join(lines).rstrip() + "\n"


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: ``counted(1, "finding")`` is ``"1 finding"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
