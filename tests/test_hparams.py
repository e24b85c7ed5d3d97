"""The HParams tab of a ``watch()`` run (issue 25.5): its settings and its health series as
metrics, read back from the event file the way TensorBoard's HParams plugin reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

import gradscope
from gradscope.writers.hparams import run_settings


def _plugin(run: Path) -> tuple[Any, dict[str, Any], list[str]]:
    """The experiment, the session's hparams and the metric tags of one run's HParams data."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    acc = EventAccumulator(str(run))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    exp = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
          for k, v in start.session_start_info.hparams.items()}
    return exp, hp, [m.name.tag for m in exp.metric_infos]


def _train(logdir: Path, act: type[nn.Module], opt_kind: str, **kw: Any) -> gradscope.Monitor:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), act(), nn.Linear(12, 3))
    opt: torch.optim.Optimizer = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
                                  if opt_kind == "sgd" else
                                  torch.optim.Adam(model.parameters(), lr=3e-4, betas=(0.8, 0.99)))
    with gradscope.watch(model, optimizer=opt, logdir=logdir, summary=False, flush_every=2,
                         histogram_every=None, **kw) as mon:
        for _ in range(4):
            opt.zero_grad()
            model(torch.randn(16, 6)).pow(2).mean().backward()
            opt.step()
    return mon


def test_a_watch_run_fills_the_hparams_table(tmp_path: Path) -> None:
    _train(tmp_path / "sgd", nn.ReLU, "sgd", every=2)
    _train(tmp_path / "adam", nn.Tanh, "adam")
    exp, hp, metrics = _plugin(tmp_path / "sgd")
    assert hp == {"model": "Sequential", "parameters": 6 * 12 + 12 + 12 * 3 + 3,
                  "optimizer": "SGD", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0,
                  "batch_size": 16.0, "every": "2", "activation_families": "relu"}
    assert {"0_health/worst_saturation", "0_health/worst_dead_units",
            "0_health/backprop_log10_ratio", "0_health/min_update_ratio_log10"} <= set(metrics)
    exp2, hp2, metrics2 = _plugin(tmp_path / "adam")
    # both runs declare the same columns, whichever one TensorBoard picks
    assert metrics2 == metrics and exp2.hparam_infos == exp.hparam_infos
    assert {h.name for h in exp.hparam_infos} == set(hp) | {"beta1", "beta2"}
    assert {h.name for h in exp.hparam_infos if h.differs} == {  # the table's first columns
        "model", "optimizer", "lr", "batch_size", "activation_families"}
    assert (hp2["optimizer"], hp2["lr"], hp2["beta1"], hp2["beta2"], hp2["every"],
            hp2["activation_families"]) == ("Adam", 3e-4, 0.8, 0.99, "1", "tanh")
    assert "momentum" not in hp2


def test_the_settings_of_a_schedule_and_a_scheduler() -> None:
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.05
    s = run_settings(model, opt, every=gradscope.every(5))
    assert s["lr"] == 0.1 and s["every"] == "every(5)"  # the initial lr, not the decayed one
    assert run_settings(model, None, every=gradscope.log_schedule())["every"] == "log_schedule"
    assert "optimizer" not in run_settings(model, None, every=1)
