"""Mixed precision: a GradScaler's units, skipped steps and the step's alignment."""

from __future__ import annotations

import math
import sys
import warnings
from typing import Any, Optional

import pytest
import torch
from torch import nn

from gradscope import stats, watch
from tests.fixtures.models import mlp

N = 8  # iterations per run


def batches(n: int = N) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 6, generator=g) * (0.5 + 0.1 * i) for i in range(n)]  # distinct per iteration


def run(scaler: Optional[torch.amp.GradScaler], *, inject: dict[int, float] | None = None,
        nan_grad_at: set[int] | None = None, lr: float = 0.0, fused: bool = False,
        monitor: bool = True, n: int = N, **options: Any) -> Any:
    """Train a tanh MLP; ``inject[i]`` multiplies iteration i's loss (inf: an inf gradient),
    ``nan_grad_at``: a NaN in the gradient reaching the first activation at those iterations."""
    torch.manual_seed(0)
    model = mlp(nn.Tanh, depth=2, width=12, d_in=6, d_out=3)
    opt: torch.optim.Optimizer = (torch.optim.Adam(model.parameters(), lr=lr, fused=True) if fused
                                  else torch.optim.SGD(model.parameters(), lr=lr))
    it = [0]

    def poison(grad: torch.Tensor) -> torch.Tensor:
        if nan_grad_at and it[0] in nan_grad_at:
            grad = grad.clone()
            grad[0, 0] = float("nan")
        return grad

    # registered before watch(): its tensor hook runs before the monitor's and poisons what it sees
    def on_forward(m: nn.Module, a: Any, out: torch.Tensor) -> None:
        out.register_hook(poison)

    model[1].register_forward_hook(on_forward)
    mon = watch(model, optimizer=opt, scaler=scaler, summary=False, **options) if monitor else None
    try:
        for i, x in enumerate(batches(n)):
            it[0] = i
            opt.zero_grad()
            loss = model(x).pow(2).mean() * (inject or {}).get(i, 1.0)
            _backward_and_step(loss, opt, scaler)
    finally:
        if mon is not None:
            mon.close()
    return mon


def by_step(mon: Any, layer: str, metric: str) -> dict[int, float]:
    return dict(zip(*mon.history.series(layer, metric)))


@pytest.mark.parametrize("fused", [False, True], ids=["sgd", "adam_fused"])
def test_gradients_are_in_true_units_under_a_scaler(fused: bool) -> None:
    plain = run(None, fused=fused)
    scaled = run(torch.amp.GradScaler("cpu", init_scale=2.0**16), fused=fused)
    assert by_step(scaled, "scaler", "scale") == {i: 2.0**16 for i in range(N)}
    for layer, metric in [("1", "grad_out_norm"), ("1", "grad_out_rms"), ("3", "grad_out_norm"),
                          ("0", "grad_norm"), ("2", "grad_norm"), ("4.weight", "grad_norm")]:
        want, got = by_step(plain, layer, metric), by_step(scaled, layer, metric)
        assert want.keys() == got.keys() == set(range(N)), (layer, metric)
        for s in want:
            assert got[s] == pytest.approx(want[s], rel=1e-5), (layer, metric, s)


def test_skipped_steps_are_recorded_and_aligned() -> None:
    """Injected inf gradients at iterations 2, 5, 6: three skipped steps, one step per iteration."""
    inject = {2: math.inf, 5: math.inf, 6: math.inf}
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    mon = run(scaler, inject=inject)
    skipped = by_step(mon, "scaler", "skipped")
    assert skipped == {i: float(i in inject) for i in range(N)}
    scale = by_step(mon, "scaler", "scale")  # halved after each skipped step
    assert [scale[i] for i in range(N)] == [256, 256, 256, 128, 128, 128, 64, 32]
    # Alignment: step i holds iteration i's activations *and* its back-propagated gradient.
    ref = reference_values()
    for i in range(N):
        assert by_step(mon, "1", "mean")[i] == pytest.approx(ref[i][0], rel=1e-5)
        if i not in inject:
            assert by_step(mon, "1", "grad_out_norm")[i] == pytest.approx(ref[i][1], rel=1e-5)
    assert set(by_step(mon, "0", "grad_norm")) == set(range(N)) - set(inject)  # no optimizer step
    found = [f for f in mon.findings() if not f.rule.startswith("update_ratio")]  # lr = 0
    assert [(f.severity, f.rule) for f in found] == [("info", "scaler_skipped")]
    assert found[0].message.startswith(f"GradScaler skipped 3 of {N} steps (first at step 2")


