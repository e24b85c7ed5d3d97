"""Faults injected into a watched run: each asserts the value, the message, or that nothing was lost.

One test per defect of issue #11 (bad input, unsampled NaN, threads, dropped
monitors, long runs); the writer's and the report's faults are in
``test_writers.py``, ``test_sinks.py`` and ``test_report.py``.
"""

from __future__ import annotations

import gc
import math
import threading
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

import gradscope
from gradscope import lifecycle
from gradscope.findings import analyze
from gradscope.findings.sink import FindingsSink
from gradscope.history import History, Retention
from gradscope.writers import MemoryWriter


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ------------------------------------------------------------------ bad input
def test_a_model_watched_twice_is_refused() -> None:
    model = _mlp()
    with gradscope.watch(model, summary=False) as first:
        with pytest.raises(RuntimeError, match=r"already watched.*Close that one first"):
            gradscope.watch(model, summary=False)
        assert first.attached
    with gradscope.watch(model, summary=False):  # once closed, it can be watched again
        pass


def test_a_refused_second_watch_leaves_no_trace(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 25.7: the refused monitor prints no summary and no warning, when collected or at
    exit, and the error names the hooked modules before the first forward (not
    ``activation_sites=0``)."""
    model = _mlp()
    first = gradscope.watch(model, logdir=tmp_path / "a")
    model(torch.randn(2, 4)).sum().backward()
    model(torch.randn(2, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match=r"activation_sites=2,"):
            gradscope.watch(model, logdir=tmp_path / "b")
        gc.collect()
        lifecycle.close_open()  # what runs at exit: closes the first only
    assert not first.attached and caught == []
    err = capsys.readouterr().err
    assert err.count("no findings") == 1 and str(tmp_path / "b") not in err
    with gradscope.watch(model, summary=False) as mon:
        assert "activation_modules=2 (call-sites are found at the first forward)" in repr(mon)
        model(torch.randn(2, 4))
        assert "activation_sites=2," in repr(mon)


@pytest.mark.parametrize("kwargs, match", [
    ({"include": "encoder.*"}, r"selects no activation .*its modules are: 0, 1, 2, 3, 4"),
    ({"logdir": ""}, "empty path would write into the current directory"),
    ({"resume": True}, "pass logdir too"),
], ids=["include-matches-nothing", "empty-logdir", "resume-without-logdir"])
def test_bad_input_is_refused_with_the_fix(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        gradscope.watch(_mlp(), **kwargs)


def test_an_optimizer_of_another_model_is_refused() -> None:
    model, other = _mlp(), _mlp()
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="holds none of the model's 6 trainable parameters"):
        gradscope.watch(model, optimizer=opt)


def test_a_huge_dead_window_does_not_reach_the_users_forward() -> None:
    def run(window: int) -> list[float]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        with gradscope.watch(model, dead_window=window, summary=False) as mon:
            for _ in range(3):
                model(torch.randn(4, 4)).sum().backward()
        assert mon.history.steps() == [0, 1, 2]
        return mon.history.series("1", "dead_units_window")[1]

    # only the units that never fired count, as with any window longer than the run
    assert run(10**30) == run(1000)


def test_a_raising_schedule_warns_once_and_stays_out_of_the_forward() -> None:
    def schedule(step: int) -> bool:
        if step == 2:
            raise ZeroDivisionError("bad schedule")
        return True

    model = _mlp()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradscope.watch(model, every=schedule, summary=False) as mon:
            for _ in range(4):
                model(torch.randn(4, 4)).sum().backward()
    said = [w for w in caught if "schedule" in str(w.message)]
    assert len(said) == 1 and "ZeroDivisionError: bad schedule" in str(said[0].message)
    assert mon.history.steps() == [0, 1, 3]  # step 2 not sampled, the rest recorded
    with gradscope.watch(model, every=schedule, strict=True, summary=False):
        model(torch.randn(4, 4)).sum().backward()
        model(torch.randn(4, 4)).sum().backward()
        with pytest.raises(ZeroDivisionError):
            model(torch.randn(4, 4))  # ends step 1: the schedule is asked about step 2


def test_a_dropped_monitor_is_closed_with_a_warning_and_loses_nothing() -> None:
    model = _mlp()
    sink = MemoryWriter()
    mon = gradscope.watch(model, sinks=[sink], flush_every=100, summary=False)
    for _ in range(3):
        model(torch.randn(4, 4)).sum().backward()
    assert _hook_count(model) > 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del mon
        gc.collect()
    assert any("garbage-collected without close()" in str(w.message) for w in caught)
    assert _hook_count(model) == 0
    model(torch.randn(4, 4)).sum().backward()  # no hook left to fail
    assert sorted({r.step for r in sink.records}) == [0, 1, 2]  # the queued steps were flushed


# ------------------------------------------------------ NaN at an unsampled step
class _Poison(nn.Module):
    """Replaces its input by ``make(x)`` at one call of the training loop (0-based; ``x *
    NaN``), or at every call from that one on (``after=True``); by ``other(x)`` (``x``) at
    the others."""

    def __init__(self, at: int, make: Callable[[torch.Tensor], torch.Tensor] = lambda x: x * math.nan,
                 after: bool = False,
                 other: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> None:
        super().__init__()
        self.at, self.make, self.after, self.other, self.calls = at, make, after, other, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        hit = self.calls - 1 >= self.at if self.after else self.calls - 1 == self.at
        return self.make(x) if hit else self.other(x)


def _raise(x: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("bad batch")


class _NanGrad(torch.autograd.Function):
    """The identity, whose backward returns NaN."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return g * math.nan


@pytest.mark.parametrize("every", [1, 5])
def test_a_nan_at_an_unsampled_step_is_found_at_its_step_and_layer(every: int) -> None:
    """NaN entering after act1 at step 7: the first non-finite value is at step 7, layer act2."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), _Poison(at=7), nn.Linear(8, 8), nn.Tanh(),
                          nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, optimizer=opt, every=every, summary=False) as mon:
        for _ in range(12):
            opt.zero_grad()
            model(torch.randn(4, 4)).sum().backward()
            opt.step()
    (f,) = [f for f in analyze(mon.history) if f.rule == "nonfinite"]
    assert (f.first_step, f.layer) == (7, "4")
    assert ("unsampled step" in f.message) == (every == 5)


def test_an_unsampled_nan_in_the_backward_names_the_deepest_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    with gradscope.watch(model, every=10, summary=False) as mon:
        for step in range(6):
            y = model(torch.randn(4, 4))
            (_NanGrad.apply(y) if step == 3 else y).sum().backward()
    (f,) = [f for f in analyze(mon.history) if f.rule == "nonfinite"]
    # Unsampled steps check the gradients at the parameters: the output layer "4" is the
    # first in backward order whose gradient is not finite.
    assert (f.first_step, f.layer) == (3, "4") and "parameter gradients" in f.message
    assert "unsampled step" in f.message
    assert mon.history.series("4", "grad_nonfinite_check")[0] == [3, 4, 5]  # never zeroed


@pytest.mark.parametrize("path", ["cpu", "accelerator"])
@pytest.mark.parametrize("where", ["forward", "backward"])
def test_the_every_step_check_is_exact_on_both_paths(path: str, where: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Step and layer of an unsampled NaN on the CPU path (a sum read on the host) and on the
    accelerator path (min/max and max-abs queued, nothing read before the flush); finite values
    whose sum overflows are never reported."""
    if path == "accelerator":
        from gradscope import stats

        monkeypatch.setattr(stats, "host_readable", lambda t: False)

    class Shrink(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 1e-38

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), _Poison(2, lambda x: x.sign() * 3e38, after=True), nn.ReLU(), Shrink(), nn.Linear(64, 8),
                          nn.Tanh(), _Poison(at=7 if where == "forward" else -1), nn.Linear(8, 2),
                          nn.Tanh())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, optimizer=opt, every=5, summary=False) as mon:
        for step in range(9):
            opt.zero_grad()
            y = model(torch.randn(16, 4))
            (_NanGrad.apply(y) if where == "backward" and step == 6 else y).mean().backward()
            opt.step()
    (f,) = [f for f in analyze(mon.history) if f.rule == "nonfinite"]
    want = (7, "8") if where == "forward" else (6, "7")
    assert (f.first_step, f.layer) == want and "unsampled step" in f.message
    assert "nonfinite_check" not in mon.history.metrics("2")  # 3e38s are finite: never checked bad
    assert mon.history.series("2", "max")[1][-1] == pytest.approx(3e38)  # step 5, sampled
    assert mon.history.series("2", "nonfinite")[1][-1] == 0.0


