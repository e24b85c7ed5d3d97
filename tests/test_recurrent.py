"""Recurrent layers: the replay, ∂L/∂h_t through time and the gates, against hand-unrolled cells."""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gradscope
from gradscope import metrics
from gradscope.capture.recurrent import PROFILE
from gradscope.history import MAX_PROFILE_ROWS, History
from gradscope.recurrence import replay, time_major
from gradscope.recurrent_stats import downsample, profile_summary
from gradscope.writers import figures

CELLS = {"RNN": nn.RNNCell, "LSTM": nn.LSTMCell, "GRU": nn.GRUCell}
CONFIGS = [
    pytest.param("RNN", dict(num_layers=2), id="rnn-2layers"),
    pytest.param("LSTM", dict(num_layers=2, batch_first=True), id="lstm-2layers-batch_first"),
    pytest.param("GRU", dict(bidirectional=True), id="gru-bidirectional"),
    pytest.param("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True),
                 id="lstm-2layers-bidirectional"),
]
T, B, F, H = 6, 3, 4, 5


def _cell(mode: str, module: nn.RNNBase, suffix: str) -> nn.Module:
    """A float64 cell holding the weights ``*_<suffix>`` of a fused module."""
    in_size = getattr(module, f"weight_ih_{suffix}").shape[1]
    cell = CELLS[mode](in_size, module.hidden_size).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(module, f"{name}_{suffix}"))
    return cell


def unrolled(mode: str, module: nn.RNNBase, x: Tensor) -> tuple[Tensor, dict[str, list[Tensor]]]:
    """The module by hand, one cell call per step: output ``(T, B, H·dirs)`` and every ``h_t``.

    ``x`` is time-major float64; the ``h_t`` (per series, in time order) retain their grad.
    """
    dirs = 2 if module.bidirectional else 1
    hs: dict[str, list[Tensor]] = {}
    for layer in range(module.num_layers):
        outs = []
        for d in range(dirs):
            suffix = f"l{layer}" + ("_reverse" if d else "")
            cell = _cell(mode, module, suffix)
            h = x.new_zeros(x.shape[1], module.hidden_size)
            c = h.clone()
            seq: list[Optional[Tensor]] = [None] * x.shape[0]
            for t in (reversed(range(x.shape[0])) if d else range(x.shape[0])):
                if mode == "LSTM":
                    h, c = cell(x[t], (h, c))
                else:
                    h = cell(x[t], h)
                h.retain_grad()
                seq[t] = h
            hs[suffix] = seq  # type: ignore[assignment]
            outs.append(torch.stack(seq))  # type: ignore[arg-type]
        x = torch.cat(outs, -1)
    return x, hs


def _norms(hs: list[Tensor], reverse: bool) -> list[float]:
    """``‖∂L/∂h_t‖`` in processing order."""
    out = [float(h.grad.norm()) for h in hs]  # type: ignore[union-attr]
    return out[::-1] if reverse else out


@pytest.mark.parametrize("mode,kw", CONFIGS)
def test_gradient_through_time_matches_hand_unrolled_cells(mode: str, kw: dict[str, Any]) -> None:
    torch.manual_seed(0)
    rnn = getattr(nn, mode)(F, H, **kw)
    bf = kw.get("batch_first", False)
    x = torch.randn(B, T, F) if bf else torch.randn(T, B, F)
    dirs = 2 if kw.get("bidirectional") else 1
    w = torch.randn(T, B, H * dirs)  # weights of every output step in the loss
    opt = torch.optim.SGD(rnn.parameters(), lr=0.0)
    with gradscope.watch(rnn, optimizer=opt) as mon:
        out, _ = rnn(x)
        loss = ((out.transpose(0, 1) if bf else out) * w).sum()
        loss.backward()
        opt.step()
    ref_out, hs = unrolled(mode, rnn, (x.transpose(0, 1) if bf else x).double())
    (ref_out * w.double()).sum().backward()
    h = mon.history
    assert sorted(h.layers("recurrent")) == sorted(f"(root).{s}" for s in hs)
    for suffix, seq in hs.items():
        name = f"(root).{suffix}"
        ref = _norms(seq, suffix.endswith("reverse"))
        steps, positions, values = h.profile(name, PROFILE)
        assert steps == [0] and positions == [tuple(range(T))]
        torch.testing.assert_close(torch.tensor(values[0]), torch.tensor(ref, dtype=torch.float32),
                                   rtol=1e-4, atol=1e-6)
        assert h.value(name, "grad_h_ratio") == pytest.approx(ref[0] / ref[-1], rel=1e-4)
        assert h.value(name, "seq_len") == T


