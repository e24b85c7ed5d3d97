"""The monitor on tiny models: hooks, exactness, recording, sync-freedom, effects."""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import warnings
import weakref
from typing import Any, Callable

import pytest
import torch
from torch import nn

import gradscope
from gradscope import Monitor, stats, watch
from tests.fixtures.models import ReusedInplaceReLU, SmallCNN, TupleOutput, mlp, no_activations
from tests.fixtures.triton import NO_TRITON


def hook_counts(model: nn.Module) -> list[int]:
    """Number of every kind of module hook, per module."""
    out = []
    for m in model.modules():
        out += [len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                len(getattr(m, "_backward_pre_hooks", {}))]
    return out


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, x: torch.Tensor,
          loss_fn: Callable[[Any], torch.Tensor] | None = None) -> list[torch.Tensor]:
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        out = model(x)
        loss = loss_fn(out) if loss_fn else out.pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return losses


# --------------------------------------------------------------- hook hygiene
def test_hooks_removed_on_exit_and_model_unchanged() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = hook_counts(model)
    opt_before = (len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks))
    with watch(model, optimizer=opt) as mon:
        assert hook_counts(model) != before
        train(model, opt, 2, torch.randn(4, 1, 12, 12))
    assert hook_counts(model) == before
    assert (len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks)) == opt_before
    mon.detach()  # safe twice
    mon.close()
    assert not mon.attached


def test_hooks_removed_after_an_exception_and_results_kept() -> None:
    model = mlp()
    before = hook_counts(model)
    with pytest.raises(RuntimeError, match="boom"):
        with watch(model, flush_every=1000) as mon:
            model(torch.randn(3, 8)).sum().backward()
            raise RuntimeError("boom")
    assert hook_counts(model) == before
    assert mon.history.layers("activation")  # the queued step was flushed, not lost


def test_attach_detach_attach() -> None:
    model = mlp()
    mon = Monitor(model)
    assert hook_counts(model) == hook_counts(mlp())
    mon.attach()
    mon.attach()  # idempotent
    n = sum(hook_counts(model))
    mon.detach()
    mon.attach()
    assert sum(hook_counts(model)) == n
    mon.close()
    with pytest.raises(RuntimeError, match="closed"):
        mon.attach()


def test_no_extra_reference_to_the_model() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref = weakref.ref(model)
    mon = watch(model, optimizer=opt)
    train(model, opt, 1, torch.randn(2, 8))
    del model, opt
    gc.collect()
    assert ref() is None
    assert mon.model is None
    mon.close()  # flushes what it has without the model


# ------------------------------------------------------------------ exactness
@pytest.mark.parametrize(
    "make,shape",
    [(lambda: mlp(nn.Sigmoid), (16, 8)), (SmallCNN, (4, 1, 12, 12)),
     (ReusedInplaceReLU, (5, 4)), (lambda: mlp(nn.SiLU), (6, 8))],
    ids=["mlp", "cnn", "reused_inplace_relu", "silu"],
)
def test_outputs_and_gradients_bitwise_identical(make: Callable[[], nn.Module],
                                                 shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    plain = make()
    watched = copy.deepcopy(plain)
    x = torch.randn(*shape)
    opt_a = torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9)
    opt_b = torch.optim.SGD(watched.parameters(), lr=0.05, momentum=0.9)
    losses_a = train(plain, opt_a, 3, x)
    with watch(watched, optimizer=opt_b, flush_every=2):
        losses_b = train(watched, opt_b, 3, x)
    assert all(torch.equal(a, b) for a, b in zip(losses_a, losses_b))
    for pa, pb in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(pa, pb)
        assert torch.equal(pa.grad, pb.grad)


