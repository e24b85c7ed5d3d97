"""Hugging Face ``transformers``: a ``TrainerCallback`` that watches the model while it trains.

``pip install "gradscope[hf]"``, then::

    from gradscope.integrations.hf import GradscopeCallback

    cb = GradscopeCallback(every=10)
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])
    with cb:              # also detaches when train() raises
        trainer.train()

What the callback does:

* at ``on_train_begin`` it watches the model with the trainer's optimizer (the
  torch optimizer inside accelerate's ``AcceleratedOptimizer``), its
  ``GradScaler`` (accelerate makes one for ``fp16=True`` on CUDA; ``bf16=True``
  needs none, and on the CPU ``fp16=True`` runs without one) and, when the run
  reports to TensorBoard, the TensorBoard callback's run directory as ``logdir``
  (``$TENSORBOARD_LOGGING_DIR``, else the newest ``<output_dir>/runs/*``);
* a step is one optimizer step, as the Trainer counts them: with
  ``gradient_accumulation_steps=k`` the accumulated gradients are read once, in
  the optimizer's step pre-hook (after accelerate unscaled them), and activations
  come from the first micro-batch;
* at ``on_train_end`` the monitor flushes, removes every hook and closes its
  sinks. The Trainer has no event for an exception, so use the callback as a
  context manager around ``train()`` (above) to detach then too; a new
  ``train()`` also closes a monitor a failed one left attached.

The activation modules of ``transformers.activations`` (``GELUActivation``,
``NewGELUActivation``, ``QuickGELUActivation``, ...) are families
(:mod:`gradscope.integrations.hf_activations`), with or without this callback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as err:  # pragma: no cover - the extra is not installed
    raise ImportError('gradscope.integrations.hf needs transformers: pip install "gradscope[hf]"'
                      ) from err

from gradscope.integrations._common import MonitorCallback

__all__ = ["GradscopeCallback"]


class GradscopeCallback(MonitorCallback, TrainerCallback):
    """Watch the Trainer's model with :func:`gradscope.watch` while it trains.

    Args:
        **options: any option of :func:`gradscope.watch` (validated now) except
            ``optimizer`` and ``scaler``, which come from the trainer. ``logdir``
            defaults to the TensorBoard callback's run when the run reports to TensorBoard.

    Attributes:
        monitor: the :class:`gradscope.Monitor` while training (``None`` otherwise).
        history: the last run's :class:`gradscope.History`.

    Example:
        >>> cb = GradscopeCallback(every=5, summary=False)
        >>> with cb:
        ...     pass  # trainer.train()
        >>> GradscopeCallback(flush_evry=5)
        Traceback (most recent call last):
        ...
        TypeError: watch() got an unexpected option 'flush_evry'; did you mean 'flush_every'?
    """

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds it
        scaler = getattr(optimizer, "scaler", None)
        logdir = _tensorboard_dir(args) if _reports_to_tensorboard(args) else None
        self.history = self._monitor.attach(model, inner, scaler, logdir).history

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._monitor.close()

    def __enter__(self) -> GradscopeCallback:
        return self

    def __exit__(self, *exc: object) -> None:
        self._monitor.close()


def _tensorboard_dir(args: Any) -> str:
    """The run directory of transformers' ``TensorBoardCallback``.

    It is ``$TENSORBOARD_LOGGING_DIR`` or a new ``<output_dir>/runs/<date>_<host>``
    that the TensorBoard callback (which runs before user callbacks) has just made;
    ``<output_dir>/runs/gradscope`` when there is none.
    """
    env = os.environ.get("TENSORBOARD_LOGGING_DIR")
    if env:
        return os.path.expanduser(env)
    runs = Path(args.output_dir) / "runs"
    made = [p for p in runs.glob("*") if p.is_dir()] if runs.is_dir() else []
    return str(max(made, key=lambda p: p.stat().st_mtime)) if made else str(runs / "gradscope")


def _reports_to_tensorboard(args: Any) -> bool:
    report = getattr(args, "report_to", None) or []
    if isinstance(report, str):
        report = [report]
    return "tensorboard" in report or "all" in report