def test_packed_sequence_profile_counts_only_live_rows() -> None:
    torch.manual_seed(1)
    lstm = nn.LSTM(F, H, batch_first=True)
    lengths = [6, 4, 2]
    x = torch.randn(3, 6, F)
    w = torch.randn(3, 6, H)
    with gradscope.watch(lstm) as mon:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = lstm(packed)
        padded, _ = pad_packed_sequence(out, batch_first=True)
        (padded * w[:, :padded.shape[1]]).sum().backward()
    # reference: each sequence alone, over its own length
    sq = [0.0] * 6
    for b, n in enumerate(lengths):
        ref_out, hs = unrolled("LSTM", lstm, x[b:b + 1, :n].transpose(0, 1).double())
        (ref_out * w[b:b + 1, :n].transpose(0, 1).double()).sum().backward()
        for t, g in enumerate(_norms(hs["l0"], False)):
            sq[t] += g * g
    ref = [math.sqrt(v) for v in sq]
    _, _, values = mon.history.profile("(root).l0", PROFILE)
    assert values[0] == pytest.approx(ref, rel=1e-4, abs=1e-7)


def test_replay_matches_fused_kernel_packed_and_projected() -> None:
    torch.manual_seed(2)
    lstm = nn.LSTM(F, H, num_layers=2, bidirectional=True, proj_size=3)
    x = torch.randn(5, 3, F)
    packed = pack_padded_sequence(x, [5, 3, 4], enforce_sorted=False)
    out, (h_n, c_n) = lstm(packed)
    rows, sizes = time_major(packed, batch_first=False)
    r = replay(lstm, rows, sizes, None)
    torch.testing.assert_close(r.output, out.data, atol=1e-5, rtol=1e-5)
    idx = packed.sorted_indices
    torch.testing.assert_close(r.h_n, h_n.index_select(1, idx), atol=1e-5, rtol=1e-5)
    assert r.c_n is not None
    torch.testing.assert_close(r.c_n, c_n.index_select(1, idx), atol=1e-5, rtol=1e-5)


def _gate_reference(mode: str, cell: nn.Module, x: Tensor, eps: float) -> dict[str, float]:
    """Gate statistics of a hand-unrolled cell: gates recomputed from its weights at every step."""
    h = x.new_zeros(x.shape[1], cell.hidden_size)
    c = h.clone()
    names = ("input", "forget", "cand", "output") if mode == "LSTM" else ("reset", "update", "new")
    seen: dict[str, list[Tensor]] = {n: [] for n in names}
    hidden = []
    for t in range(x.shape[0]):
        gi = x[t] @ cell.weight_ih.t() + cell.bias_ih
        gh = h @ cell.weight_hh.t() + cell.bias_hh
        if mode == "LSTM":
            for n, g in zip(names, (gi + gh).chunk(4, 1)):
                seen[n].append(torch.sigmoid(g))
            h, c = cell(x[t], (h, c))
        else:
            for n, a, b in zip(names, gi.chunk(3, 1), gh.chunk(3, 1)):
                seen[n].append(torch.sigmoid(a + b))
            h = cell(x[t], h)
        hidden.append(h)
    hs = torch.stack(hidden)
    out = {"hidden_saturation": float((hs.abs() > 1 - eps).double().mean())}
    keep = "forget" if mode == "LSTM" else "update"
    g = {n: torch.stack(v) for n, v in seen.items()}
    out[f"{keep}_open"] = float((g[keep] >= 1 - eps).double().mean())
    out[f"{keep}_shut"] = float((g[keep] <= eps).double().mean())
    for n in (("input", "forget", "output") if mode == "LSTM" else ("reset", "update")):
        out[f"{n}_mean"] = float(g[n].mean())
    return out


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_gates_match_hand_unrolled_cell(mode: str) -> None:
    torch.manual_seed(3)
    rnn = getattr(nn, mode)(F, H, num_layers=2)
    with torch.no_grad():  # large weights: some gates saturate either way
        for p in rnn.parameters():
            p.mul_(6.0)
    x = torch.randn(T, B, F)
    eps = 0.05
    with gradscope.watch(rnn, eps=eps) as mon:
        out, _ = rnn(x)
        out.sum().backward()
    with torch.no_grad():
        ref0 = _gate_reference(mode, _cell(mode, rnn, "l0"), x.double(), eps)
        x1 = _layer0_output(mode, rnn, x)
        ref1 = _gate_reference(mode, _cell(mode, rnn, "l1"), x1.double(), eps)
    h = mon.history
    keep = "forget" if mode == "LSTM" else "update"
    assert 0 < ref0[f"{keep}_open"] + ref0[f"{keep}_shut"] < 1  # the test sees both sides
    for name, ref in (("(root).l0", ref0), ("(root).l1", ref1)):
        for metric, value in ref.items():
            assert h.value(name, metric) == pytest.approx(value, abs=1e-6), (name, metric)