def test_a_long_run_reports_exactly_the_injected_skips() -> None:
    """1,000 iterations, 25 injected overflows (some back to back), flushed every 50 steps."""
    n = 1000
    inject = {int(i): math.inf for i in torch.randperm(n, generator=torch.Generator().manual_seed(3))[:25]}
    inject.update({500: math.inf, 501: math.inf, 502: math.inf})  # a run of three
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=100)
    mon = run(scaler, inject=inject, n=n, flush_every=50, histogram_every=None)
    skipped = by_step(mon, "scaler", "skipped")
    assert sorted(skipped) == list(range(n))  # one step per iteration, none lost or merged
    assert {s for s, v in skipped.items() if v} == set(inject)
    found = [f for f in mon.findings() if f.rule == "scaler_skipped"]
    assert [f.severity for f in found] == ["info"]
    assert found[0].message.startswith(f"GradScaler skipped {len(inject)} of 1,000 steps")


def reference_values() -> list[tuple[float, float]]:
    """Per iteration, without gradscope: mean of the first tanh's output and ‖∂L/∂y‖ (lr = 0)."""
    torch.manual_seed(0)
    model = mlp(nn.Tanh, depth=2, width=12, d_in=6, d_out=3)
    out = []
    for x in batches():
        y = model[1](model[0](x))
        y.retain_grad()
        model[2:](y).pow(2).mean().backward()
        out.append((y.mean().item(), y.grad.norm().item()))
    return out


def test_a_nan_activation_gradient_is_a_skipped_step_not_an_error() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    mon = run(scaler, nan_grad_at={3})
    assert by_step(mon, "scaler", "skipped") == {i: float(i == 3) for i in range(N)}
    assert by_step(mon, "1", "grad_out_nonfinite")[3] == 1.0
    found = [f for f in mon.findings() if not f.rule.startswith("update_ratio")]  # lr = 0
    assert [(f.severity, f.rule) for f in found] == [("info", "scaler_skipped")]


