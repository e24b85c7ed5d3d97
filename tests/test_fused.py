"""The fused path in the monitor (watch(fused=True), the default on CUDA), on the CPU.

CI has no GPU: these tests take the accelerator code path on CPU tensors (no host reads,
no CPU scratch buffers, as ``benchmarks/kernel_counts.py`` does) with the Triton kernels
run by Triton's interpreter (:func:`gradscope.kernels.interpreted`), and compare what
the monitor records with the eager path's records, count the launches against the budget
of issue 22, and check the off switch and the old ``fused=`` strings.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gradscope
from gradscope import kernels, stats
from gradscope.kernels.engine import LAUNCHES
from tests.fixtures.triton import needs_triton

pytestmark = [
    needs_triton,
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]


@pytest.fixture
def accelerator_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The accelerator code path on CPU tensors, the kernels interpreted."""
    for name in ("host_readable", "uses_scratch", "cpu_kernels"):
        monkeypatch.setattr(stats, name, lambda t: False)
    with kernels.interpreted():
        yield


class Net(nn.Module):
    """Conv + ReLU (channels), GELU, Tanh, Sigmoid, LeakyReLU and a Softmax (eager)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(6 * 5 * 5, 24)
        self.gelu = nn.GELU()
        self.fc2 = nn.Linear(24, 16)
        self.tanh = nn.Tanh()
        self.fc3 = nn.Linear(16, 12)
        self.sig = nn.Sigmoid()
        self.fc4 = nn.Linear(12, 8)
        self.leaky = nn.LeakyReLU(0.1)
        self.soft = nn.Softmax(dim=-1)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv(x)).flatten(1)
        h = self.tanh(self.fc2(self.gelu(self.fc1(h))))
        h = self.leaky(self.fc4(self.sig(self.fc3(h))))
        return self.out(self.soft(h) * h)


def run(fused: bool, steps: int = 4, poison: bool = False, device: str = "cpu",
        each_step: Callable[[], Any] = nullcontext, **options: Any
        ) -> dict[tuple[int, str, str], float]:
    torch.manual_seed(0)
    model = Net().to(device)
    with torch.no_grad():
        model.conv.bias[:2] = -50.0  # two dead channels
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    opts = dict(summary=False, findings=False, fused=fused,
                definitions=gradscope.Definitions(dead_window=2))
    opts.update(options)
    with gradscope.watch(model, optimizer=opt, **opts) as mon:
        for step in range(steps):
            x = torch.randn(5, 2, 5, 5, generator=gen) * 2
            if poison and step == 3:
                x[0, 0, 1, 1] = math.nan
            x = x.to(device)
            with each_step():
                opt.zero_grad()
                model(x).square().mean().backward()
                opt.step()
    h = mon.history
    return {(s, layer, m): v for layer in h.layers() for m in h.metrics(layer)
            for s, v in zip(*h.series(layer, m))}


def assert_same(eager: dict, fused: dict) -> None:
    assert eager.keys() == fused.keys()
    for k, a in eager.items():
        b = fused[k]
        if math.isnan(a):
            assert math.isnan(b), k
        else:
            assert b == pytest.approx(a, rel=1e-5, abs=1e-6), (k, a, b)


@pytest.mark.parametrize("every,poison", [(1, False), (2, True)], ids=["every1", "every2_nan"])
def test_fused_records_equal_the_eager_records(accelerator_path: None, every: int,
                                               poison: bool) -> None:
    launched = LAUNCHES.copy()
    fused = run(True, every=every, poison=poison)
    assert LAUNCHES["forward_partials"] > launched["forward_partials"]  # the kernels ran
    eager = run(False, every=every, poison=poison)
    assert_same(eager, fused)
    assert any(m == "dead_units_window" and v > 0 for (_, _, m), v in fused.items())
    if poison:  # the NaN step is unsampled: the every-step check names the call-sites
        assert fused.get((3, "relu", "nonfinite_check")) == 1.0, sorted(
            k for k in fused if k[0] == 3)


def test_check_all_probes_each_output_in_one_launch(accelerator_path: None) -> None:
    before = LAUNCHES.copy()
    fused = run(True, every=100, poison=True, check_nonfinite="all")
    assert LAUNCHES["grad_partials"] > before["grad_partials"]  # the probes
    assert_same(run(False, every=100, poison=True, check_nonfinite="all"), fused)


def test_off_switch_and_no_triton_take_the_eager_path(accelerator_path: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    before = sum(LAUNCHES.values())
    eager = run(False, steps=2)
    assert sum(LAUNCHES.values()) == before
    monkeypatch.setattr(kernels, "_modules", {True: None, False: None})  # triton missing
    assert not kernels.available(torch.device("cpu"))
    assert_same(eager, run(True, steps=2))
    assert sum(LAUNCHES.values()) == before


def test_old_fused_strings_are_deprecated() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    for old, now in (("off", False), ("on", True), ("strict", True)):
        with pytest.warns(DeprecationWarning, match="torch.compile path is gone"):
            mon = gradscope.watch(model, fused=old, summary=False)
        assert mon.options.fused is now
        mon.close()
    with pytest.raises(TypeError, match=r"watch\(fused='fast'\)"):
        gradscope.watch(model, fused="fast")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradscope.watch(model, fused=False, summary=False).close()


def _kernel_counts() -> Any:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_counts.py"
    spec = importlib.util.spec_from_file_location("kernel_counts_fused", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family", ["ReLU", "GELU", "Tanh"])
def test_launch_budget(family: str) -> None:
    """Issue 22's budget, counted on the accelerator path (ATen operations + Triton launches):
    3 kernels per call-site on a sampled step (forward and backward), plus one test of the
    model's outputs per forward; at most 20 for all parameters and the step's end; 1 per
    call-site on an unsampled step (plus the outputs' test); no host read before the flush."""
    kc = _kernel_counts()
    depth = 3
    base = kc.count_step(kc.FAMILIES[family], None, depth=depth, width=16, batch=4)
    with kernels.interpreted():
        real = (stats.host_readable, stats.uses_scratch, stats.cpu_kernels)
        stats.host_readable = stats.uses_scratch = stats.cpu_kernels = lambda t: False
        try:
            sampled = kc.count_step(kc.FAMILIES[family], kc._fused, depth=depth, width=16, batch=4)
            unsampled = kc.count_step(kc.FAMILIES[family], kc._fused_unsampled, depth=depth,
                                      width=16, batch=4)
        finally:
            stats.host_readable, stats.uses_scratch, stats.cpu_kernels = real

    def extra(c: Any, phase: str) -> int:
        return c.ops[phase] - base.ops[phase]

    assert sampled.launches["forward"] == depth + 1  # one per call-site and the outputs' test
    assert extra(sampled, "forward") == depth + 1  # and nothing else
    assert extra(sampled, "backward") <= 2 * depth  # grad_out and grad_in: one launch each
    assert extra(sampled, "optimizer") <= 20  # parameters, the finisher, stacking the step
    assert extra(unsampled, "forward") + extra(unsampled, "backward") <= depth + 1
    for c in (sampled, unsampled):
        assert sum(v for k, v in c.reads.items() if k != "flush") == 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fused_records_equal_eager_without_syncs() -> None:  # pragma: no cover - no GPU in CI
    """On CUDA the fused path is the default: the same records as fused=False, kernels
    launched, and no host synchronisation inside the steps (only at the flush)."""
    before = LAUNCHES.copy()

    @contextmanager
    def no_sync() -> Iterator[None]:
        torch.cuda.set_sync_debug_mode("error")  # a sync raises (the hooks' errors are raised
        try:  # with strict=True)
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")

    fused = run(True, every=2, poison=True, device="cuda", flush_every=10**6, each_step=no_sync,
                strict=True)
    assert LAUNCHES["forward_partials"] > before["forward_partials"]
    assert_same(run(False, every=2, poison=True, device="cuda"), fused)


def test_a_kernel_that_fails_falls_back_to_eager_with_one_warning(
        accelerator_path: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that cannot compile or launch (here: the finisher) never raises in the
    user's step: one warning, what it would have finished reads NaN, the eager path after."""
    from gradscope.kernels import engine

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no kernel image for this device")

    real = engine._launch
    monkeypatch.setattr(engine, "_launch", lambda name, *a, **k: broken() if name == "finish"
                        else real(name, *a, **k))
    with pytest.warns(RuntimeWarning, match="fused statistics kernels"):
        got = run(True, steps=3)
    eager = run(False, steps=3)
    def after(h: dict) -> dict:  # the unit windows start again on the eager path
        return {k: v for k, v in h.items() if k[0] >= 1 and not k[2].endswith("_window")}

    assert_same(after(eager), after(got))
    assert any(math.isnan(v) for k, v in got.items() if k[0] == 0 and k[2] == "mean")