def test_huge_finite_gradients_are_not_reported_as_nonfinite() -> None:
    """Gradients of 1e38 are finite; their norm overflows ``float32`` (the CPU path's first test)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gradscope.watch(model, optimizer=opt, every=10, summary=False) as mon:
        for _ in range(3):
            opt.zero_grad()
            (model(torch.randn(1, 4)).sum() * 1e38).backward()
            assert torch.linalg.vector_norm(model[2].bias.grad).isinf()
            opt.step()
    assert not [f for f in analyze(mon.history) if f.rule == "nonfinite"]
    assert "grad_nonfinite_check" not in mon.history.metrics("2")


def test_a_nan_in_an_accumulated_micro_batch_is_found_at_its_step() -> None:
    """Two micro-batches per optimizer step; a NaN in the first one's gradient: one record,
    at that step (the check reads the accumulated gradients once, before the step)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gradscope.watch(model, optimizer=opt, every=10, summary=False) as mon:
        for step in range(4):
            opt.zero_grad()
            for micro in range(2):
                out = model(torch.randn(4, 4)).sum()
                (out * float("nan") if (step, micro) == (2, 0) else out).backward()
            opt.step()
    steps, _ = mon.history.series("2", "grad_nonfinite_check")
    assert steps[0] == 2 and steps.count(2) == 1


