"""Fused one-read statistics for accelerators: Triton kernels beside the eager reference.

On a CUDA device (with ``triton`` importable, as it is with torch's CUDA wheels) each
activation call-site's forward statistics are computed in **one** read of its output (and
of its input where the family needs it), each gradient at a call-site in one read, and the
every-step NaN/Inf check of a tensor in one read: each a partials kernel writing into a
workspace, and one finisher per device and step merging every segment
(:mod:`gradscope.kernels.engine`). The eager torch path (:mod:`gradscope.reductions`)
stays: it is the CPU path, the fallback for families the kernels do not cover
(:func:`gradscope.kernels.config.forward_spec`), and the reference the kernels are
tested against, under Triton's interpreter on CPU tensors (``tests/test_kernels.py``).

* :func:`available` — whether the fused path is offered for a tensor's device;
* :func:`load` — the kernels module (compiled, or interpreted for CPU tensors);
* :func:`interpreted` — a context in which CPU tensors take the fused path through
  Triton's interpreter (tests, ``benchmarks/kernel_counts.py``).

Example:
    >>> import torch
    >>> available(torch.device("cpu"))  # the CPU runs the eager path
    False
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Optional

import torch

__all__ = ["available", "interpreted", "load", "missing"]

_modules: dict[bool, Optional[ModuleType]] = {}
_why: dict[bool, str] = {}
_state = {"cpu": False}


def load(interpret: bool = False) -> Optional[ModuleType]:
    """The kernels module, ``None`` when ``triton`` cannot be imported (:func:`missing` says
    why). ``interpret=True``: a copy made with ``TRITON_INTERPRET=1`` (whether ``triton.jit``
    compiles or interprets is decided when the kernels are defined), for CPU tensors."""
    if interpret not in _modules:
        _modules[interpret] = _load(interpret)
    return _modules[interpret]


def _load(interpret: bool) -> Optional[ModuleType]:
    path = os.path.join(os.path.dirname(__file__), "_triton.py")
    name = "gradscope.kernels._triton" + ("_interpreted" if interpret else "")
    before = os.environ.get("TRITON_INTERPRET")
    try:
        # triton's own library compiled first, whichever copy is asked for: the kernels use
        # only its combines, which the interpreter recognises, and a compiled copy cannot
        # reference interpreted functions (gluon is imported lazily at the first launch).
        # Under a process-wide TRITON_INTERPRET=1 (set before triton was first imported, so
        # triton's library is already interpreted) everything stays interpreted.
        if before != "1":
            os.environ.pop("TRITON_INTERPRET", None)
        importlib.import_module("triton.language")
        importlib.import_module("triton.experimental.gluon")
        if interpret:
            os.environ["TRITON_INTERPRET"] = "1"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    except Exception as err:  # no triton, or one too old for these kernels
        sys.modules.pop(name, None)
        _why[interpret] = f"{type(err).__name__}: {err}"
        return None
    finally:
        if before is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = before


def missing(interpret: bool = False) -> Optional[str]:
    """Why the kernels cannot be loaded (``None`` when they can)."""
    return None if load(interpret) is not None else _why.get(interpret, "not loaded")


def available(device: torch.device) -> bool:
    """Whether the fused path runs for tensors on ``device``: CUDA with Triton, or the CPU
    inside :func:`interpreted`."""
    if device.type == "cuda":
        return load() is not None
    return device.type == "cpu" and _state["cpu"] and load(True) is not None


def kernels_for(device: torch.device) -> Optional[ModuleType]:
    """The kernels module for tensors on ``device`` (interpreted for the CPU)."""
    return load(device.type == "cpu")


@contextmanager
def interpreted() -> Iterator[None]:
    """CPU tensors take the fused path, through Triton's interpreter (slow: tests only)."""
    before, _state["cpu"] = _state["cpu"], True
    try:
        yield
    finally:
        _state["cpu"] = before
