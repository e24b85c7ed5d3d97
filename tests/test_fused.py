"""watch(fused="on"): compiled statistics kernels give the eager path's values, and fall back when compiling fails."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import gradscope
from gradscope import fused as fused_mod
from gradscope.fused import Fuser


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))


def _run(mode: str, steps: int = 3) -> dict[tuple[int, str, str], float]:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    with gradscope.watch(model, optimizer=opt, fused=mode, summary=False) as mon:
        for _ in range(steps):
            opt.zero_grad()
            x = torch.randn(32, 12, generator=gen) * 3  # some tanh units saturate
            model(x).square().mean().backward()
            opt.step()
    h = mon.history
    return {(s, layer, m): v for layer in h.layers() for m in h.metrics(layer)
            for s, v in zip(*h.series(layer, m))}


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADSCOPE_FUSED", raising=False)
    monkeypatch.setattr(fused_mod, "_state", {"broken": None, "announced": False})


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if math.isnan(a[k]):
            assert math.isnan(b[k]), k
        else:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k


def test_compiled_kernels_give_the_eager_values(capsys: pytest.CaptureFixture[str]) -> None:
    eager = _run("off")
    compiled = _run("strict")  # raises if it could not compile: the compiled path really ran
    _assert_same(eager, compiled)
    assert "compiled fused statistics kernels with torch.compile" in capsys.readouterr().err


def test_a_compiler_that_fails_falls_back_to_eager_with_one_warning(
        monkeypatch: pytest.MonkeyPatch) -> None:
    eager = _run("off")

    def broken(fn, **kwargs):  # what a machine without a compiler gives
        def call(*args):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(fused_mod, "_kernels", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = _run("on")
    said = [w for w in caught if "cannot compile fused statistics" in str(w.message)]
    assert len(said) == 1 and "InvalidCxxCompiler" in str(said[0].message)
    _assert_same(eager, fallback)
    monkeypatch.setattr(fused_mod, "_state", {"broken": None, "announced": False})
    with pytest.warns(RuntimeWarning, match="stopped monitoring.*InvalidCxxCompiler"):
        _run("strict")  # no fallback: the hook's error, handled as any hook error


def test_modes_are_checked_and_the_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"watch\(fused='yes'\): pass 'off'"):
        gradscope.watch(_model(), fused="yes")
    assert not Fuser().enabled
    monkeypatch.setenv("GRADSCOPE_FUSED", "on")
    assert Fuser("off").mode == "on"
    monkeypatch.setenv("GRADSCOPE_FUSED", "maybe")
    with pytest.raises(ValueError, match="GRADSCOPE_FUSED='maybe'"):
        Fuser()
