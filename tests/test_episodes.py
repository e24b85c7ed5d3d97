"""Findings are episodes: what held mid-run and resolved is still told at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradscope
from gradscope.findings import analyze
from gradscope.findings.scan import EPISODES_KEPT, Episode, Run
from gradscope.history import History, LayerInfo
from gradscope.report import report
from gradscope.writers import MemoryWriter
from gradscope.writers.layout import findings_markdown


# ------------------------------------------------------------ the run level
def naive_episodes(values: list[float], bad: Callable[[float], bool], window: int,
                   low: bool) -> list[Episode]:
    """Episodes by index arithmetic: bad runs of ``window`` or more points open one; any bad
    run after fewer than ``window`` good points extends it; the worst over its bad points."""
    runs, i = [], 0  # maximal bad runs (start, end) inclusive
    while i < len(values):
        if bad(values[i]):
            j = i
            while j + 1 < len(values) and bad(values[j + 1]):
                j += 1
            runs.append((i, j))
            i = j + 1
        else:
            i += 1
    out: list[list[int]] = []
    for a, b in runs:
        if out and a - out[-1][1] - 1 < window:
            out[-1][1] = b
        elif b - a + 1 >= window:
            out.append([a, b])
    eps = []
    for a, b in out:
        idx = [k for k in range(a, b + 1) if bad(values[k])]
        target = (min if low else max)(values[k] for k in idx)
        w = next(k for k in idx if values[k] == target)  # the first of equal worst values
        eps.append(Episode(a, b, target, w))
    return eps


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.5, 0.7, 0.9]), max_size=60),
       st.integers(1, 4), st.booleans(), st.integers(1, 7))
def test_episodes_match_a_naive_reading(values: list[float], window: int, low: bool,
                                        chunk: int) -> None:
    bad = (lambda v: v < 0.6) if low else (lambda v: v > 0.6)
    run = Run(window)
    run.low = low
    for k in range(0, len(values), chunk):  # read in flushes of any size
        run.feed(range(k, min(k + chunk, len(values))), values[k:k + chunk], bad)
    want = naive_episodes(values, bad, window, low)
    got = run.episodes + ([run.current()] if run.current() is not None else [])  # type: ignore[list-item]
    if len(want) <= EPISODES_KEPT:
        assert got == want
    assert run.holds(window) == (bool(want) and want[-1].last == len(values) - 1
                                 and all(bad(v) for v in values[-window:]))


def test_episodes_stay_bounded_and_merge_the_closest_neighbours() -> None:
    run = Run(window=1)
    values: list[float] = []
    for k in range(3 * EPISODES_KEPT):  # bad, then a gap growing with k
        values += [1.0 + k] + [0.0] * (1 + k)
    run.feed(range(len(values)), values, lambda v: v > 0.5)
    assert len(run.episodes) == EPISODES_KEPT
    assert run.episodes[0].first == 0 and run.episodes[-1].last == values.index(3 * EPISODES_KEPT)
    assert sum(e.merged for e in run.episodes) == 3 * EPISODES_KEPT
    assert run.episodes[0].worst == 1.0 + 2 * EPISODES_KEPT  # the first merged the most
    assert max(e.worst for e in run.episodes) == 3 * EPISODES_KEPT


# --------------------------------------------------------- the history level
def _vanishing_then_healthy(until: int, steps: int = 20) -> History:
    h = History()
    for i in range(2):
        h.add_layer(LayerInfo(f"fc{i}", kind="layer", order=i, type="Linear"))
    for s in range(steps):
        h.add(s, "fc0", "grad_norm", (1e-4 + 1e-5 * s) if s <= until else 0.5)
        h.add(s, "fc1", "grad_norm", 1.0)
    return h


def test_a_resolved_episode_is_reported_with_its_steps_and_worst_value() -> None:
    found = analyze(_vanishing_then_healthy(until=9))
    assert [(f.rule, f.layer, f.resolved) for f in found] == [("vanishing_gradients", "fc0", True)]
    (f,) = found
    assert (f.first_step, f.last_step, f.worst_step) == (0, 9, 0)
    assert f.worst == pytest.approx(1e-4)
    assert f.message.startswith("fc0: steps 0–9 (resolved), worst 1.0e-04 at step 0: ")
    assert "vanishing" not in findings_markdown([])
    text = findings_markdown(found)
    assert "Held before (resolved)" in text and "Holding now" not in text


def test_the_episodes_of_a_rule_and_layer_are_told_on_one_line() -> None:
    h = _vanishing_then_healthy(until=4, steps=30)
    d = h.to_dict()
    steps, values = d["data"]["fc0"]["grad_norm"]
    d["data"]["fc0"]["grad_norm"] = [steps, [5e-5 if 12 <= s <= 20 else v
                                             for s, v in zip(steps, values)]]
    (f,) = analyze(History.from_dict(d))
    assert f.resolved and (f.first_step, f.last_step, f.episodes) == (0, 20, 2)
    assert (f.worst, f.worst_step) == (5e-5, 12)
    assert f.message.startswith("fc0: steps 0–20 (resolved; 2 episodes: 0–4, 12–20), worst "
                                "5.0e-05 at step 12: ")


def test_a_holding_episode_comes_first_and_keeps_its_worst() -> None:
    found = analyze(_vanishing_then_healthy(until=99))
    (f,) = found
    assert not f.resolved and (f.first_step, f.worst_step) == (0, 0)
    assert f.worst == pytest.approx(1e-4) and f.value == pytest.approx(1e-4 + 1.9e-4)


# ---------------------------------------------------------- the monitor level
class Gate(nn.Module):
    """Sigmoid saturated (input ×40) until ``open`` is set: a condition that resolves mid-run."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(8, 16), nn.Sigmoid(), nn.Linear(16, 4)
        self.gain = 40.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.gain * self.fc1(x)))