class _Masked(nn.Module):
    """A ReLU whose input gets a NaN at call ``at`` (0-based), masked to 0 after it by
    ``torch.where``: the model's output stays finite and so do its gradients (the masked
    elements get gradient 0, which ReLU's and the addition's backward pass on as 0)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.act, self.at, self.calls = nn.ReLU(), at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls - 1 == self.at:
            x = x + torch.tensor([math.nan] + [0.0] * (x.shape[-1] - 1))
        y = self.act(x)
        return torch.where(torch.isnan(y), torch.zeros_like(y), y)


@pytest.mark.parametrize("mode", [True, "all"])
def test_a_nan_masked_before_the_output_is_seen_with_all(mode: Any) -> None:
    """The default check holds activation outputs and tests them when the model's outputs
    are not finite: a NaN masked on the way (finite output, finite gradients) is seen only
    on sampled steps; ``check_nonfinite="all"`` tests each output at its call."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), _Masked(at=3), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, optimizer=opt, every=5, check_nonfinite=mode, summary=False) as mon:
        for _ in range(6):
            opt.zero_grad()
            model(torch.randn(4, 4)).sum().backward()
            opt.step()
            assert not mon._recorder.checks._held  # released when the forward ends
    assert all(torch.isfinite(p).all() for p in model.parameters())
    checked = mon.history.series("1.act", "nonfinite_check")[0] \
        if "nonfinite_check" in mon.history.metrics("1.act") else []
    assert checked == ([3] if mode == "all" else [])


