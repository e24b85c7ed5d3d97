"""The HParams tab: a run's settings and its final health, so several runs compare in one table.

``watch(logdir=...)`` knows what a user would otherwise type into a spreadsheet:
:func:`run_settings` reads the model's class and parameter count, the optimizer's
class and its ``lr``/``momentum``/``betas``/``weight_decay`` (the first parameter
group's, the initial ``lr`` under a scheduler) and ``every`` at ``watch()``; the
monitor adds the batch size at the first training forward, and the TensorBoard
writer the activation families it saw. At close the writer registers them with
TensorBoard's HParams plugin (:func:`hparams_summaries`) with the run-level health
series (``0_health/...``) as its metrics: the plugin shows each one's last value, so
the table sorts runs by their final worst saturation, gradient ratio, update ratio.
``gradscope compare`` and the presets write their grid's settings the same way.

Example:
    >>> import torch, torch.nn as nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    >>> s = run_settings(model, opt, every=1)
    >>> s["model"], s["parameters"], s["optimizer"], s["lr"], s["beta1"], s["every"]
    ('Sequential', 58, 'Adam', 0.001, 0.9, '1')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Optional, Union

__all__ = ["LEAD", "SETTINGS", "Value", "hparams_summaries", "run_settings"]

#: What the HParams plugin takes as a setting's value.
Value = Union[bool, int, float, str]

#: Every setting a ``watch()`` run may have, with a value of its type. TensorBoard builds
#: the HParams table's columns from one run's experiment, picked arbitrarily, so every
#: run declares them all (a run without momentum leaves its cell empty).
SETTINGS: dict[str, Value] = {
    "model": "", "parameters": 0, "optimizer": "", "lr": 0.0, "momentum": 0.0, "beta1": 0.0,
    "beta2": 0.0, "weight_decay": 0.0, "batch_size": 0, "every": "", "activation_families": ""}
#: The settings marked as differing between runs: TensorBoard lists them first and shows
#: the first five as the table's columns.
LEAD = frozenset({"model", "optimizer", "lr", "batch_size", "activation_families"})


def run_settings(model: Any, optimizer: Any, *, every: Any) -> dict[str, Value]:
    """The settings of a run that gradscope can read at ``watch()`` (see the module's docstring)."""
    out: dict[str, Value] = {
        "model": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "every": _every(every),
    }
    if optimizer is not None:
        out["optimizer"] = type(optimizer).__name__
        group = optimizer.param_groups[0] if optimizer.param_groups else {}
        lr = group.get("initial_lr", group.get("lr"))
        for name, value in (("lr", lr), ("momentum", group.get("momentum")),
                            ("weight_decay", group.get("weight_decay"))):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[name] = float(value)
        betas = group.get("betas")
        if isinstance(betas, (tuple, list)) and len(betas) == 2:
            out["beta1"], out["beta2"] = float(betas[0]), float(betas[1])
    return out


def _every(every: Any) -> str:
    """``every`` as the user would write it: ``"10"``, ``"every(5)"``, or a schedule's name."""
    if isinstance(every, int):
        return str(every)
    name = str(getattr(every, "__qualname__", type(every).__name__))
    return name.split(".<locals>")[0]


def hparams_summaries(settings: Mapping[str, Any], metrics: Iterable[str],
                      differs: Optional[frozenset[str]] = None,
                      declared: Mapping[str, Value] = SETTINGS) -> list[Any]:
    """The three summaries (experiment, session start, session end) that register
    ``settings`` and the scalar tags ``metrics`` with the HParams plugin, for one run's
    event file. Values that are not bool, int, float or str are written as ``str``; the
    experiment also declares the settings of ``declared`` this run lacks; with
    ``differs``, those settings are marked as differing between runs (TensorBoard lists
    them first)."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from torch.utils.tensorboard.summary import hparams

    hp = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
          for k, v in settings.items() if v is not None}
    goals = dict.fromkeys(metrics, 0.0)
    _, ssi, sei = hparams(hp, goals)
    exp, _, _ = hparams({**declared, **hp}, goals)
    if differs is not None:
        plugin = exp.value[0].metadata.plugin_data
        data = HParamsPluginData.FromString(plugin.content)
        for info in data.experiment.hparam_infos:
            info.differs = info.name in differs
        plugin.content = data.SerializeToString()
    return [exp, ssi, sei]
