"""What one experiment run yields: the test-set evaluation, the summary metrics of the
results table (see :mod:`gradscope.experiments.train`), and its output files (JSON
written atomically, the HParams plugin's record)."""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any, Optional, Protocol

import torch
from torch import nn

from gradscope.history import History

__all__ = ["ACC_TARGET", "ACC_WINDOW", "EVAL_BATCH", "gradient_ratio", "steps_to_target",
           "time_ratio"]

# ---- settings ---------------------------------------------------------------
#: Training-batch accuracy is averaged over this many steps for ``steps_to_90``.
ACC_WINDOW = 50
#: Accuracy threshold of ``steps_to_90``.
ACC_TARGET = 0.9
#: Test set evaluation batch (the whole set fits, this bounds memory on big nets).
EVAL_BATCH = 10_000
# ------------------------------------------------------------------------------


class RunConfig(Protocol):
    """What :func:`_write_hparams` reads of a :class:`gradscope.experiments.train.RunConfig`."""

    @property
    def steps(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """``(accuracy, mean loss)`` on ``(x, y)`` in eval mode; restores the training mode."""
    was_training = model.training
    model.eval()
    try:
        correct = torch.zeros((), device=x.device)
        loss = torch.zeros((), device=x.device)
        for i in range(0, len(x), EVAL_BATCH):
            logits = model(x[i:i + EVAL_BATCH])
            yi = y[i:i + EVAL_BATCH]
            correct += (logits.argmax(1) == yi).sum()
            loss += nn.functional.cross_entropy(logits, yi, reduction="sum")
        return (correct / len(x)).item(), (loss / len(x)).item()
    finally:
        model.train(was_training)


def steps_to_target(batch_acc: list[float], *, window: int = ACC_WINDOW,
                    target: float = ACC_TARGET) -> Optional[int]:
    """First step (1-based count) at which the trailing ``window``-step mean accuracy ≥ ``target``.

    Example:
        >>> steps_to_target([0.5, 1.0, 1.0, 1.0], window=2, target=0.9)
        3
    """
    total = 0.0
    for i, a in enumerate(batch_acc):
        total += a
        if i >= window:
            total -= batch_acc[i - window]
        if total / min(i + 1, window) >= target and i + 1 >= min(window, len(batch_acc)):
            return i + 1
    return None


def gradient_ratio(history: History, first: str = "fc1", last: str = "out") -> float:
    """Median over sampled steps of ``grad_norm(first) / grad_norm(last)`` (parameter ``.weight``)."""
    fs, fv = history.series(f"{first}.weight", "grad_norm")
    ls, lv = history.series(f"{last}.weight", "grad_norm")
    by_step = dict(zip(ls, lv))
    ratios = [a / by_step[s] for s, a in zip(fs, fv)
              if s in by_step and by_step[s] > 0 and math.isfinite(a) and math.isfinite(by_step[s])]
    return statistics.median(ratios) if ratios else float("nan")


def time_ratio(history: History) -> Optional[float]:
    """Median over sampled steps of the last recurrent layer's ``grad_h_ratio``.

    ``‖∂L/∂h_first‖ / ‖∂L/∂h_last‖`` of the layer the classifier reads; ``None`` when
    the history has no recurrent layer.
    """
    layers = [n for n in history.layers("recurrent") if "grad_h_ratio" in history.metrics(n)]
    if not layers:
        return None
    vals = [v for v in history.series(layers[-1], "grad_h_ratio")[1] if not math.isnan(v)]
    return statistics.median(vals) if vals else float("nan")


def _peak(history: History, metric: str) -> Optional[float]:
    vals = [v for layer in history.layers("activation") if metric in history.metrics(layer)
            for v in history.series(layer, metric)[1] if math.isfinite(v)]
    return max(vals) if vals else None


def _findings(monitor: Any) -> list[str]:
    """The monitor's findings, one entry per rule: ``"rule (layer, layer)"``, in first-seen order
    (holding ones first; those that held and resolved as ``"rule resolved (layer)"``).

    Empty when the installed gradscope has no ``Monitor.findings`` (gradscope.findings).
    """
    get = getattr(monitor, "findings", None)
    if get is None:
        return []
    by_rule: dict[str, list[str]] = {}
    for f in get():
        rule = str(getattr(f, "rule", f)) + (" resolved" if getattr(f, "resolved", False) else "")
        layer = getattr(f, "layer", None)
        layers = by_rule.setdefault(rule, [])
        if layer is not None and str(layer) not in layers:
            layers.append(str(layer))
    return [f"{rule} ({', '.join(layers)})" if layers else rule for rule, layers in by_rule.items()]


def _atomic_json(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _write_hparams(writer: Any, cfg: RunConfig, metrics: dict[str, float],
                   varying: frozenset[str] = frozenset()) -> None:
    """Register the run's config and final metrics with the HParams plugin, in this run.

    The hparams in ``varying`` are marked as differing between runs: TensorBoard
    lists those first and shows the first five as table columns.
    """
    from gradscope.writers.hparams import hparams_summaries

    hp = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (bool, int, float, str))}
    for s in hparams_summaries(hp, metrics, differs=varying, declared={}):
        writer.file_writer.add_summary(s)
    for k, v in metrics.items():
        writer.add_scalar(k, v, cfg.steps)