def test_nonfinite_forward_values_stay_an_error_on_a_skipped_step() -> None:
    from gradscope.findings.amp import scaler_skipped  # noqa: F401  (the rule exists)

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    torch.manual_seed(0)
    model = mlp(nn.Tanh, depth=2, width=12, d_in=6, d_out=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with watch(model, optimizer=opt, scaler=scaler, summary=False) as mon:
        for i, x in enumerate(batches()):
            opt.zero_grad()
            if i == 4:
                x = x.clone()
                x[0, 0] = math.nan
            scaler.scale(model(x).pow(2).mean()).backward()
            scaler.step(opt)
            scaler.update()
    rules = {(f.severity, f.rule) for f in mon.findings()
             if f.rule in ("scaler_skipped", "nonfinite")}
    assert rules == {("info", "scaler_skipped"), ("error", "nonfinite")}


def test_every_step_skipped_is_a_warning() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    mon = run(scaler, inject={i: math.inf for i in range(N)})
    found = [f for f in mon.findings() if f.rule == "scaler_skipped"]
    from gradscope.findings.amp import SKIPPED_RUN

    assert N < SKIPPED_RUN  # a short run: still the scale settling
    assert [f.severity for f in found] == ["info"]
    from gradscope.findings.amp import scaler_skipped
    from gradscope.findings.thresholds import Thresholds
    from gradscope.history import History

    h = History()
    for s in range(30):
        h.add(s, "scaler", "skipped", float(s >= 12))
    (f,) = scaler_skipped(h, Thresholds())
    assert (f.severity, f.first_step) == ("warning", 12)
    assert "skipped every step since step 12 (18 in a row" in f.message


def test_update_is_restored_at_detach_and_after_an_exception() -> None:
    scaler = torch.amp.GradScaler("cpu")
    model = mlp(nn.ReLU, depth=1, width=4, d_in=3, d_out=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="boom"):
        with watch(model, optimizer=opt, scaler=scaler, summary=False):
            assert "update" in scaler.__dict__
            raise RuntimeError("boom")
    assert "update" not in scaler.__dict__
    mon = watch(model, optimizer=opt, scaler=scaler, summary=False)
    mon.detach()
    mon.detach()
    assert "update" not in scaler.__dict__


def test_a_disabled_scaler_changes_nothing() -> None:
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    mon = run(scaler)
    assert mon.history.steps() == list(range(N))
    assert "scaler" not in mon.history.layers()


def test_scaler_option_errors() -> None:
    model = mlp(nn.ReLU, depth=1, width=4, d_in=3, d_out=2)
    with pytest.raises(TypeError, match=r"watch\(scaler=.*\) needs optimizer="):
        watch(model, scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(TypeError, match=r"pass the torch.amp.GradScaler"):
        watch(model, scaler=object())


def test_no_host_sync_outside_flush_with_a_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    """gradscope's own code reads no value outside flush() under a scaler (the accelerator path).

    ``scaler.step`` itself reads its inf flags (torch's own sync); only reads made from
    gradscope's modules count.
    """
    monkeypatch.setattr(stats, "host_readable", lambda t: False)
    torch.manual_seed(0)
    model = mlp(nn.Tanh, depth=2, width=12, d_in=6, d_out=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    mon = watch(model, optimizer=opt, scaler=scaler, flush_every=1000, summary=False)
    calls: list[str] = []
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        orig = getattr(torch.Tensor, name)

        def spy(self: torch.Tensor, *a: Any, _n: str = name, _o: Any = orig, **k: Any) -> Any:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("gradscope"):
                calls.append(f"{caller}.{_n}")
            return _o(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    for i, x in enumerate(batches()):
        opt.zero_grad()
        loss = model(x).pow(2).mean() * (math.inf if i == 2 else 1.0)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert calls == []
    monkeypatch.undo()
    mon.close()
    assert mon.history.steps() == list(range(N))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp16_autocast_true_units() -> None:  # pragma: no cover - no GPU in CI
    def go(scaled: bool) -> Any:
        torch.manual_seed(0)
        model = mlp(nn.Tanh, depth=2, width=12, d_in=6, d_out=3).cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        scaler = torch.amp.GradScaler("cuda") if scaled else None
        with watch(model, optimizer=opt, scaler=scaler, summary=False) as mon:
            for i, x in enumerate(batches()):
                opt.zero_grad()
                with torch.autocast("cuda", dtype=torch.float16):
                    loss = model(x.cuda()).float().pow(2).mean()
                if scaler is None:
                    loss.backward()
                    opt.step()
                else:
                    (scaler.scale(loss) * (math.inf if i == 3 else 1.0)).backward()
                    scaler.step(opt)
                    scaler.update()
        return mon

    plain, scaled = go(False), go(True)
    assert by_step(scaled, "scaler", "skipped") == {i: float(i == 3) for i in range(N)}
    for s, v in by_step(plain, "1", "grad_out_norm").items():
        if s != 3:
            assert by_step(scaled, "1", "grad_out_norm")[s] == pytest.approx(v, rel=1e-2)


def test_skipped_count_says_when_older_steps_were_thinned() -> None:
    from gradscope import Retention
    from gradscope.findings import Thresholds
    from gradscope.findings.amp import scaler_skipped
    from gradscope.history import History

    h = History(Retention(recent=50))
    for step in range(400):
        h.add(step, "scaler", "skipped", float(step in (0, 399)))
        h.add(step, "scaler", "scale", 1.0)
    kept = len(h.series("scaler", "skipped")[0])
    assert kept < 400 and h.added("scaler", "skipped") == 400
    msg = scaler_skipped(h, Thresholds())[0].message
    assert f"of {kept:,} steps kept in memory (older ones thinned" in msg


@pytest.mark.parametrize("given", ["optimizer", "nothing", "scaler", "no-scaler-used"])
def test_a_forgotten_scaler_is_said_once_at_the_first_step(given: str) -> None:
    """Issue 23.6: ``scaler.step(opt)`` with a GradScaler watch() was not given: one warning
    at the first step, saying to pass ``scaler=``; none when it was given or none is used."""
    torch.manual_seed(0)
    model = mlp(nn.Tanh, depth=2, width=12, d_in=6, d_out=3)
    other = nn.Linear(2, 2)  # another model's optimizer steps first: not this model's
    opt, opt_other = (torch.optim.SGD(m.parameters(), lr=0.01) for m in (model, other))
    scaler = torch.amp.GradScaler("cpu")
    options: dict[str, Any] = {"optimizer": opt} if given == "optimizer" else \
        {"optimizer": opt, "scaler": scaler} if given == "scaler" else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with watch(model, summary=False, **options):
            for x in batches(4):
                opt.zero_grad()
                other(torch.randn(3, 2)).sum().backward()
                opt_other.step()
                loss = model(x).pow(2).mean()
                _backward_and_step(loss, opt, None if given == "no-scaler-used" else scaler)
    said = [str(w.message) for w in caught if "GradScaler" in str(w.message)]
    assert len(said) == (1 if given in ("optimizer", "nothing") else 0), said
    assert all("scaler=scaler" in m for m in said)


def _backward_and_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: Any) -> None:
    """``loss.backward(); opt.step()``, through ``scaler`` when there is one."""
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
