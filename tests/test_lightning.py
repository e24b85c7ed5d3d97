"""The PyTorch Lightning callback: attach at fit start, step with the trainer, detach always."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pl = pytest.importorskip("pytorch_lightning")
from pytorch_lightning.plugins.precision import MixedPrecision  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from gradscope import watch  # noqa: E402
from gradscope.integrations.lightning import GradscopeCallback  # noqa: E402

STEPS, ACCUMULATE, BATCH = 4, 2, 8


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(STEPS * ACCUMULATE * BATCH, 6, generator=g),
                         torch.randint(0, 3, (STEPS * ACCUMULATE * BATCH,), generator=g))


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3))


class Tiny(pl.LightningModule):
    """Its training_step calls a submodule, not ``self(x)``; ``poison`` steps get an inf loss."""

    def __init__(self, fail_at: int = -1, poison: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.net = net()
        self.fail_at, self.poison = fail_at, poison

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if batch_idx == self.fail_at:
            raise RuntimeError("boom in training_step")
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        return loss * math.inf if batch_idx // ACCUMULATE in self.poison else loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(module: Tiny, tmp_path: Path, **kw: Any) -> tuple[GradscopeCallback, Any]:
    cb = GradscopeCallback(summary=False)
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, callbacks=[cb],
                         logger=pl.loggers.TensorBoardLogger(str(tmp_path)),
                         accumulate_grad_batches=ACCUMULATE, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         log_every_n_steps=1, **kw)
    trainer.fit(module, DataLoader(data(), batch_size=BATCH))
    return cb, trainer


def manual() -> Any:
    """The same training written by hand: the loss of each micro-batch divided by ACCUMULATE."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = list(DataLoader(data(), batch_size=BATCH))
    with watch(model, optimizer=opt, summary=False) as mon:
        for s in range(STEPS):
            opt.zero_grad()
            for x, y in loader[s * ACCUMULATE:(s + 1) * ACCUMULATE]:
                (nn.functional.cross_entropy(model(x), y) / ACCUMULATE).backward()
            opt.step()
    return mon.history


def values(h: Any, prefix: str = "") -> dict[tuple[str, str], list[float]]:
    return {(layer.removeprefix(prefix), m): h.series(layer, m)[1]
            for layer in h.layers() if layer != "scaler" for m in h.metrics(layer)}


def hooks(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_steps_with_the_trainer_and_gradient_accumulation(tmp_path: Path) -> None:
    module = Tiny()
    cb, trainer = fit(module, tmp_path)
    assert cb.monitor is None and hooks(module) == 0  # detached at the end
    assert cb.history is not None and cb.history.steps() == list(range(STEPS))
    got, want = values(cb.history, "net."), values(manual())
    assert got.keys() == want.keys()
    for key, vs in want.items():
        assert got[key] == pytest.approx(vs, rel=1e-5, abs=1e-7, nan_ok=True), key
    # gradscope's events sit in the logger's run: one TensorBoard run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trainer.logger.log_dir))
    acc.Reload()
    assert "grad_norm/net.0" in acc.Tags()["scalars"]


def test_detaches_when_fit_raises(tmp_path: Path) -> None:
    module = Tiny(fail_at=3)
    cb = GradscopeCallback(summary=False)
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, callbacks=[cb],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    with pytest.raises(RuntimeError, match="boom in training_step"):
        trainer.fit(module, DataLoader(data(), batch_size=BATCH))
    assert cb.monitor is None and hooks(module) == 0
    assert cb.history is not None and cb.history.steps() == [0, 1, 2]  # flushed at the exception


def test_fp16_mixed_with_a_grad_scaler(tmp_path: Path) -> None:
    """The scaler path ("16-mixed" needs CUDA in Lightning; here its plugin with a CPU scaler)."""
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12))
    cb, _ = fit(Tiny(poison=(2,)), tmp_path, plugins=[plugin])
    h = cb.history
    assert h.series("scaler", "skipped") == (list(range(STEPS)), [0.0, 0.0, 1.0, 0.0])
    assert h.series("scaler", "scale")[1] == [2.0**12, 2.0**12, 2.0**12, 2.0**11]
    assert set(h.series("net.0", "grad_norm")[0]) == {0, 1, 3}  # no optimizer step at 2
    ref = values(manual())  # fp32, no scaler: the same units up to fp16 rounding
    for layer, metric in (("net.1", "grad_out_norm"), ("net.0", "grad_norm")):
        steps, vs = h.series(layer, metric)
        for s, v in zip(steps, vs):
            if s < 2:  # before the poisoned step the two runs trained alike
                assert v == pytest.approx(ref[(layer.removeprefix("net."), metric)][s], rel=2e-2)
    from gradscope.findings import analyze

    rules = {(f.severity, f.rule) for f in analyze(h)}
    assert ("info", "scaler_skipped") in rules and not any(r == "nonfinite" for _, r in rules)


def test_bf16_mixed_on_cpu(tmp_path: Path) -> None:
    cb, trainer = fit(Tiny(), tmp_path, precision="bf16-mixed")
    assert getattr(trainer.precision_plugin, "scaler", None) is None
    h = cb.history
    assert h.steps() == list(range(STEPS)) and "scaler" not in h.layers()
    ref = values(manual())
    for s, v in zip(*h.series("net.3", "grad_out_norm")):
        assert v == pytest.approx(ref[("3", "grad_out_norm")][s], rel=5e-2)
