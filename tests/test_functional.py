"""Functional activations, the pre-activation gradient, units per call-site, non-finite
values and the coverage report."""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope import stats
from gradscope.capture.functional import FUNCTIONS, family_of_function
from tests.fixtures.counting import true_call_sites
from tests.fixtures.models import MixedActivations


def _last(mon: gradscope.Monitor, layer: str, metric: str) -> float:
    return mon.history.series(layer, metric)[1][-1]


class Forms(nn.Module):
    """One activation in every spelling: F., torch., Tensor method, in place."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.act = nn.ReLU()  # its own F.relu must not be seen a second time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        a = F.relu(h) + torch.relu(h) + h.relu() + self.act(h)
        b = torch.sigmoid(a) + a.tanh() + F.leaky_relu(a, 0.3)
        b = b * 1.0
        b.relu_()
        return F.softmax(F.relu(b, inplace=False), dim=-1)


def _train_step(model: nn.Module, x: torch.Tensor, **kw: Any) -> gradscope.Monitor:
    with gradscope.watch(model, summary=False, **kw) as mon:
        model(x).pow(2).sum().backward()
    return mon


def test_every_spelling_is_one_call_site_named_after_module_function_and_index() -> None:
    torch.manual_seed(0)
    model = Forms()
    x = torch.randn(4, 6)
    mon = _train_step(model, x)
    assert mon.history.layers("activation") == [
        "(root):relu", "(root):relu[1]", "(root):relu[2]", "act", "(root):sigmoid",
        "(root):tanh", "(root):leaky_relu", "(root):relu[3]", "(root):relu[4]",
        "(root):softmax"]
    assert len(mon.history.layers("activation")) == true_call_sites(model, x)
    assert mon.history.info("(root):leaky_relu").type == "F.leaky_relu"
    assert mon.history.info("(root):relu[3]").family == "relu"  # b.relu_(): in place
    cov = mon.coverage()
    assert (cov.by_module, cov.by_function) == (1, 9)


def test_functional_names_use_the_innermost_running_module() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(MixedActivations())
    mon = _train_step(model, torch.randn(2, 3, 8, 8))
    layers = mon.history.layers("activation")
    assert {"0.act", "0.hs", "0.gelu", "0:leaky_relu", "0.gate:gelu", "0.gate:sigmoid",
            "0.gate:relu", "0.gate:relu[1]", "0:relu", "0:relu[1]", "0:softmax"} <= set(layers)


def test_the_function_table_covers_the_issue_list() -> None:
    names = {f.name for f in FUNCTIONS.values()}
    assert names >= {"relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu",
                     "mish", "hardswish", "hardsigmoid", "hardtanh", "softplus", "sigmoid",
                     "tanh", "softmax"}
    for fn in (F.relu, torch.relu, torch.Tensor.relu, F.relu_, torch.Tensor.relu_):
        fam = family_of_function(fn)
        assert fam is not None and fam.name == "relu"
    assert family_of_function(torch.add) is None


@pytest.mark.parametrize("fn,module", [
    (lambda s: F.leaky_relu(s, 0.2), nn.LeakyReLU(0.2)),
    (lambda s: F.elu(s, alpha=0.5), nn.ELU(alpha=0.5)),
    (lambda s: F.gelu(s, approximate="tanh"), nn.GELU(approximate="tanh")),
    (lambda s: F.hardtanh(s, -0.5, 0.5), nn.Hardtanh(-0.5, 0.5)),
    (lambda s: F.softplus(s, beta=2.0), nn.Softplus(beta=2.0)),
    (lambda s: F.silu(s), nn.SiLU()),
], ids=["leaky_relu", "elu", "gelu_tanh", "hardtanh", "softplus", "silu"])
def test_a_functional_site_records_what_the_module_site_records(fn: Any, module: nn.Module
                                                                ) -> None:
    """Same activation, same input: module and functional call-sites agree on every metric
    (the call's parameters are read from its arguments)."""
    torch.manual_seed(1)
    lin = nn.Linear(5, 7)
    x = torch.randn(9, 5) * 2

    class ByModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.act = lin, module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.lin(x))

    class ByFunction(ByModule):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return fn(self.lin(x))

    a = _train_step(ByModule(), x)
    b = _train_step(ByFunction(), x)
    site = b.history.layers("activation")[0]
    assert a.history.metrics("act") == b.history.metrics(site)
    for metric in a.history.metrics("act"):
        assert _last(b, site, metric) == pytest.approx(_last(a, "act", metric), rel=1e-6,
                                                       abs=1e-7, nan_ok=True), metric