def test_outputs_held_for_the_check_are_the_forwards_and_are_released() -> None:
    """The default check keeps references (no copies) to outputs their activation's own
    backward keeps (ReLU, tanh: their result) until the model's forward ends, then drops
    them. A frozen layer's output (no gradient: autograd does not keep it), GELU's (its
    backward keeps its input; the dropout after it would free the output) and a forward
    without autograd are tested at the call instead."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8),
                          nn.GELU(), nn.Dropout(0.1), nn.Linear(8, 2))
    model[0].requires_grad_(False)  # frozen: relu "1"'s output needs no gradient
    seen: list[list[str]] = []
    with gradscope.watch(model, every=10, summary=False, record_eval=True) as mon:
        model[7].register_forward_hook(
            lambda m, a, o: seen.append([site.name for site, _, _ in mon._recorder.checks._held]))
        for _ in range(3):
            model(torch.randn(4, 4)).sum().backward()
            assert not mon._recorder.checks._held
        with torch.no_grad():
            model(torch.randn(4, 4))
    assert seen[1:3] == [["3"], ["3"]] and seen[3] == []  # step 0 is sampled: nothing held
    sites = mon._recorder.sites
    assert (sites[("3", 0)].hold, sites[("5", 0)].hold) == (True, False)


def test_a_site_modified_in_place_after_its_call_is_checked_at_its_call() -> None:
    """An output changed in place later in the forward (its version counter moves; autograd
    allows it when no backward runs) is tested at its call from then on, so a NaN the later
    operation brings is not put on this site: the model's output names it."""

    torch.manual_seed(0)
    add_in_place = _Poison(5, lambda x: x.add_(math.nan), other=lambda x: x.add_(0.0))
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), add_in_place, nn.Linear(8, 2))
    with gradscope.watch(model, every=10, summary=False) as mon:  # a step per forward
        for _ in range(8):
            model(torch.randn(4, 4))
    assert mon._recorder.sites[("1", 0)].at_call  # learned at the first unsampled step
    assert "nonfinite_check" not in mon.history.metrics("1")  # finite when tanh returned
    (f,) = [f for f in analyze(mon.history) if f.rule == "nonfinite"]
    assert (f.first_step, f.layer) == (5, "(output)")


def test_outputs_not_finite_with_finite_activations_check_every_parameter() -> None:
    """A NaN added to a layer's input after the last activation reaches that layer's weight
    gradient but no bias gradient: the outputs were not finite and no activation output was,
    so that step's check reads every parameter's gradient and names the layer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), _Poison(
        6, lambda x: x + torch.tensor([math.nan] + [0.0] * 7)), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gradscope.watch(model, optimizer=opt, every=10, summary=False) as mon:
        for _ in range(8):
            opt.zero_grad()
            model(torch.randn(4, 4)).sum().backward()
            if mon.step == 6:
                assert torch.isfinite(model[3].bias.grad).all()  # the check's usual read
                assert not torch.isfinite(model[3].weight.grad).all()
            opt.step()
    assert mon.history.series("3", "grad_nonfinite_check")[0] == [6]
    (f,) = [f for f in analyze(mon.history) if f.rule == "nonfinite"]
    assert (f.first_step, f.layer) == (6, "3") and "parameter gradients" in f.message


def test_a_forward_that_raises_leaves_the_check_working() -> None:
    """A forward that raises (caught by the loop) ends the check's forward too: a later NaN is
    still found at its step and layer."""

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), _Poison(2, _raise), nn.Linear(8, 8), nn.Tanh(),
                          _Poison(at=5), nn.Linear(8, 2), nn.Tanh())
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gradscope.watch(model, optimizer=opt, every=10, summary=False) as mon:
        for _ in range(8):
            opt.zero_grad()
            try:
                out = model(torch.randn(4, 4))
            except RuntimeError:
                continue
            out.sum().backward()
            opt.step()
        assert mon._steps._depth == 0 and not mon._recorder.checks._held
    (f,) = [f for f in analyze(mon.history) if f.rule == "nonfinite"]
    # the forward that raised made no step: the poison's 6th call is step 5
    assert (f.first_step, f.layer) == (5, "7")


def test_a_model_calling_itself_is_checked_when_the_outer_forward_ends() -> None:
    """A nested call of the watched module does not end the check's forward: a NaN in the
    outer forward after the inner call is found."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
            self.head = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
            self.poison = _Poison(at=2)

        def forward(self, x: torch.Tensor, inner: bool = False) -> torch.Tensor:
            if inner:
                return self.body(x)
            return self.head(self.poison(self(x, inner=True)))

    torch.manual_seed(0)
    model = Twice()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gradscope.watch(model, optimizer=opt, every=10, summary=False) as mon:
        for _ in range(4):
            opt.zero_grad()
            model(torch.randn(2, 4)).sum().backward()
            opt.step()
    (f,) = [f for f in analyze(mon.history) if f.rule == "nonfinite"]
    assert (f.first_step, f.layer) == (2, "head.1")


