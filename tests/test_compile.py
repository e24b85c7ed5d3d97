"""torch.compile: gradscope adds no graph break, names have no ``_orig_mod.``, the sampled
steps run eagerly (``force_eager``) so activation statistics equal eager ones, the stance
is always restored, and what cannot be seen is said once."""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.capture.compiled import TRACED, UNSAMPLED

counters = pytest.importorskip("torch._dynamo.utils").counters
eval_frame = pytest.importorskip("torch._dynamo.eval_frame")

STEPS, EVERY = 4, 2  # sampled: 0, 2


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.act(self.fc1(x))))


def _stance() -> str:
    return eval_frame._stance.stance


@pytest.fixture(autouse=True)
def _default_stance() -> Any:
    torch.compiler.set_stance("default")
    yield
    torch.compiler.set_stance("default")


def _train(how: str, *, optimizer: bool = True, **options: Any
           ) -> tuple[gradscope.Monitor, int, int, list[str]]:
    """Train ``Net`` for ``STEPS`` steps watched as ``how``; the monitor, graph breaks,
    unique graphs and the warnings given."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net, x = Net(), torch.randn(4, 8)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    kw: dict[str, Any] = dict(optimizer=opt) if optimizer else {}
    kw.update(every=EVERY, summary=False, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model: nn.Module = net
        if how == "watch(compile(model))":
            model = torch.compile(net)
            mon = gradscope.watch(model, **kw)
        else:
            mon = gradscope.watch(net, **kw)
        if how == "compile(watched)":
            model = torch.compile(net)
        elif how == "watched.compile()":
            net.compile()
        counters.clear()
        for _ in range(STEPS):
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        mon.close()
    said = [str(w.message) for w in caught if "gradscope" in str(w.message)]
    return mon, sum(counters["graph_break"].values()), counters["stats"]["unique_graphs"], said


def _same(got: list[float], want: list[float]) -> bool:
    return all((math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-5, abs=1e-6)
               for a, b in zip(got, want)) and len(got) == len(want)


@pytest.fixture(scope="module")
def eager() -> gradscope.Monitor:
    return _train("eager")[0]


@pytest.mark.parametrize("how", ["watch(compile(model))", "compile(watched)", "watched.compile()"])
def test_compiled_model_sampled_steps_equal_eager(how: str, eager: gradscope.Monitor) -> None:
    mon, breaks, graphs, said = _train(how)
    assert (breaks, graphs) == (0, 1)  # gradscope adds no graph break, one graph for the model
    assert _stance() == "default"
    h, e = mon.history, eager.history
    assert h.layers("activation") == e.layers("activation") == ["act", "(root):relu"]
    assert h.layers("layer") == e.layers("layer") == ["fc1", "fc2"]
    assert not any("_orig_mod" in name for name in h.layers())
    late = how != "watch(compile(model))"  # compiled after watch: step 0 was traced
    for layer in h.layers("activation"):
        assert h.metrics(layer) == e.metrics(layer)
        for metric in h.metrics(layer):
            steps, values = h.series(layer, metric)
            want_steps, want = e.series(layer, metric)
            assert want_steps == [0, 2]
            assert steps == ([2] if late else [0, 2]), (layer, metric)
            assert _same(values, want[-len(values):]), (layer, metric, values, want)
    for layer in ["fc1", "fc2", "fc1.weight", "fc2.bias"]:
        for metric in ("grad_norm", "weight_norm", "update_ratio"):
            assert h.series(layer, metric)[0] == e.series(layer, metric)[0] == [0, 2]
            assert _same(h.series(layer, metric)[1], e.series(layer, metric)[1]), (layer, metric)
    cov = mon.coverage()
    assert cov.captured == 2 and UNSAMPLED in cov.unseen
    lost = [m for m in said if "traced step 0" in m]
    assert len(lost) == (1 if late else 0)
    assert ("activations of step 0: torch.compile traced it before gradscope knew the model "
            "was compiled" in cov.unseen) == late


def test_sampled_eager_false_keeps_compiled_code_and_records_parameters_only() -> None:
    mon, breaks, graphs, said = _train("watch(compile(model))", sampled_eager=False)
    assert (breaks, graphs) == (0, 1)
    assert mon.history.layers("activation") == []
    assert mon.history.series("fc1", "grad_norm")[0] == [0, 2]
    assert [u for u in mon.coverage().unseen if u.startswith(TRACED)]
    assert len([m for m in said if "sampled_eager=False" in m]) == 1  # and nothing else:
    assert not [m for m in said if "no activation call-site" in m]  # said once
    with pytest.raises(TypeError, match="sampled_eager"):
        gradscope.watch(Net(), sampled_eager="yes")


def test_compile_after_watch_without_optimizer_says_steps_are_not_counted() -> None:
    mon, breaks, graphs, said = _train("compile(watched)", optimizer=False)
    assert (breaks, graphs) == (0, 1)
    assert mon.step == 0 and mon.history.layers("activation") == []
    fix = [m for m in said if "no optimizer= was given" in m]
    assert len(fix) == 1 and "optimizer=opt" in fix[0] and "watch(torch.compile(model))" in fix[0]
    assert any("no optimizer= was given" in u for u in mon.coverage().unseen)


def test_watching_the_compiled_module_without_optimizer_counts_steps() -> None:
    mon, breaks, _, _ = _train("watch(compile(model))", optimizer=False)
    assert breaks == 0
    assert mon.step == STEPS - 1  # without optimizer=, the next forward ends a step
    assert mon.history.series("act", "mean")[0] == [0, 2]


def _net_opt() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = Net()
    return net, torch.optim.SGD(net.parameters(), lr=0.1)


def test_stance_is_force_eager_on_sampled_steps_only_and_the_users_stance_comes_back() -> None:
    net, opt = _net_opt()
    torch.compiler.set_stance("eager_on_recompile")  # the user's own stance
    seen = []
    with pytest.warns(RuntimeWarning, match="every=1 samples every step"):
        gradscope.watch(torch.compile(net), optimizer=opt, summary=False).close()
    assert _stance() == "eager_on_recompile"
    mon = gradscope.watch(torch.compile(net), optimizer=opt, every=EVERY, summary=False)
    for _ in range(3):
        seen.append(_stance())
        opt.step()  # the step's end: no forward needed to move the stance
    mon.detach()
    assert seen == ["force_eager", "eager_on_recompile", "force_eager"]
    assert _stance() == "eager_on_recompile"
    mon.close()
    assert _stance() == "eager_on_recompile"


def test_stance_is_restored_when_the_training_loop_raises_in_a_sampled_step() -> None:
    net, opt = _net_opt()
    model = torch.compile(net)
    with pytest.raises(ValueError, match="bad batch"):
        with gradscope.watch(model, optimizer=opt, every=EVERY, summary=False) as mon:
            model(torch.randn(4, 8)).sum().backward()  # step 0 runs eagerly: no compile
            assert _stance() == "force_eager"
            raise ValueError("bad batch")
    assert _stance() == "default" and not mon.attached
    assert mon.history.series("act", "mean")[0] == [0]


def test_a_step_ending_inside_compiled_code_falls_back_and_says_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    net, opt = _net_opt()
    # what set_stance sees inside a compiled region: dynamo's frame callback is set
    monkeypatch.setattr(torch._C._dynamo.eval_frame, "get_eval_frame_callback", lambda: object())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = gradscope.watch(torch.compile(net), optimizer=opt, every=EVERY, summary=False)
        opt.step()
        opt.step()
    monkeypatch.undo()
    mon.close()
    said = [str(w.message) for w in caught if "set_stance cannot be called" in str(w.message)]
    assert len(said) == 1 and "activations are not recorded" in said[0]
    assert _stance() == "default" and mon.step == 2  # steps are still counted
    assert [u for u in mon.coverage().unseen if u.startswith(TRACED)]


def test_a_whole_compiled_training_step_is_said_to_count_no_step() -> None:
    torch._dynamo.reset()
    net, opt = _net_opt()
    x = torch.randn(4, 8)

    @torch.compile
    def train_step(x: torch.Tensor) -> None:  # optimizer.step() inside compiled code
        net(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = gradscope.watch(net, optimizer=opt, every=EVERY, summary=False)
        for _ in range(3):
            train_step(x)
        mon.close()
    said = [str(w.message) for w in caught if "no step ended" in str(w.message)]
    assert len(said) == 1 and "call optimizer.step() outside it" in said[0]
    assert mon.step == 0 and mon.history.layers("activation") == []
    assert _stance() == "default"
    assert any("no step ended" in u for u in mon.coverage().unseen)


def _unsampled_compiled_run(train_step: Callable[[int, nn.Module, Net, Any], None]
                            ) -> gradscope.Monitor:
    """``STEPS`` steps of ``torch.compile(Net())`` watched with ``every=EVERY`` (step 1 is
    unsampled: it runs compiled); ``train_step(step, model, net, opt)`` runs one."""
    net, opt = _net_opt()
    model = torch.compile(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradscope.watch(model, optimizer=opt, every=EVERY, summary=False) as mon:
            for step in range(STEPS):
                train_step(step, model, net, opt)
    return mon


def test_unsampled_compiled_steps_still_check_parameter_gradients() -> None:
    """The every-step check of parameter gradients runs in the optimizer's step hook,
    outside compiled code; that of activations is compiled away (the coverage says so)."""
    x = torch.randn(4, 8)

    def train_step(step: int, model: nn.Module, net: Net, opt: Any) -> None:
        model(x).pow(2).mean().backward()
        if step == 1:
            net.fc2.bias.grad[0] = float("nan")
        opt.step()
        opt.zero_grad()
        if step == 1:
            with torch.no_grad():
                net.fc2.bias.zero_()  # NaN no further

    mon = _unsampled_compiled_run(train_step)
    assert mon.history.series("fc2", "grad_nonfinite_check")[0] == [1]  # read outside the graph
    assert mon.history.series("act", "mean")[0] == [0, 2]  # the sampled steps, run eagerly


def test_unsampled_compiled_steps_check_the_models_outputs() -> None:
    """The wrapper's forward hook runs outside the compiled graph, so a NaN in the output of
    an unsampled compiled step is found at its step (its activations ran compiled)."""
    x = torch.randn(4, 8)

    def train_step(step: int, model: nn.Module, net: Net, opt: Any) -> None:
        model(x * (math.nan if step == 1 else 1.0)).pow(2).mean().backward()
        if step == 1:
            opt.zero_grad()  # the NaN stays in step 1
        opt.step()
        opt.zero_grad()

    mon = _unsampled_compiled_run(train_step)
    assert mon.history.series("(output)", "output_nonfinite")[0] == [1]
    assert "nonfinite_check" not in mon.history.metrics("act")  # compiled: not seen there
