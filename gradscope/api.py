"""The entry point: :func:`watch` validates the options and attaches a :class:`Monitor`."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, Optional, TypeVar, Union, cast

import torch
from torch import nn

from gradscope.findings import Thresholds
from gradscope.history import DEFAULT_RETENTION, Retention
from gradscope.monitor import Monitor
from gradscope.options import Definitions, Include, Options
from gradscope.schedules import Schedule

__all__ = ["watch"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _model_only_positional(fn: _F) -> _F:
    """``fn`` with a ``TypeError`` naming the keyword for a second positional argument.

    ``watch(model, opt)`` would otherwise fail with Python's bare "takes 1 positional
    argument". The signature stays ``fn``'s (``inspect.signature`` follows
    ``__wrapped__``), so ``help(gradscope.watch)`` still shows every option.
    """
    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if len(args) > 1:
            raise TypeError(_positional_error(args[1:]))
        return fn(*args, **kwargs)

    return cast(_F, checked)


def _positional_error(extra: tuple[Any, ...]) -> str:
    """What to write instead of the positional arguments after the model."""
    kinds = ", ".join(type(a).__name__ for a in extra)
    first = extra[0]
    if isinstance(first, torch.optim.Optimizer):
        fix = "pass the optimizer by name: watch(model, optimizer=opt)"
    elif isinstance(first, torch.amp.GradScaler):
        fix = "pass the scaler by name: watch(model, optimizer=opt, scaler=scaler)"
    else:
        fix = "pass them by name, e.g. watch(model, optimizer=opt, every=10)"
    return (f"watch() takes the model as its only positional argument; got {len(extra)} more "
            f"({kinds}). Every option is keyword-only: {fix}")


@_model_only_positional
def watch(
    model: nn.Module,
    *,
    optimizer: Optional[torch.optim.Optimizer] = None,
    every: Union[int, Schedule] = 1,
    flush_every: int = 50,
    definitions: Optional[Definitions] = None,
    eps: float = 0.01,
    delta: float = 0.01,
    dead_window: int = 100,
    unit_dim: Optional[int] = None,
    activations: bool = True,
    backprop: bool = True,
    gradients: bool = True,
    update_ratio: bool = True,
    record_eval: bool = False,
    include: Include = None,
    histogram_every: Union[int, Schedule, None] = 500,
    histogram_bins: int = 64,
    check_nonfinite: Union[bool, str] = True,
    retention: Optional[Retention] = DEFAULT_RETENTION,
    start_step: int = 0,
    sinks: Sequence[Any] = (),
    logdir: Union[str, os.PathLike, None] = None,
    resume: bool = False,
    overwrite: bool = False,
    findings: Union[bool, Thresholds] = True,
    summary: bool = True,
    strict: bool = False,
    fused: bool = True,
    sampled_eager: bool = True,
    scaler: Optional[torch.amp.GradScaler] = None,
    combine_ranks: bool = True,
    **unknown: Any,
) -> Monitor:
    """Attach a :class:`Monitor` to ``model`` and return it.

    Use it as a context manager, or call :meth:`Monitor.close` (or
    :meth:`Monitor.detach`) when done. Every option is keyword-only and validated
    here; an error names the option, shows the value and says the fix.

    Args:
        model: any ``nn.Module``; its code and outputs are left unchanged.
        optimizer: when given, a step is one ``optimizer.step()``: gradients are
            read in its step pre-hook (final, and unscaled under a GradScaler) and
            update ratios across the step. Without it, a step is one training
            forward and its backward.

        every: sampling: record one step in ``every`` (an int), or the steps a
            schedule ``step -> bool`` picks (:func:`gradscope.every`,
            :func:`gradscope.log_schedule`). Other steps cost one check per hook.
        flush_every: steps between host transfers (one per device per flush).

        definitions: what the statistics mean, as one :class:`gradscope.Definitions`,
            instead of the four flat keywords below.
        eps: saturation tolerance: an output within ``eps`` of its family's limit.
        delta: a local derivative ``f'(x) < delta`` counts as small (``small_deriv``).
        dead_window: a ReLU unit is dead over the window when it was not positive
            on any sampled step of the last ``dead_window`` steps.
        unit_dim: the dimension that indexes units for dead-unit statistics;
            ``None``: the last for rank <= 3, 1 (channels) for rank 4-5.

        activations: record forward statistics of activation call-sites.
        backprop: record the gradient flowing back through each call-site's output.
        gradients: record parameter gradient and weight norms.
        update_ratio: with ``optimizer``, record ``‖Δw‖/‖w‖`` across each sampled
            step (keeps a copy of the weights between the step's pre- and post-hook).
        record_eval: also record forwards made in eval mode (they are steps too
            without ``optimizer``).
        include: only monitor modules whose name matches one of these ``fnmatch``
            patterns, or for which this callable ``(name, module)`` is true.
        histogram_every: take activation, back-propagated gradient, parameter
            gradient and weight histograms on these steps (an int or a schedule;
            ``None`` for never); binned on the device, only when a sink writes them.
        histogram_bins: equal-width bins per histogram.
        check_nonfinite: on the steps ``every`` does not sample, still check for
            NaN/Inf: the model's outputs (one sum each on the CPU; an activation
            output its backward keeps anyway, ReLU's, sigmoid's, tanh's, softmax's,
            is held, not copied, until the forward ends, and tested only when an
            output is not finite; the others are summed at their call) and each
            layer's smallest parameter gradient (its bias, usually). A non-finite
            activation that reaches neither an output nor a parameter gradient
            (masked, or in an unused branch) is seen on sampled steps only;
            ``"all"`` tests each activation module's output at its call instead
            (one sum per output). Nothing is read back on an accelerator until the
            flush. The first non-finite step is exact, and so is its layer: the
            first activation in forward order, else the deepest layer whose
            gradient is not finite, else ``(output)``. ``False``: sampled steps only
            (where the model's outputs are checked too).
        retention: how much of each series :attr:`Monitor.history` keeps: a
            :class:`gradscope.Retention` (default: the last 1000 steps at full
            resolution, older ones thinned geometrically, the first NaN/Inf and the
            first points always kept), or ``None`` to keep every point. Sinks
            (TensorBoard) still receive everything.
        start_step: the number of the first step (to continue a run restored from
            a checkpoint).

        sinks: writers that receive the records at each flush
            (:class:`gradscope.writers.Sink` subclasses, or objects with a
            ``write(records, history)`` method); a failing sink warns once and the
            others and training go on.
        logdir: write a TensorBoard run there (:attr:`Monitor.writer`); created and
            checked for write access now. When it already holds a gradscope run (a
            rerun), this run writes to ``<logdir>-2`` (``-3``, ...) instead, said in
            one line (two runs in one directory would be merged in TensorBoard).
        resume: add to the gradscope run already in ``logdir`` on purpose: the model
            must be the one that wrote it (same parameters, shapes and layer types;
            another is refused), and the run continues at the step after its last
            one (or at a later ``start_step``; never over its steps).
        overwrite: replace the gradscope run already in ``logdir`` (its event files are
            deleted) instead of writing to ``<logdir>-2``.
        findings: run the rules of :mod:`gradscope.findings` at each flush (for
            sinks that write findings) and at close: ``True``, ``False`` or a
            :class:`gradscope.findings.Thresholds`.
        summary: print a short summary of the findings to stderr at close.
        strict: raise errors from inside hooks instead of warning once and
            disabling the call-site that failed.

        fused: ``True`` (default): on a CUDA device with Triton (it ships with torch's
            CUDA wheels), each activation call-site's statistics are computed in one
            read of its output (and input, for GELU/SiLU), each gradient at a call-site
            and each every-step NaN/Inf test in one read, by Triton kernels
            (``gradscope.kernels``); the same values as the eager path to float32
            rounding. Families the kernels do not cover (softmax, PReLU, Softplus,
            Mish, Hardswish, RReLU, your own), the CPU and combined ranks use the
            eager path. ``False``: the eager path everywhere. (The old strings
            ``"off"``/``"on"``/``"strict"`` are deprecated: ``"off"`` means False.)
        sampled_eager: on a ``torch.compile``'d model, run the sampled steps
            eagerly (``torch.compiler.set_stance("force_eager")`` for the step, the
            prior stance restored after it; process-wide: other compiled functions
            run eagerly during a sampled step too), so that their activations are
            recorded exactly as eager ones; the other steps run the compiled code.
            ``False``: compiled code on every step, parameter statistics only (said
            once). See :mod:`gradscope.capture.compiled`.
        scaler: the ``torch.amp.GradScaler`` of a mixed-precision loop (needs
            ``optimizer``). Back-propagated gradients are then divided by the
            scale on the device (true units, like the parameter gradients
            ``scaler.step`` unscales); the step ends at ``scaler.update()``, also
            when the scaler skipped the optimizer step; the series ``scaler``
            records ``skipped`` and ``scale`` every step.
        combine_ranks: under ``torch.distributed`` with several ranks (DDP,
            ``torchrun``), combine each flush's statistics across the ranks with
            one collective: every rank's history holds the statistics of the
            union of the ranks' batches, and only rank 0 writes the sinks and
            prints. ``False``: each rank records and writes on its own.

    Example:
        >>> import torch, torch.nn as nn, gradscope
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid())
        >>> with gradscope.watch(model) as mon:
        ...     _ = model(torch.randn(8, 4)).sum().backward()
        >>> sorted(mon.history.metrics("1"))[:3]
        ['grad_in_nonfinite', 'grad_in_norm', 'grad_in_rms']
    """
    flat = dict(every=every, flush_every=flush_every, eps=eps, delta=delta,
                dead_window=dead_window, unit_dim=unit_dim, activations=activations,
                backprop=backprop, gradients=gradients, update_ratio=update_ratio,
                record_eval=record_eval, include=include, histogram_every=histogram_every,
                histogram_bins=histogram_bins, check_nonfinite=check_nonfinite,
                retention=retention, start_step=start_step, sinks=sinks, logdir=logdir,
                resume=resume, overwrite=overwrite, findings=findings, summary=summary,
                strict=strict, fused=fused,
                sampled_eager=sampled_eager, scaler=scaler, combine_ranks=combine_ranks, **unknown)
    if definitions is not None:
        flat["definitions"] = definitions
    options = Options.build(**flat)
    monitor = Monitor(model, optimizer=optimizer, options=options)
    try:
        return monitor.attach()
    except BaseException:
        if monitor.writer is not None and options.logdir is not None:
            monitor.writer.close()  # the writer made here; user sinks stay theirs
        raise