@pytest.mark.parametrize("path", ["cpu", "accelerator"])
@pytest.mark.parametrize("at", [5, 7])
def test_a_nan_entering_after_the_last_activation_is_found_in_the_output(
        path: str, at: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN added to the logits (after the last activation; the sum's gradient is 1, so
    every gradient stays finite) is found at its step, sampled (5) or not (7), as the
    model's output (it was seen nowhere before)."""
    if path == "accelerator":
        from gradscope import stats

        monkeypatch.setattr(stats, "host_readable", lambda t: False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2), _Poison(
        at, lambda x: x + torch.tensor([math.nan, 0.0])))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, optimizer=opt, every=5, summary=False) as mon:
        for _ in range(9):
            opt.zero_grad()
            model(torch.randn(4, 4)).sum().backward()
            opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    (f,) = [f for f in analyze(mon.history) if f.rule == "nonfinite"]
    assert (f.first_step, f.layer) == (at, "(output)") and "model's output" in f.message
    assert mon.history.series("(output)", "output_nonfinite")[0] == [at]


def test_check_nonfinite_off_sees_only_sampled_steps() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), _Poison(at=7), nn.Linear(8, 2), nn.Tanh())
    with gradscope.watch(model, every=5, check_nonfinite=False, summary=False) as mon:
        for _ in range(12):
            model(torch.randn(4, 4)).sum().backward()
    assert all(f.first_step == 10 for f in analyze(mon.history) if f.rule == "nonfinite")


def test_a_schedule_must_take_the_step_and_return_a_bool() -> None:
    """Issue 23.8: ``every=lambda s: "no"`` (truthy) and ``every=lambda: True`` (no argument)
    are refused at watch() with the fix; a schedule that stops returning bools later is said
    once, and those steps are not sampled."""
    with pytest.raises(TypeError, match=r"must return True or False .*returned 'no' \(str\)"):
        gradscope.watch(_mlp(), every=lambda s: "no")
    with pytest.raises(TypeError, match=r"called with the step number .*cannot take one argument"):
        gradscope.watch(_mlp(), every=lambda: True)
    with pytest.raises(TypeError, match=r"histogram_every=.*cannot take one argument"):
        gradscope.watch(_mlp(), histogram_every=lambda: True)
    model = _mlp()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradscope.watch(model, every=lambda s: True if s < 2 else s, summary=False) as mon:
            for _ in range(4):
                model(torch.randn(4, 4)).sum().backward()
    said = [str(w.message) for w in caught if "schedule" in str(w.message)]
    assert len(said) == 1 and "returned 2 (int)" in said[0]
    assert mon.history.steps() == [0, 1]


def test_a_trainable_layer_that_never_gets_a_gradient_is_said_once() -> None:
    """Issue 23.8: a layer with trainable parameters the loss never reaches is listed (no
    values) and said once at close, by name; a layer that gets gradients is not."""
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.used(x))

    model = Net()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradscope.watch(model, summary=False) as mon:
            for _ in range(3):
                model(torch.randn(4, 4)).sum().backward()
    said = [str(w.message) for w in caught if "never received a gradient" in str(w.message)]
    assert len(said) == 1 and "'unused'" in said[0] and "'used'" not in said[0], said
    assert mon.history.metrics("unused") == [] and "grad_norm" in mon.history.metrics("used")


