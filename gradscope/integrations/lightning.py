"""PyTorch Lightning: a callback that watches the LightningModule while it fits.

``pip install "gradscope[lightning]"``, then::

    from gradscope.integrations.lightning import GradscopeCallback

    trainer = pl.Trainer(callbacks=[GradscopeCallback(every=10)], ...)
    trainer.fit(module, loader)

What the callback does:

* at fit start it watches the LightningModule with the trainer's (first)
  optimizer, the precision plugin's ``GradScaler`` (``precision="16-mixed"``;
  ``"bf16-mixed"`` needs none) and, when the trainer logs to TensorBoard, the
  logger's run directory as ``logdir`` (gradscope's events sit beside the
  logger's, one run in TensorBoard);
* a step is one optimizer step, as Lightning counts them: with
  ``accumulate_grad_batches=k`` the gradients are read once, accumulated, after
  the k-th backward (Lightning runs it inside ``optimizer.step(closure)``; the
  monitor reads when the closure returns), and activations come from the first
  micro-batch of the step;
* every training batch tells the monitor that a training forward starts, so a
  ``training_step`` that calls submodules (``self.encoder(x)``) rather than
  ``self(x)`` is recorded too;
* at fit end, and when fit raises (``on_exception``), the monitor flushes,
  removes every hook and closes its sinks. Under several processes (Lightning's
  DDP strategy) the monitor combines across ranks and rank 0 writes, as
  :func:`gradscope.watch` does under ``torchrun`` (tested there; Lightning's own
  multi-process launch is not covered by a test).

The monitor is :attr:`GradscopeCallback.monitor` during the fit and
:attr:`GradscopeCallback.history` afterwards.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

try:
    import pytorch_lightning as pl
except ImportError as err:  # pragma: no cover - the extra is not installed
    raise ImportError("gradscope.integrations.lightning needs PyTorch Lightning: "
                      'pip install "gradscope[lightning]"') from err

from gradscope.integrations._common import MonitorCallback

__all__ = ["GradscopeCallback"]


class GradscopeCallback(MonitorCallback, pl.Callback):
    """Watch a LightningModule with :func:`gradscope.watch` while the trainer fits it.

    Args:
        **options: any option of :func:`gradscope.watch` (validated now) except
            ``optimizer`` and ``scaler``, which come from the trainer. ``logdir``
            defaults to the TensorBoard logger's run directory.

    Attributes:
        monitor: the :class:`gradscope.Monitor` while fitting (``None`` otherwise).
        history: the last fit's :class:`gradscope.History`.

    Example:
        >>> cb = GradscopeCallback(every=5, summary=False)
        >>> GradscopeCallback(evry=5)
        Traceback (most recent call last):
        ...
        TypeError: watch() got an unexpected option 'evry'; did you mean 'every'?
    """

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizers = list(trainer.optimizers)
        if len(optimizers) > 1:
            warnings.warn("gradscope: the trainer has several optimizers; a step is one step of "
                          "the first", RuntimeWarning, stacklevel=2)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        mon = self._monitor.attach(pl_module, optimizers[0] if optimizers else None, scaler,
                                   _tensorboard_dir(trainer))
        self.history = mon.history

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        mon = self._monitor.monitor
        if mon is not None and mon.attached:
            mon.forward_starts(pl_module.training)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._monitor.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self._monitor.close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._monitor.close()


def _tensorboard_dir(trainer: pl.Trainer) -> Optional[str]:
    """The run directory of the trainer's TensorBoard logger, if it has one."""
    from pytorch_lightning.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return str(logger.log_dir)
    return None