def _gated(steps: int, until: int, **options: object) -> tuple[gradscope.Monitor, MemoryWriter]:
    torch.manual_seed(0)
    model, mem = Gate(), MemoryWriter()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.watch(model, optimizer=opt, flush_every=4, sinks=[mem], **options) as mon:
        for step in range(steps):
            model.gain = 40.0 if step <= until else 0.1
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(32, 8)), torch.randint(0, 4, (32,))
                                        ).backward()
            opt.step()
            if step == until:
                held = [f for f in mon.findings() if f.rule == "saturation"]
                assert held and not held[0].resolved  # it holds mid-run
    return mon, mem


def test_a_finding_that_held_mid_run_is_still_told_at_the_end(
        capsys: pytest.CaptureFixture[str]) -> None:
    mon, mem = _gated(30, until=12)
    (f,) = [f for f in mon.findings() if f.rule == "saturation"]
    assert f.resolved and f.layer == "act" and (f.first_step, f.last_step) == (0, 12)
    assert f.worst > 0.3 and 0 <= f.worst_step <= 12
    assert "act: steps 0–12 (resolved)" in f.message
    err = capsys.readouterr().err
    assert "finding over steps 0..29 (0 holding at the end, 1 resolved)" in err
    assert "steps 0–12 (resolved)" in err
    last_step, last = mem.findings[-1]  # the sinks' last text tells the whole run
    assert last_step == 29 and [g.resolved for g in last if g.rule == "saturation"] == [True]


def test_episodes_outlive_the_history_thinning() -> None:
    mon, _ = _gated(60, until=8, retention=gradscope.Retention(recent=8, per_octave=2, head=1),
                    summary=False)
    assert mon.history.recorded() > len(mon.history.series("act", "saturation")[0])
    (f,) = [f for f in mon.findings() if f.rule == "saturation"]
    assert f.resolved and (f.first_step, f.last_step) == (0, 8)


def test_the_report_and_the_tensorboard_text_list_episodes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mon, _ = _gated(24, until=10, logdir=tmp_path, summary=False)
    capsys.readouterr()
    assert report(tmp_path) == 0
    out = capsys.readouterr().out
    assert "saturation" in out and "act: steps 0–10 (resolved)" in out
    ea = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    ea.Reload()
    texts = ea.Tensors("gradscope/findings/text_summary")
    last = texts[-1].tensor_proto.string_val[0].decode()
    assert "Held before (resolved)" in last  # the text kept is what the run ends with
    assert last == findings_markdown(mon.findings())


def test_grid_results_mark_what_resolved() -> None:
    from gradscope.experiments.results import _findings
    from gradscope.findings import Finding

    class Mon:
        def findings(self) -> list[Finding]:
            return [Finding("warning", "saturation", "act", 5, "m"),
                    Finding("warning", "vanishing_gradients", "fc1", 0, "m", resolved=True)]

    assert _findings(Mon()) == ["saturation (act)", "vanishing_gradients resolved (fc1)"]