# ------------------------------------------------------------------ threads
def test_another_threads_forward_is_not_recorded() -> None:
    """An evaluation thread's no_grad forward in train mode (big inputs: saturating) is ignored."""

    def train(with_eval_thread: bool) -> list[float]:
        model = _mlp()
        gen = torch.Generator().manual_seed(1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with gradscope.watch(model, summary=False) as mon:
                for _ in range(5):
                    model(torch.randn(4, 4, generator=gen)).sum().backward()
                    if with_eval_thread:
                        def evaluate() -> None:
                            with torch.no_grad():
                                model(100 * torch.randn(64, 4))
                        t = threading.Thread(target=evaluate, name="eval")
                        t.start()
                        t.join()
        said = [w for w in caught if "not on the training thread" in str(w.message)]
        assert len(said) == (1 if with_eval_thread else 0)
        return mon.history.series("1", "saturation")[1]

    assert train(True) == train(False)


def test_training_one_model_from_two_threads_does_not_crash() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    errors: list[BaseException] = []

    lock = threading.Lock()  # the user's: one step at a time, the threads take turns

    def loop() -> None:
        try:
            for _ in range(20):
                with lock:
                    opt.zero_grad()
                    model(torch.randn(4, 4)).sum().backward()
                    opt.step()
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with gradscope.watch(model, optimizer=opt, flush_every=5, summary=False) as mon:
            other = threading.Thread(target=loop)
            other.start()
            loop()
            other.join()
    assert errors == []
    assert mon.history.steps() == list(range(20))  # the training thread's 20 steps


def test_an_eval_thread_inside_a_training_forward_never_crashes_and_no_mode_leaks() -> None:
    """Issue 23.1: the functional capture's mode is pushed and popped per thread. The eval
    thread enters the model while the training thread's forward runs and leaves after it
    (the interleaving that popped on the wrong thread); then the issue's free-running loop."""
    inside, train_done = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    stacks: list[int] = []

    class Rendezvous(nn.Module):
        """On the training thread, lets the eval thread in and waits until it is inside."""

        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 8)
            self.arm = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if threading.current_thread() is threading.main_thread() and self.arm:
                self.arm = False
                evaluator.start()
                assert inside.wait(30)
            elif threading.current_thread() is not threading.main_thread():
                inside.set()
                assert train_done.wait(30)
            return torch.sigmoid(self.lin(x))

    def evaluate() -> None:
        try:
            with torch.no_grad():
                model(torch.randn(16, 4))
        except BaseException as err:  # reported by the assertion below
            errors.append(err)
        stacks.append(torch._C._len_torch_function_stack())

    def sites(eval_thread: bool) -> list[str]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with gradscope.watch(model, summary=False) as mon:
                for step in range(3):
                    model[0].arm = eval_thread and step == 1
                    model(torch.randn(4, 4)).sum().backward()
                    if eval_thread and step == 1:
                        train_done.set()
                        evaluator.join(30)
        assert torch._C._len_torch_function_stack() == 0
        return mon.history.layers("activation")

    torch.manual_seed(0)
    model = nn.Sequential(Rendezvous(), nn.Linear(8, 2))
    evaluator = threading.Thread(target=evaluate, name="eval")
    assert sites(True) == sites(False) == ["0:sigmoid"]
    assert errors == [] and stacks == [0]

    # the script: an eval thread runs the model in a loop while 100 steps train
    m = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.SGD(m.parameters(), 0.05)
    stop = threading.Event()

    def loop() -> None:
        try:
            for _ in range(10_000):  # bounded; stopped when training ends
                if stop.is_set():
                    break
                with torch.no_grad():
                    m(torch.randn(256, 16))
        except BaseException as err:
            errors.append(err)
        stacks.append(torch._C._len_torch_function_stack())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mon = gradscope.watch(m, optimizer=opt, summary=False)
        t = threading.Thread(target=loop)
        t.start()
        for _ in range(100):
            opt.zero_grad()
            m(torch.randn(32, 16)).pow(2).mean().backward()
            opt.step()
        stop.set()
        t.join(60)
        mon.close()
    assert errors == [] and stacks == [0, 0]
    assert torch._C._len_torch_function_stack() == 0
    assert mon.history.steps() == list(range(100))


# ------------------------------------------------- models built on meta, then materialised
def _train_steps(model: nn.Module, steps: int, device: str = "cpu") -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 4, device=device)).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_a_model_on_the_meta_device_is_skipped_with_one_warning(strict: bool) -> None:
    """Issue 23.3: meta tensors have no values: nothing is measured, said once, and no
    flush (here inside the steps: ``flush_every=5``) raises in the user's step."""
    with torch.device("meta"):
        model = _mlp()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradscope.watch(model, flush_every=5, summary=False, strict=strict) as mon:
            _train_steps(model, 12, device="meta")
    said = [str(w.message) for w in caught if "meta device" in str(w.message)]
    assert len(said) == 1 and "to_empty" in said[0], [str(w.message) for w in caught]
    assert mon.history.steps() == []


def _materialise(model: nn.Module) -> None:
    model.to_empty(device="cpu")
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)


def _assign(model: nn.Module) -> None:
    model.load_state_dict({k: v.clone() for k, v in _mlp().state_dict().items()}, assign=True)