class PreAct(nn.Module):
    """Keeps each pre-activation's gradient to compare with grad_in_*."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.act = nn.ELU(inplace=True)
        self.pre: list[torch.Tensor] = []

    def _keep(self, s: torch.Tensor) -> torch.Tensor:
        s.retain_grad()
        self.pre.append(s)
        return s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.pre = []
        h = self.act(self._keep(self.fc1(x) * 1.0))  # module, in place
        h = F.silu(self._keep(self.fc2(h)))  # functional, needs its input
        return (torch.tanh(self._keep(self.fc3(h) * 1.0)) * 2.0).relu_()  # then in place


def test_grad_in_is_the_gradient_at_the_activation_input() -> None:
    torch.manual_seed(2)
    model, x = PreAct(), torch.randn(5, 6)
    ref = copy.deepcopy(model)
    ref.act.inplace = False  # an in-place ELU overwrites the tensor whose .grad we read
    ref(x).pow(2).sum().backward()
    mon = _train_step(model, x)
    sites = ["act", "(root):silu", "(root):tanh"]
    assert mon.history.layers("activation")[:3] == sites
    for site, s in zip(sites, ref.pre):
        g = s.grad.double()
        assert _last(mon, site, "grad_in_norm") == pytest.approx(g.norm().item(), rel=1e-5)
        assert _last(mon, site, "grad_in_rms") == pytest.approx(
            g.norm().item() / math.sqrt(g.numel()), rel=1e-5)
        assert _last(mon, site, "grad_in_nonfinite") == 0.0
    assert mon.coverage().no_grad_in == ()


def test_grad_in_is_not_reported_where_it_cannot_be_exact() -> None:
    """Softsign is x / (1 + |x|), not one autograd op: no grad_in_*, and the coverage says so."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Softsign())
    mon = _train_step(model, torch.randn(3, 4))
    assert "grad_in_rms" not in mon.history.metrics("1")
    assert "grad_out_rms" in mon.history.metrics("1")
    assert mon.coverage().no_grad_in == ("1",)


class ConvThenChannelsLast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x))  # (N, 6, 5, 5): channels
        return F.relu(self.fc(h.permute(0, 2, 3, 1)))  # (N, 5, 5, 12): the last dim


def _dead_fraction(y: torch.Tensor, dim: int) -> float:
    dims = [d for d in range(y.ndim) if d != dim % y.ndim]
    return float((y.amax(dim=dims) <= 0).double().mean())


def test_units_follow_the_layer_that_produced_the_input() -> None:
    """Conv output: channels (dim 1); channels-last Linear output: the last dim, although
    both are rank 4; ``unit_dim=`` overrides."""
    torch.manual_seed(3)
    model = ConvThenChannelsLast()
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        model.conv.bias[:2] = -100.0  # 2 of the 6 channels dead
        model.fc.bias[:5] = -100.0  # 5 of the 12 channels-last features dead
        y1 = F.relu(model.conv(x))
        y2 = F.relu(model.fc(y1.permute(0, 2, 3, 1)))
    assert _dead_fraction(y1, 1) == pytest.approx(2 / 6)
    assert _dead_fraction(y2, -1) == pytest.approx(5 / 12)
    assert _dead_fraction(y2, 1) == 0.0  # the 5 image rows: what the rank rule would read
    mon = _train_step(model, x)
    assert _last(mon, "(root):relu", "dead_units") == pytest.approx(2 / 6)
    assert _last(mon, "(root):relu[1]", "dead_units") == pytest.approx(5 / 12)
    fixed = _train_step(model, x, unit_dim=1)
    assert _last(fixed, "(root):relu[1]", "dead_units") == 0.0