# ------------------------------------------------------------------ recording
def test_mlp_records_match_manual_computation() -> None:
    torch.manual_seed(0)
    model = mlp(nn.Tanh, depth=2, width=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(10, 8)
    seen: dict[str, list[torch.Tensor]] = {"act": [], "grad": [], "w_before": [], "w_after": []}
    model[1].register_forward_hook(lambda m, a, o: seen["act"].append(o.detach().clone()))
    with watch(model, optimizer=opt, eps=0.05) as mon:
        for _ in range(3):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            seen["grad"].append(model[0].weight.grad.clone())
            seen["w_before"].append(model[0].weight.detach().clone())
            opt.step()
            seen["w_after"].append(model[0].weight.detach().clone())
    h = mon.history
    assert h.layers("activation") == ["1", "3"]
    assert h.layers("layer") == ["0", "2", "4"]
    assert h.layers("parameter")[:2] == ["0.weight", "0.bias"]
    assert h.steps() == [0, 1, 2]
    for step in range(3):
        y = seen["act"][step]
        assert h.value("1", "mean", step) == pytest.approx(y.mean().item(), abs=1e-6)
        assert h.value("1", "std", step) == pytest.approx(y.std(correction=0).item(), rel=1e-5)
        assert h.value("1", "max", step) == pytest.approx(y.max().item())
        assert h.value("1", "saturation", step) == pytest.approx((y.abs() > 0.95).float().mean().item())
        assert h.value("1", "mean_deriv", step) == pytest.approx((1 - y * y).mean().item(), rel=1e-5)
        g, wb, wa = seen["grad"][step], seen["w_before"][step], seen["w_after"][step]
        assert h.value("0.weight", "grad_norm", step) == pytest.approx(g.norm().item(), rel=1e-5)
        assert h.value("0.weight", "update_ratio", step) == pytest.approx(
            ((wa - wb).norm() / wb.norm()).item(), rel=1e-4)
        layer_gn = math.hypot(g.norm().item(), h.value("0.bias", "grad_norm", step))
        assert h.value("0", "grad_norm", step) == pytest.approx(layer_gn, rel=1e-5)
        assert h.value("0", "grad_weight_ratio", step) == pytest.approx(
            layer_gn / h.value("0", "weight_norm", step), rel=1e-5)
        assert h.value("0", "grad_nonfinite", step) == 0


@pytest.mark.parametrize("reattach", [0, 3], ids=["attached_once", "reattached_3x"])
def test_layer_norms_equal_the_whole_layer_recomputed(reattach: int) -> None:
    """A layer's norms are those of all its parameters together, however often re-attached."""
    torch.manual_seed(0)
    model = mlp(nn.ReLU, depth=1, width=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    mon = watch(model, optimizer=opt, summary=False)
    for _ in range(reattach):
        mon.detach()
        mon.attach()
    x = torch.randn(6, 8)
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    lin = model[0]
    grad = torch.cat([lin.weight.grad.flatten(), lin.bias.grad.flatten()]).double()
    before = torch.cat([lin.weight.flatten(), lin.bias.flatten()]).detach().double()
    opt.step()
    after = torch.cat([lin.weight.flatten(), lin.bias.flatten()]).detach().double()
    mon.close()
    h = mon.history
    assert h.value("0", "grad_norm") == pytest.approx(grad.norm().item(), rel=1e-5)
    assert h.value("0", "weight_norm") == pytest.approx(before.norm().item(), rel=1e-5)
    assert h.value("0", "update_norm") == pytest.approx((after - before).norm().item(), rel=1e-4)
    assert h.value("0", "update_ratio") == pytest.approx(
        ((after - before).norm() / before.norm()).item(), rel=1e-4)
    assert h.value("0", "grad_weight_ratio") == pytest.approx(
        (grad.norm() / before.norm()).item(), rel=1e-5)


def test_backprop_signal_matches_a_tensor_hook() -> None:
    torch.manual_seed(1)
    model = mlp(nn.Sigmoid, depth=3, width=6)
    x = torch.randn(7, 8)
    grads: list[torch.Tensor] = []

    def keep_grad(m: nn.Module, a: Any, o: torch.Tensor) -> None:
        o.register_hook(grads.append)

    model[3].register_forward_hook(keep_grad)
    with watch(model) as mon:
        model(x).sum().backward()
    g = grads[0]
    assert mon.history.value("3", "grad_out_norm") == pytest.approx(g.norm().item(), rel=1e-5)
    assert mon.history.value("3", "grad_out_rms") == pytest.approx(
        g.norm().item() / math.sqrt(g.numel()), rel=1e-5)


def test_reused_inplace_relu_gets_one_series_per_call_site() -> None:
    torch.manual_seed(0)
    model = ReusedInplaceReLU()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outs: list[torch.Tensor] = []
    model.relu.register_forward_hook(lambda m, a, o: outs.append(o.detach().clone()))
    with watch(model, optimizer=opt) as mon:
        train(model, opt, 2, torch.randn(9, 4))
    h = mon.history
    assert h.layers("activation") == ["relu", "relu[1]", "relu[2]"]
    for k, name in enumerate(["relu", "relu[1]", "relu[2]"]):
        info = h.info(name)
        assert (info.module, info.call, info.family) == ("relu", k, "relu")
        y = outs[3 + k]  # step 1: calls 3, 4, 5
        assert h.value(name, "zero_frac", 1) == pytest.approx((y <= 0).float().mean().item())
        assert h.value(name, "dead_units", 1) == pytest.approx(
            (~(y > 0).any(0)).float().mean().item())
        assert h.value(name, "grad_out_norm", 1) > 0


def test_cnn_dead_units_are_per_channel() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():
        model.features[1].bias[:2] = -100.0  # BN shift kills channels 0 and 1 of the first ReLU
    with watch(model) as mon:
        model(torch.randn(4, 1, 12, 12)).sum().backward()
    assert mon.history.value("features.2", "dead_units") == pytest.approx(2 / 4)
    assert "features.1" in mon.history.layers("layer")  # BatchNorm has parameters


def test_tuple_outputs_without_optimizer() -> None:
    torch.manual_seed(0)
    model = TupleOutput()
    with watch(model) as mon:
        for _ in range(2):
            model.zero_grad()
            logits, (_h, extra) = model(torch.randn(4, 5))
            (logits.sum() + extra["aux"].sum()).backward()
    hist = mon.history
    assert hist.steps() == [0, 1]
    assert hist.value("fc.weight", "grad_norm", 1) == pytest.approx(
        model.fc.weight.grad.norm().item(), rel=1e-5)
    assert "aux" in hist.layers("layer")


def test_eval_under_no_grad_records_only_when_asked() -> None:
    model = mlp(nn.GELU).eval()
    with watch(model) as mon, torch.no_grad():
        model(torch.randn(3, 8))
    assert len(mon.history) == 0 and mon.step == 0
    with watch(model, record_eval=True) as mon, torch.no_grad():
        model(torch.randn(3, 8))
        model(torch.randn(3, 8))
    h = mon.history
    assert h.steps() == [0, 1]
    assert "neg_frac" in h.metrics("1")
    assert "grad_out_norm" not in h.metrics("1")
    assert not h.last("grad_norm")


def test_model_with_no_activations_records_parameters_only() -> None:
    model = no_activations()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with watch(model, optimizer=opt) as mon:
        train(model, opt, 3, torch.randn(5, 6))
    assert mon.history.layers("activation") == []
    assert mon.history.layers("layer") == ["0", "1"]
    assert len(mon.history.series("1", "update_ratio")[0]) == 3


def test_every_samples_one_step_in_k_and_flush_every() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, optimizer=opt, every=3, flush_every=4) as mon:
        train(model, opt, 4, torch.randn(2, 8))
        # flushed at the end of step 3: steps 0 and 3 are in history
        assert mon.history.steps() == [0, 3]
        train(model, opt, 3, torch.randn(2, 8))
    assert mon.history.steps() == [0, 3, 6]
    log = gradscope.log_schedule(base=2)
    with watch(model, optimizer=opt, every=log) as mon:
        train(model, opt, 9, torch.randn(2, 8))
    assert mon.history.steps() == [0, 1, 2, 4, 8]


def test_gradient_accumulation_reads_accumulated_gradient_once_per_step() -> None:
    torch.manual_seed(0)
    model = mlp(depth=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    xs = [torch.randn(4, 8), torch.randn(4, 8) * 5]
    acts: list[torch.Tensor] = []
    model[1].register_forward_hook(lambda m, a, o: acts.append(o.detach().clone()))
    with watch(model, optimizer=opt) as mon:
        opt.zero_grad()
        for x in xs:
            model(x).pow(2).mean().backward()
        total = model[0].weight.grad.norm().item()
        opt.step()
    h = mon.history
    assert h.series("0.weight", "grad_norm") == ([0], [pytest.approx(total, rel=1e-5)])
    assert h.value("1", "mean") == pytest.approx(acts[0].mean().item(), abs=1e-6)  # first micro-batch


def test_dead_units_window_tracks_units_that_stop_firing() -> None:
    model = nn.Sequential(nn.ReLU())
    with watch(model, dead_window=3) as mon:
        model(torch.tensor([[1.0, 1.0]]))  # step 0: both alive
        for _ in range(4):
            model(torch.tensor([[1.0, -1.0]]))  # steps 1-4: unit 1 silent
    h = mon.history
    assert h.series("0", "dead_units")[1] == [0.0, 0.5, 0.5, 0.5, 0.5]
    # unit 1 last fired at step 0; dead over the window once 3 steps have passed
    assert h.series("0", "dead_units_window")[1] == [0.0, 0.0, 0.0, 0.5, 0.5]


def test_nonfinite_values_are_counted() -> None:
    model = mlp(nn.Tanh, depth=1, width=3)
    x = torch.randn(2, 8)
    x[0, 0] = float("nan")
    with watch(model) as mon:
        model(x).sum().backward()
    h = mon.history
    assert h.value("1", "nonfinite") == 3  # row 0 of a width-3 layer
    assert h.value("0.weight", "grad_nonfinite") > 0
    assert h.value("0", "grad_nonfinite") >= h.value("0.weight", "grad_nonfinite")


def test_inplace_silu_reads_its_input_before_it_is_overwritten() -> None:
    x = torch.tensor([[-1.0, 2.0], [-3.0, 4.0]])
    model = nn.SiLU(inplace=True)
    with watch(model) as mon:
        model(x.clone())
    assert mon.history.value("(root)", "neg_frac") == pytest.approx(0.5)
    s = torch.sigmoid(x)
    assert mon.history.value("(root)", "mean_deriv") == pytest.approx(
        (s * (1 + x * (1 - s))).mean().item(), rel=1e-5)


def test_include_patterns_limit_monitored_modules() -> None:
    model = mlp(depth=3)
    with watch(model, include=["1", "2"]) as mon:
        model(torch.randn(2, 8)).sum().backward()
    assert mon.history.layers("activation") == ["1"]
    assert mon.history.layers("layer") == ["2"]


# ------------------------------------------------------------- sync-freedom
@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_no_host_sync_outside_flush(monkeypatch: pytest.MonkeyPatch, fused: bool) -> None:
    """On an accelerator, item/tolist/cpu/bool/float on any tensor only happen in flush().

    There is no GPU in CI, so the test takes the accelerator code path on the CPU:
    ``stats.host_readable`` is what lets CPU tensors skip work by reading a value. The
    fused path's Triton kernels run interpreted (what the interpreter reads to emulate a
    device inside a launch is not gradscope's: see ``engine.launching``).
    """
    from gradscope import kernels
    from gradscope.kernels import engine
    if fused and NO_TRITON:
        pytest.skip("the triton package is not installed")
    monkeypatch.setattr(stats, "host_readable", lambda t: False)
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(4, 1, 12, 12)
    calls: list[str] = []
    with kernels.interpreted() if fused else contextlib.nullcontext():
        launched = sum(engine.LAUNCHES.values())
        mon = watch(model, optimizer=opt, flush_every=1000, fused=fused, every=2)
        for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
            orig = getattr(torch.Tensor, name)

            def spy(self: torch.Tensor, *a: Any, _n: str = name, _o: Any = orig, **k: Any) -> Any:
                if not engine.launching():
                    calls.append(_n)
                return _o(self, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, spy)
        for _ in range(3):
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            loss.backward()
            opt.step()
        assert calls == []
        assert (sum(engine.LAUNCHES.values()) > launched) == fused
        monkeypatch.undo()
        mon.close()
    assert mon.history.steps() == [0, 2]  # every=2: step 1 ran the every-step check only


@pytest.mark.parametrize("poison", [False, True], ids=["finite", "nan_input"])
def test_cpu_shortcuts_record_what_the_accelerator_path_records(
        monkeypatch: pytest.MonkeyPatch, poison: bool) -> None:
    """Reading CPU values to skip work (non-finite counts, the two-pass std) changes nothing."""

    def run() -> dict[tuple[int, str, str], float]:
        torch.manual_seed(0)
        model = SmallCNN()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x = torch.randn(4, 1, 12, 12)
        if poison:
            x[1, 0, 3, 3] = float("nan")
        with watch(model, optimizer=opt, summary=False) as mon:
            train(model, opt, 2, x)
        h = mon.history
        return {(s, layer, m): v for layer in h.layers() for m in h.metrics(layer)
                for s, v in zip(*h.series(layer, m))}

    host = run()
    monkeypatch.setattr(stats, "host_readable", lambda t: False)
    device = run()
    assert host.keys() == device.keys()
    for key, v in host.items():  # the std is one-pass on the CPU, two-pass otherwise
        assert v == pytest.approx(device[key], rel=1e-4, abs=1e-7, nan_ok=True), key
    counts = [v for (_, _, m), v in host.items() if m.endswith("nonfinite")]
    assert (max(counts) > 0) == poison


def test_queued_state_is_independent_of_batch_size() -> None:
    """Memory is O(layers): what the monitor holds does not grow with the batch."""

    def held_numel(batch: int) -> int:
        torch.manual_seed(0)
        model = SmallCNN()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        mon = watch(model, optimizer=opt, flush_every=1000)
        train(model, opt, 2, torch.randn(batch, 1, 12, 12))
        n = mon.held_bytes() + mon._recorder.held_numel()
        assert not mon._modules.held() and not mon._params.held()
        mon.close()
        return n

    assert held_numel(2) == held_numel(64)


# ------------------------------------------------------------------- effects
def _first_last_backprop(act: type[nn.Module], init: str, seed: int) -> tuple[float, float, float]:
    """(first/output pre-activation gradient ratio, first/last grad_out_rms ratio, first-layer saturation)."""
    torch.manual_seed(seed)
    model = mlp(act, depth=5, width=30, d_in=784, d_out=10, init=init)
    x = torch.rand(128, 784) * (torch.rand(128, 784) < 0.2)  # sparse [0, 1] pixels, like MNIST
    y = torch.randint(0, 10, (128,))
    with watch(model) as mon:
        nn.functional.cross_entropy(model(x), y).backward()
    h = mon.history
    # The bias gradient is the back-propagated gradient w.r.t. each layer's pre-activation.
    bias = [v for k, v in h.last("grad_norm", "parameter").items() if k.endswith("bias")]
    gout = list(h.last("grad_out_rms").values())
    sat = list(h.last("saturation").values())
    return bias[0] / bias[-1], gout[0] / gout[-1], (sat[0] if sat else 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deep_sigmoid_normal_init_vanishes_while_relu_he_does_not(seed: int) -> None:
    sig_ratio, _, sig_sat = _first_last_backprop(nn.Sigmoid, "normal", seed)
    relu_ratio, relu_gout, _ = _first_last_backprop(nn.ReLU, "he", seed)
    xav_ratio, xav_gout, xav_sat = _first_last_backprop(nn.Sigmoid, "xavier", seed)
    assert sig_sat > 0.4  # heavy saturation in the first layer
    assert sig_ratio < 0.15  # more than an order of magnitude below the output layer
    # He init keeps the back-propagated gradient's size through depth (0.85-1.10 measured
    # for seeds 0-2; a wrong scale per layer or width would leave this band)
    assert 0.5 < relu_ratio < 2 and 0.5 < relu_gout < 2
    assert relu_ratio > 5 * sig_ratio
    # Xavier alone does not cure sigmoid: sigma' <= 1/4 shrinks the signal at every layer.
    assert xav_sat < 0.05
    assert xav_ratio < 0.01 and xav_gout < 0.05


# -------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    "kwargs,match",
    [({"every": 0}, "every=0"), ({"flush_every": 0}, "flush_every=0"),
     ({"eps": 1.5}, "eps=1.5"), ({"delta": 0}, "delta=0"), ({"dead_window": -1}, "dead_window=-1"),
     ({"unit_dim": "last"}, "unit_dim"), ({"include": [3]}, "include="),
     ({"sinks": [object()]}, "sinks")],
    ids=["every", "flush_every", "eps", "delta", "dead_window", "unit_dim", "include", "sinks"],
)
def test_bad_options_name_the_argument(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        watch(mlp(), **kwargs)


def test_bad_model_and_optimizer_types() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        watch(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="optimizer"):
        watch(mlp(), optimizer="sgd")  # type: ignore[arg-type]


def test_a_failing_hook_warns_once_and_training_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from gradscope import plan

    def broken(*a: Any, **k: Any) -> Any:
        raise ValueError("bad stats")

    monkeypatch.setattr(plan.Plan, "run", broken)
    model = mlp(depth=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with watch(model) as mon:
            for _ in range(3):
                model(torch.randn(2, 8)).sum().backward()
    assert sum("stopped monitoring '1'" in str(w.message) for w in caught) == 1
    assert "grad_norm" in mon.history.metrics("0")
    with pytest.raises(ValueError, match="bad stats"), watch(model, strict=True):
        model(torch.randn(2, 8))


def test_torchvision_resnet_reused_relu_has_two_call_sites_per_block() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, optimizer=opt) as mon:
        train(model, opt, 1, torch.randn(2, 3, 32, 32))
    acts = mon.history.layers("activation")
    assert len(acts) == 1 + 8 * 2  # the stem's relu, then two calls of each block's relu
    assert acts[:3] == ["relu", "layer1.0.relu", "layer1.0.relu[1]"]
    assert all(mon.history.value(a, "grad_out_norm") > 0 for a in acts)
    assert len(mon.history.layers("layer")) == 1 + 1 + 8 * 4 + 3 * 2 + 1  # conv/bn/fc, downsample


def test_a_monitor_left_open_is_closed_at_exit_with_nothing_lost(tmp_path: Any) -> None:
    """A script that never calls close(): at exit the queued steps reach TensorBoard."""
    import subprocess
    import sys
    from pathlib import Path

    from gradscope.events import event_files, read_events, scalars

    script = (
        "import torch, gradscope\n"
        "from torch import nn\n"
        "m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))\n"
        "opt = torch.optim.SGD(m.parameters(), lr=0.1)\n"
        f"mon = gradscope.watch(m, optimizer=opt, logdir={str(tmp_path / 'tb')!r}, "
        "flush_every=100, summary=False)\n"
        "for _ in range(7):\n"
        "    opt.zero_grad(); m(torch.randn(16, 4)).pow(2).mean().backward(); opt.step()\n"
        "print('left open')\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "garbage-collected without close()" not in proc.stderr  # closed before finalization
    steps = {s.step for f in event_files(tmp_path / "tb") for s in scalars(read_events(f))
             if s.tag.startswith("grad_norm/")}
    assert steps == set(range(7))
