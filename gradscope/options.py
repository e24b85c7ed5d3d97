"""The options of :func:`gradscope.watch`, validated once, grouped by concern.

* sampling: ``every``, ``flush_every``;
* definitions (:class:`Definitions`): ``eps``, ``delta``, ``dead_window``, ``unit_dim``;
* what to record: ``activations``, ``backprop``, ``gradients``, ``update_ratio``,
  ``record_eval``, ``include``, ``histogram_every``, ``histogram_bins``,
  ``check_nonfinite``, ``retention``, ``start_step``;
* outputs: ``sinks``, ``logdir``, ``resume``, ``overwrite``, ``findings``, ``summary``, ``strict``;
* how: ``fused`` (the Triton statistics kernels on CUDA), ``sampled_eager`` (a compiled model's
  sampled steps run eagerly);
* training stack: ``scaler`` (a ``torch.amp.GradScaler``), ``combine_ranks``.

Every error names the argument, shows the value and says the fix.

Example:
    >>> Definitions(eps=0.05).eps
    0.05
    >>> Options.build(flush_evry=3)
    Traceback (most recent call last):
    ...
    TypeError: watch() got an unexpected option 'flush_evry'; did you mean 'flush_every'?
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from gradscope.findings import Thresholds
from gradscope.history import DEFAULT_RETENTION, Retention
from gradscope.schedules import Schedule, as_schedule
from gradscope.writers.base import Sink, as_sink

__all__ = ["Definitions", "Include", "Options", "check_model"]

Include = Union[str, Sequence[str], Callable[[str, nn.Module], bool], None]


# ------------------------------------------------------------------ checks
def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"watch({name}={value!r}): must be an int >= {low}")


def _check_open_unit(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
        raise ValueError(f"watch({name}={value!r}): must be a number in (0, 1), e.g. 0.01")



@dataclass(frozen=True)
class Definitions:
    """What the activation statistics mean: tolerances and windows.

    Args:
        eps: saturation tolerance: an output within ``eps`` of its family's limit
            is saturated.
        delta: a local derivative ``f'(x) < delta`` is "small" (``small_deriv``).
        dead_window: a ReLU unit is dead over the window when it was not positive on
            any sampled step of the last ``dead_window`` steps.
        unit_dim: the dimension that indexes units for the dead-unit statistics;
            ``None``: the last one for rank <= 3, 1 (channels) for rank 4-5.

    Example:
        >>> import gradscope
        >>> gradscope.Definitions(eps=0.05, dead_window=500).dead_window
        500
    """

    eps: float = 0.01
    delta: float = 0.01
    dead_window: int = 100
    unit_dim: Optional[int] = None

    def __post_init__(self) -> None:
        _check_open_unit("eps", self.eps)
        _check_open_unit("delta", self.delta)
        _check_int("dead_window", self.dead_window, 1)
        if self.unit_dim is not None and (not isinstance(self.unit_dim, int)
                                          or isinstance(self.unit_dim, bool)):
            raise TypeError(f"watch(unit_dim={self.unit_dim!r}): pass an int (a dimension "
                            "index, negative counts from the end) or None for the default")


_DEFAULT_DEFINITIONS = Definitions()


#: The old ``fused=`` strings (the torch.compile path) and what they mean now.
_OLD_FUSED = {"off": False, "on": True, "strict": True}


@dataclass(frozen=True)
class Options:
    """Every option of :func:`gradscope.watch` (see its docstring), validated.

    Build one with :meth:`build`, which takes the flat keywords of ``watch``.
    """

    every: Union[int, Schedule] = 1
    flush_every: int = 50
    definitions: Definitions = _DEFAULT_DEFINITIONS
    activations: bool = True
    backprop: bool = True
    gradients: bool = True
    update_ratio: bool = True
    record_eval: bool = False
    include: Include = None
    histogram_every: Union[int, Schedule, None] = 500
    histogram_bins: int = 64
    check_nonfinite: Union[bool, str] = True
    retention: Optional[Retention] = DEFAULT_RETENTION
    start_step: int = 0
    sinks: tuple[Sink, ...] = ()
    logdir: Union[str, os.PathLike, None] = None
    resume: bool = False
    overwrite: bool = False
    findings: Union[bool, Thresholds] = True
    summary: bool = True
    strict: bool = False
    fused: bool = True
    sampled_eager: bool = True
    scaler: Optional[torch.amp.GradScaler] = None
    combine_ranks: bool = True
    schedule: Schedule = field(init=False, repr=False)
    histogram_schedule: Optional[Schedule] = field(init=False, repr=False)
    include_fn: Callable[[str, nn.Module], bool] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "schedule", as_schedule(self.every, name="every"))
        _check_int("flush_every", self.flush_every, 1)
        if not isinstance(self.definitions, Definitions):
            raise TypeError(f"watch(definitions={self.definitions!r}): pass "
                            "gradscope.Definitions(eps=..., delta=..., dead_window=..., unit_dim=...)")
        if not (isinstance(self.check_nonfinite, bool) or self.check_nonfinite == "all"):
            raise TypeError(f"watch(check_nonfinite={self.check_nonfinite!r}): pass True (each "
                            "unsampled step: the model's outputs, then its activations when an "
                            "output is not finite), 'all' (each activation output at its call) "
                            "or False")
        for name in ("activations", "backprop", "gradients", "update_ratio", "record_eval",
                     "resume", "overwrite", "summary", "strict", "sampled_eager",
                     "combine_ranks"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"watch({name}={value!r}): pass True or False")
        set_(self, "histogram_schedule", None if self.histogram_every is None
             else as_schedule(self.histogram_every, name="histogram_every"))
        _check_int("histogram_bins", self.histogram_bins, 1)
        set_(self, "include_fn", _make_filter(self.include))
        if not isinstance(self.findings, (bool, Thresholds)):
            raise TypeError(f"watch(findings={self.findings!r}): pass True, False or a "
                            "gradscope.findings.Thresholds(...)")
        if isinstance(self.fused, str) and self.fused in _OLD_FUSED:
            warnings.warn(
                f"watch(fused={self.fused!r}) is deprecated: the torch.compile path is gone; "
                "the fused statistics are Triton kernels, on by default on CUDA. Pass "
                f"fused={_OLD_FUSED[self.fused]} (this value means that now)",
                DeprecationWarning, stacklevel=4)
            set_(self, "fused", _OLD_FUSED[self.fused])
        if not isinstance(self.fused, bool):
            raise TypeError(f"watch(fused={self.fused!r}): pass True (the Triton kernels on "
                            "CUDA, the default) or False (the eager statistics everywhere)")
        if self.scaler is not None and not isinstance(self.scaler, torch.amp.GradScaler):
            raise TypeError(f"watch(scaler={self.scaler!r}): pass the torch.amp.GradScaler "
                            "whose scale(loss).backward() and step(optimizer) you call, or None")
        if self.logdir is not None and not isinstance(self.logdir, (str, os.PathLike)):
            raise TypeError(f"watch(logdir={self.logdir!r}): pass a directory path (str or Path)")
        if self.logdir is not None and not os.fspath(self.logdir).strip():
            raise ValueError(f"watch(logdir={self.logdir!r}): an empty path would write into the "
                             "current directory; pass a run directory such as 'runs/exp1'")
        if self.resume and self.logdir is None:
            raise ValueError("watch(resume=True) continues the TensorBoard run in logdir=...; "
                             "pass logdir too")
        if self.overwrite and self.logdir is None:
            raise ValueError("watch(overwrite=True) replaces the TensorBoard run in logdir=...; "
                             "pass logdir too")
        if self.resume and self.overwrite:
            raise ValueError("watch(resume=True, overwrite=True): resume continues the run in "
                             "logdir, overwrite replaces it; pass one of them")
        if self.retention is not None and not isinstance(self.retention, Retention):
            raise TypeError(f"watch(retention={self.retention!r}): pass gradscope.Retention("
                            "recent=..., per_octave=...), or None to keep every point")
        _check_int("start_step", self.start_step, 0)

    @property
    def thresholds(self) -> Optional[Thresholds]:
        """The findings' thresholds, or ``None`` when findings are off."""
        if isinstance(self.findings, Thresholds):
            return self.findings
        return Thresholds() if self.findings else None

    @classmethod
    def build(cls, **options: Any) -> Options:
        """Options from the flat keywords of :func:`gradscope.watch`.

        Unknown names raise a ``TypeError`` naming the closest valid option. The
        definitions may be given flat (``eps=0.05``) or grouped
        (``definitions=Definitions(eps=0.05)``), not both.
        """
        flat_defs = {f.name for f in fields(Definitions)}
        valid = [f.name for f in fields(cls) if f.init] + sorted(flat_defs)
        for name in options:
            if name not in valid:
                close = difflib.get_close_matches(name, valid, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else \
                    f"; the options are: {', '.join(valid)}"
                raise TypeError(f"watch() got an unexpected option {name!r}{hint}")
        given = {k: options.pop(k) for k in list(options) if k in flat_defs}
        defs = options.get("definitions")
        if defs is None:
            options["definitions"] = Definitions(**given)
        elif isinstance(defs, Definitions):
            clash = [k for k, v in given.items() if v != getattr(_DEFAULT_DEFINITIONS, k)]
            if clash:
                raise TypeError(f"watch(): {', '.join(clash)} given both flat and in "
                                "definitions=...; pass each definition once")
        sinks = options.get("sinks", ())
        if sinks is None or isinstance(sinks, (str, bytes)) or not hasattr(sinks, "__iter__"):
            raise TypeError(f"watch(sinks={sinks!r}): pass a list of sinks, e.g. "
                            "sinks=[gradscope.writers.MemoryWriter()], or () for none")
        options["sinks"] = tuple(as_sink(s) for s in sinks)
        return cls(**options)

    def with_definitions(self, **changes: Any) -> Options:
        """A copy with some definitions changed."""
        return replace(self, definitions=replace(self.definitions, **changes))


def check_model(options: Options, model: nn.Module, optimizer: Any) -> None:
    """Options that only make sense with this model: ``include`` and ``optimizer``.

    Raises:
        ValueError: ``include`` selects no activation and no parameterised module,
            or ``optimizer`` holds none of the model's trainable parameters.
    """
    from gradscope.activations import family_of

    if options.include is not None:
        chosen = [n for n, m in model.named_modules() if n and options.include_fn(n, m)
                  and (family_of(m) is not None or any(True for _ in m.parameters(recurse=False)))]
        if not chosen:
            names = [n for n, _ in model.named_modules() if n]
            shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
            raise ValueError(
                f"watch(include={options.include!r}) selects no activation or parameterised "
                f"module of this model, so nothing would be recorded; its modules are: "
                f"{shown or '(none)'}. Pass fnmatch patterns of these names (e.g. 'encoder.*')")
    if optimizer is not None:
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        trainable = [p for p in model.parameters() if p.requires_grad]
        if trainable and not any(id(p) in held for p in trainable):
            raise ValueError(
                f"watch(optimizer=...): the {type(optimizer).__name__} holds none of the model's "
                f"{len(trainable)} trainable parameters, so its step() would not train this "
                "model; pass the optimizer made from this model's parameters, or none (a step "
                "is then one forward and its backward)")


def _make_filter(include: Include) -> Callable[[str, nn.Module], bool]:
    if include is None:
        return lambda name, module: True
    if callable(include):
        return include
    patterns: list[Any]
    if isinstance(include, str):
        patterns = [include]
    else:
        try:
            patterns = list(include)
        except TypeError:
            patterns = [include]
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            f"watch(include={include!r}): pass fnmatch patterns (strings) or a callable "
            "(name, module) -> bool"
        )
    return lambda name, module: name == "" or any(fnmatch.fnmatchcase(name, p) for p in patterns)
