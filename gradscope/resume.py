"""Continuing a TensorBoard run (``watch(logdir=..., resume=True)``): the same model, the next step.

A run's files hold its layer index (``gradscope/layers``: every layer, parameter
and activation call-site with its type and, for parameters, shape) and its steps.
:func:`resume_options` reads both before anything is written: a model whose
layout differs (a parameter missing, added or of another shape; a layer or an
activation module of another type) is refused, since its series would be drawn
as continuations of another model's; and the run continues at the step after its
last one (``start_step`` left at 0), or at a later ``start_step``, never over
steps already written.

Example:
    >>> import tempfile, torch.nn as nn
    >>> from gradscope.options import Options
    >>> opts = Options.build(logdir=tempfile.mkdtemp(), resume=True)
    >>> resume_options(opts, nn.Linear(2, 2)).start_step  # nothing to continue yet
    0
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import nn

from gradscope.capture.params import layers
from gradscope.events import latest_run, run_progress, runs_in
from gradscope.options import Options
from gradscope.writers.layout import parse_layers_text

__all__ = ["resume_options"]

#: Differences of layout named in the refusal (the rest are counted).
SHOWN = 4


def resume_options(options: Options, model: nn.Module) -> Options:
    """``options`` with the ``start_step`` that continues the run in ``options.logdir``.

    Raises:
        ValueError: ``model``'s layout is not the run's, or ``start_step`` would write
            over steps the run already has.
    """
    if not options.resume or options.logdir is None:
        return options
    runs = runs_in(Path(options.logdir))
    if not runs:
        return options
    last, index = run_progress(runs[latest_run(runs)])
    where = f"watch(logdir={str(options.logdir)!r}, resume=True)"
    if index is not None:
        differ = _differences(index, model, options)
        if differ:
            more = f" (and {len(differ) - SHOWN} more)" if len(differ) > SHOWN else ""
            raise ValueError(
                f"{where}: the run in this directory was written by a different model: "
                f"{'; '.join(differ[:SHOWN])}{more}. Resume a run with the model that wrote "
                "it; write this one to a new directory (one run per directory)")
    if last is None:
        return options
    if options.start_step == 0:
        return replace(options, start_step=last + 1)
    if options.start_step <= last:
        raise ValueError(
            f"{where}, start_step={options.start_step}: the run already has steps up to "
            f"{last}, which this would write over; leave start_step out (the run continues "
            f"at step {last + 1}) or pass a later one")
    return options


def _differences(index: str, model: nn.Module, options: Options) -> list[str]:
    """How ``model`` differs from the run's layer index (parameters, layers, activation modules)."""
    shapes = {}
    types = {name: type(m).__name__ for name, m in model.named_modules()}
    for name, _, own in layers(model, options.include_fn):
        shapes.update({f"{name}.{p}" if name else p: tuple(t.shape) for p, t, _, _ in own})
    out: list[str] = []
    had = set()
    for info in parse_layers_text(index):
        if info.kind == "parameter":
            had.add(info.name)
            shape = shapes.get(info.name)
            if shape is None:
                out.append(f"parameter {info.name} {_shape(info.shape)} there, none here")
            elif info.shape is not None and tuple(info.shape) != shape:
                out.append(f"{info.name} has shape {_shape(info.shape)} there, "
                           f"{_shape(shape)} here")
        elif info.kind in ("layer", "activation") and info.module is not None \
                and not info.type.startswith("F.") and info.module in types \
                and types[info.module] != info.type:
            out.append(f"{info.module or '(root)'} is a {info.type} there, a "
                       f"{types[info.module]} here")
        elif info.kind == "layer" and info.module is not None and info.module not in types:
            out.append(f"layer {info.name} ({info.type}) there, none here")
    if had:
        out += [f"parameter {n} {_shape(s)} here, none there" for n, s in shapes.items()
                if n not in had]
    return out


def _shape(shape: object) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")" if isinstance(shape, tuple) else "?"