def _layer0_output(mode: str, rnn: nn.RNNBase, x: Tensor) -> Tensor:
    one = getattr(nn, mode)(F, H)
    with torch.no_grad():
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(one, f"{n}_l0").copy_(getattr(rnn, f"{n}_l0"))
    return one(x)[0]


class CellLoop(nn.Module):
    """A model that loops over a cell, as people write seq2seq decoders."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.cell = CELLS[mode](F, H)
        self.head = nn.Linear(H, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        h = x.new_zeros(x.shape[1], H)
        c = h.clone()
        hs = []
        for t in range(x.shape[0]):
            if self.mode == "LSTM":
                h, c = self.cell(x[t], (h, c))
            else:
                h = self.cell(x[t], h)
            h.retain_grad()
            hs.append(h)
        return self.head(h), hs


@pytest.mark.parametrize("mode", ["RNN", "LSTM", "GRU"])
def test_cell_loop_profile_and_gates(mode: str) -> None:
    torch.manual_seed(4)
    model = CellLoop(mode)
    x = torch.randn(T, B, F)
    eps = 0.2
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gradscope.watch(model, optimizer=opt, eps=eps) as mon:
        y, hs = model(x)
        y.square().sum().backward()
        opt.step()
    h = mon.history
    assert h.layers("recurrent") == ["cell.h"]
    _, positions, values = h.profile("cell.h", PROFILE)
    assert positions == [tuple(range(T))]
    ref = [float(t.grad.norm()) for t in hs]  # type: ignore[union-attr]
    assert values[0] == pytest.approx(ref, rel=1e-5)
    assert h.value("cell.h", "grad_h_ratio") == pytest.approx(ref[0] / ref[-1], rel=1e-5)
    with torch.no_grad():
        gates = _gate_reference(mode, model.cell, x, eps) if mode != "RNN" else {
            "hidden_saturation": float((torch.stack(hs).abs() > 1 - eps).float().mean())}
    for metric, value in gates.items():
        assert h.value("cell.h", metric) == pytest.approx(value, abs=1e-6), metric


class Classifier(nn.Module):
    def __init__(self, **kw: Any) -> None:
        super().__init__()
        self.rnn = nn.GRU(F, H, batch_first=True, **kw)
        self.fc = nn.Linear(H, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.rnn(x)[0][:, -1])


def test_vanishing_profile_summary_and_hooks_removed() -> None:
    torch.manual_seed(5)
    model = Classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    counts = [len(m._forward_hooks) for m in model.modules()]
    with gradscope.watch(model, optimizer=opt) as mon:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(B, 40, F)).square().sum().backward()
            opt.step()
        assert mon._recurrent.held() == 0
    assert [len(m._forward_hooks) for m in model.modules()] == counts
    h = mon.history
    steps, ratios = h.series("rnn.l0", "grad_h_ratio")
    assert steps == [0, 1, 2] and all(0 < r < 1 for r in ratios)
    assert h.value("rnn.l0", "seq_len") == 40
    assert h.info("rnn.l0").kind == "recurrent" and h.info("rnn.l0").type == "GRU"
    assert "rnn" in mon._ctx.covered and "∂L/∂h_t" in mon._ctx.covered["rnn"]


def test_interlayer_dropout_records_layer0_gates_only_and_warns() -> None:
    torch.manual_seed(6)
    model = Classifier(num_layers=2, dropout=0.5)
    with pytest.warns(RuntimeWarning, match="dropout=0.5 between its layers"):
        with gradscope.watch(model) as mon:
            model(torch.randn(B, T, F)).sum().backward()
    h = mon.history
    assert h.layers("recurrent") == ["rnn.l0"]
    assert "update_mean" in h.metrics("rnn.l0") and "grad_h_ratio" not in h.metrics("rnn.l0")


def test_eval_forward_records_gates_without_backward() -> None:
    model = Classifier().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with gradscope.watch(model, record_eval=True) as mon, torch.no_grad():
            model(torch.randn(B, T, F))
    assert "update_mean" in mon.history.metrics("rnn.l0")
    assert mon._recurrent.held() == 0


def test_every_recurrent_spec_is_recorded() -> None:
    lstm, gru = nn.LSTM(F, H), nn.GRU(F, H)
    names = set()
    for m in (lstm, gru):
        with gradscope.watch(m) as mon:
            m(torch.randn(T, B, F))[0].sum().backward()
        names |= set(mon.history.metrics())
    assert {s.name for s in metrics.by_kind("gates", "through_time")} <= names


def test_profile_summary_and_downsample() -> None:
    assert profile_summary([1e-4, 0.5, 1.0, 0.2]) == {"first": 1e-4, "last": 0.2, "fall": 0.0,
                                                      "len": 4.0}
    assert profile_summary([1.0, 0.5])["fall"] == -1.0
    assert math.isnan(profile_summary([0.0, 0.0])["fall"])
    assert math.isnan(profile_summary([])["first"])
    pos, vals = downsample(list(map(float, range(200))), 64)
    assert len(pos) == 64 and pos[0] == 0 and pos[-1] == 199 and vals == [float(p) for p in pos]


def test_history_profiles_thin_evenly_and_round_trip(tmp_path: Any) -> None:
    h = History()
    for s in range(3 * MAX_PROFILE_ROWS):
        h.add_profile(s, "rnn.l0", PROFILE, (0, 1), [float(s), math.inf])
    steps, positions, values = h.profile("rnn.l0", PROFILE)
    assert len(steps) <= MAX_PROFILE_ROWS and steps[0] == 0
    gaps = {b - a for a, b in zip(steps, steps[1:])}
    assert gaps == {4}  # evenly spread
    h.save(tmp_path / "h.json")
    back = History.load(tmp_path / "h.json")
    assert back.profile("rnn.l0", PROFILE) == (steps, positions, values)
    with pytest.raises(KeyError, match="no profile"):
        h.profile("rnn.l1", PROFILE)


def test_time_gradient_image() -> None:
    h = History()
    assert figures.time_gradient_image(h) is None
    for s in range(5):
        h.add_profile(s, "rnn.l0", PROFILE, tuple(range(10)), [10.0 ** (k - 9) for k in range(10)])
    img = figures.time_gradient_image(h)
    assert img is not None and img.ndim == 3 and img.shape[2] == 3 and img.dtype.name == "uint8"


def test_tensorboard_and_report_show_recurrent_layers(tmp_path: Any) -> None:
    from gradscope import report
    from gradscope.writers import TensorBoardWriter

    torch.manual_seed(7)
    model = Classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, optimizer=opt, sinks=[TensorBoardWriter(tmp_path)],
                         summary=False) as mon:
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(B, 30, F)).square().sum().backward()
            opt.step()
    run = report.load_run(tmp_path, tmp_path)
    assert run is not None
    assert run.history.value("rnn.l0", "grad_h_ratio") == pytest.approx(
        mon.history.value("rnn.l0", "grad_h_ratio"), rel=1e-6)
    text = report.render([run], "text")
    assert "recurrent layers" in text and "rnn.l0" in text and "∂L/∂h first/last" in text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    assert "gradscope/time_gradient" in ea.Tags()["images"]