def test_nonfinite_elements_are_not_dead_zero_or_negative(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """A ReLU output that is NaN is neither zero nor dead; the CPU fast path and the
    accelerator path (no host reads) agree."""
    x = torch.tensor([[1.0, -1.0, 2.0, -3.0],
                      [-2.0, -1.0, float("nan"), -1.0],
                      [0.5, -4.0, 1.0, float("inf")]])

    def run(act: nn.Module) -> dict[str, float]:
        model = nn.Sequential(nn.Identity(), act)
        with gradscope.watch(model, summary=False, backprop=False, gradients=False) as mon:
            model(x)
        return {m: _last(mon, "1", m) for m in mon.history.metrics("1")}

    for path in ("fast", "device"):
        if path == "device":
            monkeypatch.setattr(stats, "host_readable", lambda t: False)
        relu = run(nn.ReLU())
        assert relu["zero_frac"] == pytest.approx(6 / 12)  # the 6 finite y <= 0
        assert relu["dead_units"] == pytest.approx(1 / 4)  # unit 1 only; unit 2, 3 non-finite
        assert relu["nonfinite_units"] == pytest.approx(2 / 4)
        assert relu["nonfinite"] == 2.0
        elu = run(nn.ELU())
        assert elu["neg_frac"] == pytest.approx(6 / 12)
        assert elu["neg_units"] == pytest.approx(1 / 4)


def test_a_diverged_relu_is_not_read_as_dead() -> None:
    y = torch.full((4, 3), float("nan"))
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    with gradscope.watch(model, summary=False, gradients=False, backprop=False) as mon:
        model(y)
    assert _last(mon, "1", "dead_units") == 0.0 and _last(mon, "1", "zero_frac") == 0.0
    assert _last(mon, "1", "nonfinite_units") == 1.0


def test_off_steps_push_no_mode_and_an_error_never_leaves_it_pushed() -> None:
    seen: list[int] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch._C._len_torch_function_stack())
            if x.shape[0] == 1:
                raise ValueError("user error")
            return F.relu(x)

    model = Probe()
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with gradscope.watch(model, optimizer=opt, every=2, summary=False):
        for _ in range(3):  # steps 0 and 2 sampled, 1 not
            model(torch.randn(2, 3))
            opt.step()
        with pytest.raises(ValueError):
            model(torch.randn(1, 3))
        assert torch._C._len_torch_function_stack() == 0
    assert seen[:3] == [1, 0, 1]


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.act = nn.LogSigmoid()  # no family: listed as unknown

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(q, k, v)
        return self.act(self.lstm(F.gelu(h))[0])


def test_coverage_names_what_is_not_seen() -> None:
    torch.manual_seed(0)
    model = Attention()
    written: list[Any] = []

    class CoverageSink:
        def write(self, records: Any, history: Any) -> None:
            pass

        def write_coverage(self, coverage: Any) -> None:
            written.append(coverage)

    with gradscope.watch(model, summary=False, sinks=[CoverageSink()]) as mon:
        model(torch.randn(2, 5, 8)).sum().backward()
    cov = mon.coverage()
    assert (cov.by_module, cov.by_function) == (0, 1)
    assert cov.unknown == ("LogSigmoid",)
    assert any("scaled_dot_product_attention" in u for u in cov.unseen)
    assert not any("lstm" in u for u in cov.unseen)  # the recurrent capture replays its gates
    assert cov.replayed == ("lstm",) and "gates replayed in: lstm" in cov.line()
    assert written == [cov]
    assert "register_family" in cov.markdown() and "LogSigmoid" in cov.line()


class OwnLSTM(nn.LSTM):
    def forward(self, x: torch.Tensor, hx: Any = None) -> Any:  # no replay for an override
        return super().forward(x, hx)


def test_fused_gates_no_capture_replays_are_listed_as_not_seen() -> None:
    model = nn.Sequential(OwnLSTM(4, 4, batch_first=True))
    with gradscope.watch(model, summary=False) as mon:
        model(torch.randn(2, 3, 4))[0].sum().backward()
    assert any("gates of OwnLSTM '0'" in u for u in mon.coverage().unseen)


def test_a_recurrent_only_model_is_not_warned_about() -> None:
    model = nn.Sequential(nn.GRU(4, 4, batch_first=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with gradscope.watch(model, summary=False) as mon:
            model(torch.randn(2, 3, 4))[0].sum().backward()
    assert mon.coverage().replayed == ("0",)


def test_coverage_line_on_stderr_once_and_warning_when_nothing_is_captured(
        capsys: pytest.CaptureFixture[str]) -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.LogSigmoid())
    with pytest.warns(RuntimeWarning, match="no activation call-site was captured"):
        with gradscope.watch(model, findings=False):
            for _ in range(2):
                model(torch.randn(2, 3)).sum().backward()
    err = capsys.readouterr().err
    assert err.count("gradscope: 0 activation call-sites captured") == 1
    assert "LogSigmoid" in err


def test_coverage_is_a_tensorboard_text(tmp_path: Any) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    model = Forms()
    with gradscope.watch(model, logdir=tmp_path, summary=False, findings=False):
        model(torch.randn(4, 6)).sum().backward()
    ea = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    ea.Reload()
    (event,) = ea.Tensors("gradscope/coverage/text_summary")
    text = event.tensor_proto.string_val[0].decode()
    assert "**10 activation call-sites** captured at step 0: 1 by module hooks, 9 as" in text
