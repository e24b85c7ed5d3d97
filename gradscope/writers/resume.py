"""Continuing a TensorBoard run (``watch(logdir=..., resume=True)``): the same model, the next step.

A run's files hold its layer index (``gradscope/layers``: every layer, parameter
and activation call-site with its type and, for parameters, shape) and its steps.
:func:`resume_step` reads both before anything is written: a model whose layout
differs (a parameter missing, added or of another shape; a layer or an activation
module of another type) is refused, since its series would be drawn as
continuations of another model's; and the run continues at the step after its
last one (``start_step`` left at 0), or at a later ``start_step``, never over
steps already written.

Example:
    >>> import tempfile
    >>> resume_step(tempfile.mkdtemp(), start_step=0, parameters={}, modules={})
    0
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Union

from gradscope.events import latest_run, run_progress, runs_in
from gradscope.writers.layout import parse_layers_text

__all__ = ["resume_step"]

#: Differences of layout named in the refusal (the rest are counted).
SHOWN = 4


def resume_step(logdir: Union[str, os.PathLike], *, start_step: int,
                parameters: Mapping[str, tuple[int, ...]], modules: Mapping[str, str]) -> int:
    """The first step of a model resuming the run in ``logdir``: ``start_step``, or the
    step after the run's last one when ``start_step`` is 0.

    Args:
        logdir: the run directory (``watch(logdir=...)``).
        start_step: the step the user asked for (0: not asked).
        parameters: the model's recorded parameters (names as gradscope gives them) and shapes.
        modules: ``named_modules()`` names and class names of the model.

    Raises:
        ValueError: the model's layout is not the run's, or ``start_step`` would write
            over steps the run already has.
    """
    runs = runs_in(Path(logdir))
    if not runs:
        return start_step
    last, index = run_progress(runs[latest_run(runs)])
    where = f"watch(logdir={str(logdir)!r}, resume=True)"
    differ = _differences(index, parameters, modules) if index is not None else []
    if differ:
        more = f" (and {len(differ) - SHOWN} more)" if len(differ) > SHOWN else ""
        raise ValueError(
            f"{where}: the run in this directory was written by a different model: "
            f"{'; '.join(differ[:SHOWN])}{more}. Resume a run with the model that wrote it; "
            "write this one to a new directory (one run per directory)")
    if last is None or start_step > last:
        return start_step
    if start_step == 0:
        return last + 1
    raise ValueError(
        f"{where}, start_step={start_step}: the run already has steps up to {last}, which "
        f"this would write over; leave start_step out (the run continues at step {last + 1}) "
        "or pass a later one")


def _differences(index: str, parameters: Mapping[str, tuple[int, ...]],
                 modules: Mapping[str, str]) -> list[str]:
    """How the model differs from the run's layer index (parameters, layers, activation modules)."""
    out: list[str] = []
    had = set()
    for info in parse_layers_text(index):
        if info.kind == "parameter":
            had.add(info.name)
            shape = parameters.get(info.name)
            if shape is None:
                out.append(f"parameter {info.name} {_shape(info.shape)} there, none here")
            elif info.shape is not None and tuple(info.shape) != shape:
                out.append(f"{info.name} has shape {_shape(info.shape)} there, "
                           f"{_shape(shape)} here")
        elif info.module is None or info.kind not in ("layer", "activation") \
                or info.type.startswith("F."):
            continue
        elif info.module not in modules:
            if info.kind == "layer":
                out.append(f"layer {info.name} ({info.type}) there, none here")
        elif modules[info.module] != info.type:
            out.append(f"{info.module or '(root)'} is a {info.type} there, a "
                       f"{modules[info.module]} here")
    if had:
        out += [f"parameter {n} {_shape(s)} here, none there" for n, s in parameters.items()
                if n not in had]
    return out


def _shape(shape: object) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")" if isinstance(shape, tuple) else "?"
