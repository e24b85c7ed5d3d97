"""One experiment run: train an MLP on in-memory data under :func:`gradscope.watch`.

:class:`RunConfig` is one point of a grid (validated when it is made);
:func:`train_run` trains it and returns a :class:`RunResult` with the summary
metrics of the results table. With a ``run_dir`` it writes there:

* a TensorBoard run (a :class:`gradscope.writers.TensorBoardWriter` sink): the
  monitor's dashboards plus
  ``train/loss``, ``train/accuracy``, ``test/loss``, ``test/accuracy`` written
  through ``monitor.writer.summary_writer``, and the run's config and final
  metrics for the HParams plugin;
* ``history.json`` (the monitor's :class:`~gradscope.history.History`);
* ``curves.json`` (loss and accuracy curves);
* ``result.json``, written last and atomically: its presence marks a finished
  run, which a rerun of the grid skips.

Under ``torchrun`` (:mod:`gradscope.experiments.parallel`) the model trains with
DDP, each rank on its shard of each batch; rank 0 writes, the training curves
are averaged over the ranks (the TensorBoard ``train/*`` scalars are rank 0's shard).

Summary metrics (per run):

* ``test_acc``: accuracy on the whole test set after the last step;
* ``steps_to_90``: the first step at which the mean training-batch accuracy over
  the last :data:`~gradscope.experiments.results.ACC_WINDOW` steps reached 90% (``None`` when never);
* ``grad_ratio``: median over sampled steps of ``‖∇W_fc1‖ / ‖∇W_out‖``, the
  weight-gradient norm of the first ``Linear`` over that of the output ``Linear``
  (≪ 1: the gradient vanishes toward the input; ≫ 1: it explodes);
* ``peak_saturation``: the largest saturated fraction of any activation layer at
  any sampled step (sigmoid/tanh/softsign only);
* ``peak_dead``: the largest fraction of units of any ReLU layer that were not
  active on any sampled step of the monitor's dead window;
* ``time_ratio`` (recurrent models): median over sampled steps of the last recurrent
  layer's ``‖∂L/∂h‖`` at the first time step over that at the last (≪ 1: the gradient
  vanishes back through time); ``grad_ratio`` is ``nan`` for them;
* ``findings``: titles of :func:`gradscope.findings.analyze` (when installed).

Example:
    >>> from gradscope.experiments.data import synthetic_dataset
    >>> cfg = RunConfig(activation="relu", init="he", depth=2, width=8, steps=5,
    ...                 eval_every=5, monitor_every=1)
    >>> r = train_run(cfg, synthetic_dataset(features=16), progress=False)
    >>> 0.0 <= r.test_acc <= 1.0
    True
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

import gradscope
from gradscope.experiments import parallel
from gradscope.experiments.data import Dataset
from gradscope.experiments.models import ACTIVATIONS, INITS, build_mlp
from gradscope.experiments.optimizers import OPTIMIZERS, make_optimizer
from gradscope.experiments.results import (
    ACC_WINDOW,
    _atomic_json,
    _evaluate,
    _findings,
    _peak,
    _write_hparams,
    gradient_ratio,
    steps_to_target,
    time_ratio,
)
from gradscope.experiments.sequence import CELLS, SEQUENCES, SequenceClassifier
from gradscope.history import decode_value, encode_value

__all__ = ["OPTIMIZERS", "RunConfig", "RunResult", "resolve_device", "train_run"]

# ---- settings ---------------------------------------------------------------
# (the summary metrics' settings, ACC_WINDOW, ACC_TARGET and EVAL_BATCH: experiments/results.py)
#: Loss/accuracy scalars are written to TensorBoard every this many steps.
LOG_EVERY = 10
#: On CPU, flush subnormal floats (|x| < 1.2e-38) to zero while training. Vanishing
#: signals (deep Xavier ReLU nets, saturated sigmoids) are full of them and x86 CPUs
#: compute on them up to ~100× slower; a value that small reads as 0 either way.
FLUSH_DENORMAL = True
#: Models by name: the MLP and the recurrent nets of :mod:`gradscope.experiments.sequence`.
MODELS = ("mlp", *CELLS)
# ------------------------------------------------------------------------------


def _fail(arg: str, value: Any, fix: str) -> ValueError:
    return ValueError(f"RunConfig({arg}={value!r}): {fix}")


@dataclass(frozen=True)
class RunConfig:
    """One training run of the grid. Every field is validated when the config is made.

    Args:
        activation: a key of :data:`gradscope.experiments.models.ACTIVATIONS`.
        init: one of :data:`gradscope.experiments.models.INITS`.
        batchnorm: BatchNorm1d between each hidden Linear and its activation.
        depth: hidden layers (≥ 1).
        width: units per hidden layer (≥ 1).
        optimizer: one of :data:`~gradscope.experiments.optimizers.OPTIMIZERS` (``sgd``,
            ``momentum``, ``adam``, ``rmsprop``, ``adagrad``, ``adadelta``, ``adamax``).
        lr: learning rate (> 0).
        dropout: dropout probability in [0, 1).
        steps: optimiser steps (≥ 1).
        batch_size: examples per step (≥ 1).
        seed: seeds the initialisation, batch order and dropout.
        eval_every: steps between test-set evaluations (the last step is always evaluated).
        monitor_every: the monitor samples one step in this many.
        model: ``"mlp"``, or a recurrent net over the image read as a sequence:
            ``"rnn"`` (tanh), ``"lstm"``, ``"gru"``
            (:class:`~gradscope.experiments.sequence.SequenceClassifier`; ``depth`` is
            its number of layers and ``width`` its hidden size; ``activation``,
            ``init``, ``batchnorm`` and ``dropout`` do not apply to it).
        sequence: for a recurrent ``model``, how the image becomes a sequence
            (:data:`~gradscope.experiments.sequence.SEQUENCES`: ``rows``, 28 steps, or
            ``pixels``, 100 steps).

    Example:
        >>> RunConfig(activation="tanh", init="xavier_uniform", steps=10).name
        'tanh-xavier_uniform-5x256-sgd-lr0.1-bs64-10steps-seed0'
    """

    activation: str = "relu"
    init: str = "he"
    batchnorm: bool = False
    depth: int = 5
    width: int = 256
    optimizer: str = "sgd"
    lr: float = 0.1
    dropout: float = 0.0
    steps: int = 1000
    batch_size: int = 64
    seed: int = 0
    eval_every: int = 100
    monitor_every: int = 5
    model: str = "mlp"
    sequence: str = "rows"

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise _fail("activation", self.activation, f"use one of {sorted(ACTIVATIONS)}")
        if self.init not in INITS:
            raise _fail("init", self.init, f"use one of {list(INITS)}")
        if self.optimizer not in OPTIMIZERS:
            raise _fail("optimizer", self.optimizer, f"use one of {list(OPTIMIZERS)}")
        if self.model not in MODELS:
            raise _fail("model", self.model, f"use one of {list(MODELS)}")
        if self.sequence not in SEQUENCES:
            raise _fail("sequence", self.sequence, f"use one of {list(SEQUENCES)}")
        if self.model != "mlp" and (self.batchnorm or self.dropout):
            raise _fail("model", self.model, "a recurrent model has no BatchNorm or dropout "
                        "option here; use batchnorm=False, dropout=0")
        if not isinstance(self.batchnorm, bool):
            raise _fail("batchnorm", self.batchnorm, "use True or False")
        for name in ("depth", "width", "steps", "batch_size", "eval_every", "monitor_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise _fail(name, v, "use an integer ≥ 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise _fail("seed", self.seed, "use an integer ≥ 0")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise _fail("lr", self.lr, "use a finite number > 0")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise _fail("dropout", self.dropout, "use a probability in [0, 1)")

    @property
    def name(self) -> str:
        """The full run name: every field that identifies the run (a grid names its runs
        by the fields that vary instead, :func:`gradscope.experiments.grid.run_names`)."""
        parts = ([self.activation, self.init] if self.model == "mlp"
                 else [self.model, self.sequence])
        if self.batchnorm:
            parts.append("bn")
        parts += [f"{self.depth}x{self.width}", self.optimizer, f"lr{self.lr:g}",
                  f"bs{self.batch_size}", f"{self.steps}steps"]
        if self.dropout:
            parts.append(f"drop{self.dropout:g}")
        parts.append(f"seed{self.seed}")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"RunConfig.from_dict: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class RunResult:
    """Summary of one finished run (one row of the results table).

    ``name`` is the run's name in its grid (its directory under ``runs/``); it
    defaults to the config's full name.
    """

    config: RunConfig
    test_acc: float
    test_loss: float
    final_train_loss: float
    steps_to_90: Optional[int]
    grad_ratio: float
    peak_saturation: Optional[float]
    peak_dead: Optional[float]
    wall_s: float
    device: str
    findings: list[str] = field(default_factory=list)
    time_ratio: Optional[float] = None
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.config.name

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the config under ``config``, metrics at top level."""
        d = {k: getattr(self, k) for k in (f.name for f in fields(self))
             if k not in ("config", "name")}
        d = {k: (encode_value(v) if isinstance(v, float) else v) for k, v in d.items()}
        return {"name": self.name, "config": self.config.to_dict(), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        cfg = RunConfig.from_dict(d.pop("config"))
        for k in ("test_acc", "test_loss", "final_train_loss", "grad_ratio"):
            d[k] = decode_value(d[k])
        if d.get("time_ratio") is not None:
            d["time_ratio"] = decode_value(d["time_ratio"])
        return cls(config=cfg, **d)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``/``"cuda"``/``"cuda:N"`` as given.

    Raises:
        ValueError: unknown name, or CUDA asked for but not available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: CUDA is not available here; use --device cpu or auto")
        return torch.device(device)
    raise ValueError(f"device={device!r}: use 'auto', 'cpu' or 'cuda'")


def _build_model(cfg: RunConfig, data: Dataset) -> nn.Module:
    if cfg.model == "mlp":
        return build_mlp(in_features=data.in_features, classes=data.classes, depth=cfg.depth,
                         width=cfg.width, activation=cfg.activation, init=cfg.init,
                         batchnorm=cfg.batchnorm, dropout=cfg.dropout)
    return SequenceClassifier(cfg.model, hidden=cfg.width, layers=cfg.depth,
                              sequence=cfg.sequence, classes=data.classes,
                              in_features=data.in_features)


def train_run(
    cfg: RunConfig,
    data: Dataset,
    *,
    device: Union[str, torch.device] = "cpu",
    run_dir: Union[str, os.PathLike, None] = None,
    progress: bool = True,
    progress_position: int = 1,
    dashboard_images: bool = True,
    name: Optional[str] = None,
    grid: Sequence[RunConfig] = (),
) -> RunResult:
    """Train ``cfg`` on ``data`` under :func:`gradscope.watch` and summarise it.

    Args:
        cfg: the run's configuration.
        data: the data set; moved to ``device`` if it is not there already.
        device: where to train.
        run_dir: where to write the TensorBoard run, ``history.json``, ``curves.json``
            and (last) ``result.json``; ``None`` writes nothing.
        progress: show a tqdm bar over steps.
        progress_position: the bar's line (nested under a grid's bar).
        dashboard_images: let the TensorBoard writer draw its dashboard images
            (gradient flow, unit health), once, when the run has finished.
        name: the run's name (progress bar, result); ``cfg.name`` by default.
        grid: the configs of the grid this run belongs to: their number sizes the
            per-layer custom-scalars charts (``TensorBoardWriter(runs=...)``), and
            the fields that vary among them lead the HParams table.

    Returns:
        The run's :class:`RunResult`.
    """
    dev = torch.device(device)
    if data.x_train.device != dev:
        data = data.to(dev)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = _build_model(cfg, data).to(dev)
    opt = make_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr)
    trained = parallel.wrap(model, dev)  # DDP under torchrun: each rank a shard of each batch
    out_dir = Path(run_dir) if run_dir is not None and parallel.is_writer() else None
    sinks = []
    if out_dir is not None:
        from gradscope.writers import TensorBoardWriter

        out_dir.mkdir(parents=True, exist_ok=True)
        sinks.append(TensorBoardWriter(out_dir, images=dashboard_images, runs=max(len(grid), 1),
                                       image_interval=math.inf,  # drawn once, after training
                                       hparams=False))  # its own, below
    n = len(data.x_train)
    losses = torch.zeros(cfg.steps, device=dev)
    accs = torch.zeros(cfg.steps, device=dev)
    curves: dict[str, list[Any]] = {"test_step": [], "test_acc": [], "test_loss": []}
    perm = torch.randperm(n, generator=gen)
    pos = 0
    bar = None
    if progress and parallel.is_writer():
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, desc=name or cfg.name, position=progress_position, leave=False,
                   dynamic_ncols=True)
    flushing = dev.type == "cpu" and FLUSH_DENORMAL and torch.set_flush_denormal(True)
    t0 = time.perf_counter()
    model.train()
    try:
        with gradscope.watch(model, optimizer=opt, every=cfg.monitor_every, sinks=sinks) as mon:
            writer = mon.writer.summary_writer if mon.writer is not None else None
            for step in range(cfg.steps):
                if pos + cfg.batch_size > n:
                    perm, pos = torch.randperm(n, generator=gen), 0
                idx = parallel.shard(perm[pos:pos + cfg.batch_size]).to(dev)
                pos += cfg.batch_size
                x, y = data.x_train[idx], data.y_train[idx]
                logits = trained(x)
                loss = nn.functional.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses[step] = loss.detach()
                accs[step] = (logits.detach().argmax(1) == y).float().mean()
                done = step + 1
                if writer is not None and (done % LOG_EVERY == 0 or done == cfg.steps):
                    lo = done - LOG_EVERY if done % LOG_EVERY == 0 else done - done % LOG_EVERY
                    writer.add_scalar("train/loss", losses[lo:done].mean().item(), done)
                    writer.add_scalar("train/accuracy", accs[lo:done].mean().item(), done)
                if done % cfg.eval_every == 0 or done == cfg.steps:
                    acc, tl = _evaluate(model, data.x_test, data.y_test)
                    curves["test_step"].append(done)
                    curves["test_acc"].append(acc)
                    curves["test_loss"].append(tl)
                    if writer is not None:
                        writer.add_scalar("test/accuracy", acc, done)
                        writer.add_scalar("test/loss", tl, done)
                if bar is not None:
                    bar.update(1)
            mon.flush()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            wall = time.perf_counter() - t0
            history = mon.history
            batch_acc = parallel.mean_over_ranks(accs).tolist()
            batch_loss = parallel.mean_over_ranks(losses).tolist()
            result = RunResult(
                config=cfg,
                test_acc=curves["test_acc"][-1],
                test_loss=curves["test_loss"][-1],
                final_train_loss=statistics.fmean(batch_loss[-min(ACC_WINDOW, len(batch_loss)):]),
                steps_to_90=steps_to_target(batch_acc),
                grad_ratio=(gradient_ratio(history) if cfg.model == "mlp" else math.nan),
                peak_saturation=_peak(history, "saturation"),
                peak_dead=_peak(history, "dead_units_window"),
                wall_s=round(wall, 3),
                device=str(dev),
                findings=_findings(mon),
                time_ratio=time_ratio(history),
                name=name or cfg.name,
            )
            if writer is not None:
                metrics = {"hparam/test_accuracy": result.test_acc,
                           "hparam/grad_ratio": result.grad_ratio,
                           "hparam/steps_to_90": float(result.steps_to_90 or cfg.steps + 1),
                           "hparam/peak_saturation": result.peak_saturation or 0.0,
                           "hparam/peak_dead": result.peak_dead or 0.0}
                varying = frozenset(f.name for f in fields(RunConfig)
                                    if len({getattr(c, f.name) for c in grid}) > 1)
                _write_hparams(writer, cfg, {k: (v if math.isfinite(v) else -1.0)
                                             for k, v in metrics.items()}, varying)
        if out_dir is not None:
            history.save(out_dir / "history.json")
            curves["train_loss"] = batch_loss
            curves["train_acc"] = batch_acc
            _atomic_json(out_dir / "curves.json", curves)
            _atomic_json(out_dir / "result.json", result.to_dict())
        return result
    finally:
        if flushing:
            torch.set_flush_denormal(False)
        if bar is not None:
            bar.close()


def load_result(run_dir: Union[str, os.PathLike]) -> Optional[RunResult]:
    """The finished run's result in ``run_dir``, or ``None`` when it has not finished."""
    p = Path(run_dir) / "result.json"
    if not p.exists():
        return None
    try:
        with open(p, encoding="utf-8") as f:
            return RunResult.from_dict(json.load(f))
    except (ValueError, KeyError, TypeError):
        return None