def _weight_norm(model: nn.Module) -> None:
    torch.nn.utils.parametrizations.weight_norm(model[0])  # new parameters original0/1


def _parametrize(model: nn.Module) -> None:
    torch.nn.utils.parametrize.register_parametrization(model[0], "weight", nn.Identity())


@pytest.mark.parametrize("change, names", [
    (_materialise, ["0.bias", "0.weight"]),
    (_assign, ["0.bias", "0.weight"]),
    (_weight_norm, ["0.bias", "0.weight.original0", "0.weight.original1"]),
    (_parametrize, ["0.bias", "0.weight"]),
], ids=["to_empty", "load_state_dict-assign", "weight_norm", "parametrize"])
def test_parameters_replaced_after_watch_are_looked_up_again(
        change: Callable[[nn.Module], None], names: list[str]) -> None:
    """Issue 23.4: the model's parameters are replaced after watch() (meta then
    ``to_empty``, ``load_state_dict(assign=True)``, a parametrization): the new ones are
    read, under the layer of the module that uses them."""
    with torch.device("meta" if change is _materialise else "cpu"):
        model = _mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with gradscope.watch(model, summary=False) as mon:
            change(model)
            _train_steps(model, 3)
    assert mon.history.series("0", "grad_norm")[0] == [0, 1, 2]
    assert sorted(n for n in mon.history.layers("parameter") if n.startswith("0.")
                  and mon.history.metrics(n)) == names


# ------------------------------------------------------------------ long runs
def test_history_retention_keeps_recent_thinned_old_and_the_first_alarm() -> None:
    keep = Retention(recent=100, per_octave=10, head=5)
    h = History(keep)
    n = 20_000
    for step in range(n):
        h.add(step, "a", "nonfinite", 1.0 if step in (3_001, 3_002) else 0.0)
    steps, _ = h.series("a", "nonfinite")
    assert steps[:5] == [0, 1, 2, 3, 4]  # the head
    assert steps[-100:] == list(range(n - 100, n))  # recent steps at full resolution
    assert h.alarm("a", "nonfinite") == (3_001, 1.0) and 3_001 in steps
    octaves = (n // 100).bit_length()
    assert len(steps) <= 2 * (100 + 10 * octaves + 5) + 64  # the documented bound
    assert h.recorded() == n and len(h) == len(steps)
    unbounded = History(Retention(recent=None))
    for step in range(1000):
        unbounded.add(step, "a", "x", 0.0)
    assert len(unbounded) == 1000


def test_soak_flush_work_and_memory_stay_flat() -> None:
    """Count work, not time: values the rules read per flush and points kept stay bounded."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(4, 2)
    sink = MemoryWriter()
    mon = gradscope.watch(model, optimizer=opt, sinks=[sink], flush_every=20, summary=False,
                          histogram_every=None, retention=Retention(recent=50, per_octave=8))
    findings = next(s for s in mon.sinks if isinstance(s, FindingsSink))
    reads, kept = [], []
    for _ in range(60):  # 60 flushes of 20 steps
        last = findings.reads
        for _ in range(20):
            opt.zero_grad()
            model(x).pow(2).mean().backward()  # (the sum diverges: -inf at step 742)
            opt.step()
        reads.append(findings.reads - last)
        kept.append(len(mon.history))
    mon.close()
    assert len(set(reads[1:])) == 1, reads  # the same work at every flush, late or early
    assert mon.history.recorded() == 1200 * kept[0] // 20  # everything was recorded...
    assert max(kept[30:]) <= 1.2 * max(kept[:30])  # ...but what is kept stopped growing


@pytest.mark.parametrize("recorded, fires", [(1, False), (2, False), (3, True)])
def test_findings_need_window_records(recorded: int, fires: bool) -> None:
    """A series with fewer than ``Thresholds.window`` (3) records fires nothing, however bad."""
    h = History()
    h.add_layer(gradscope.history.LayerInfo("act", kind="activation", order=0, type="Tanh",
                                            family="tanh"))
    for step in range(recorded):
        h.add(step, "act", "saturation", 0.99)
    assert any(f.rule == "saturation" for f in analyze(h)) == fires
