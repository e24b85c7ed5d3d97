"""The sink base: optional methods, failure isolation, duck-typed sinks, findings as a sink."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from torch import nn

import gradscope
from gradscope import Record, Sink, watch
from gradscope.findings import FindingsSink
from gradscope.history import History
from gradscope.writers import MemoryWriter
from gradscope.writers.base import as_sink, overrides
from tests.fixtures.models import mlp


class Flaky(Sink):
    """Fails on the calls listed in ``fail_on`` (1-based), writes otherwise."""

    def __init__(self, fail_on: Sequence[int]) -> None:
        self.fail_on = set(fail_on)
        self.calls = 0
        self.records: list[Record] = []

    def write(self, records: Sequence[Record], history: History) -> None:
        self.calls += 1
        if self.calls in self.fail_on:
            raise OSError(28, "No space left on device")
        self.records.extend(records)


def _run(steps: int, *sinks: Any, **options: Any) -> gradscope.Monitor:
    torch.manual_seed(0)
    model = mlp(depth=1)
    options.setdefault("summary", False)
    with watch(model, sinks=list(sinks), flush_every=1, **options) as mon:
        for _ in range(steps):
            model(torch.randn(4, 8)).sum().backward()
    return mon


def test_a_failing_sink_warns_once_and_the_others_and_training_go_on() -> None:
    flaky, mem = Flaky(fail_on=[1, 2]), MemoryWriter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = _run(4, flaky, mem)
    messages = [str(w.message) for w in caught if "gradscope: sink" in str(w.message)]
    assert len(messages) == 1
    assert "Flaky" in messages[0] and "write()" in messages[0] and "No space left" in messages[0]
    assert mem.writes == 4 and mon.history.steps() == [0, 1, 2, 3]
    # called again after failing: steps 2 and 3 reached it once it recovered
    assert flaky.calls == 4
    assert sorted({r.step for r in flaky.records}) == [2, 3]


def test_optional_methods_are_no_ops_and_detected_by_override() -> None:
    class OnlyWrite(Sink):
        def write(self, records: Sequence[Record], history: History) -> None:
            pass

    s = OnlyWrite()
    s.write_histograms([])
    s.write_findings([], 0)
    s.flush()
    s.close()
    assert not overrides(s, "write_histograms")
    assert overrides(MemoryWriter(), "write_histograms")
    with pytest.raises(NotImplementedError, match="must implement write"):
        Sink().write([], History())


def test_duck_typed_sinks_are_accepted_and_bad_ones_rejected() -> None:
    class Duck:
        def __init__(self) -> None:
            self.got: list[Any] = []
            self.closed = False

        def write(self, records: Any, history: Any) -> None:
            self.got += list(records)

        def close(self) -> None:
            self.closed = True

    duck = Duck()
    _run(2, duck)
    assert duck.got and duck.closed
    assert not overrides(as_sink(duck), "write_histograms")
    with pytest.raises(TypeError, match="is not a sink: it has no write"):
        watch(mlp(), sinks=[object()])


def test_findings_are_a_sink_delivered_to_sinks_that_write_them(
        capsys: pytest.CaptureFixture[str]) -> None:
    mem = MemoryWriter()
    mon = _run(3, mem, summary=True)
    assert isinstance(mon.sinks[0], FindingsSink)
    assert [step for step, _ in mem.findings] == [0, 1, 2, 2]  # each flush, and at close
    assert "gradscope: no findings over steps 0..2" in capsys.readouterr().err
    mon = _run(3, Flaky([]))  # nobody writes findings: nothing is delivered, but the rules
    sink = mon.sinks[0]  # still read each point once, while it is new (episodes: whole run)
    assert isinstance(sink, FindingsSink) and sink.deliver is None
    assert 0 < sink.reads <= mon.history.recorded() and sink.latest == []
    got: list[int] = []
    sink = FindingsSink(gradscope.Thresholds(), deliver=lambda found, step: got.append(step),
                        summary=False)
    sink.write([Record(0, "a", "mean", 0.0)], History())
    assert got == [0]  # the findings go to the callback, not to a fan-out


def test_findings_off_means_no_findings_sink() -> None:
    mon = _run(1, findings=False)
    assert not any(isinstance(s, FindingsSink) for s in mon.sinks)


def test_tensorboard_background_failure_is_reported_and_writing_resumes(tmp_path: Any) -> None:
    """An error on the writer's thread reaches the monitor's warning; later flushes still write."""
    from gradscope.writers import TensorBoardWriter

    writer = TensorBoardWriter(tmp_path, images=False, background=False)
    real = writer.summary_writer.add_scalar
    state = {"fail": True}

    def add_scalar(*a: Any, **k: Any) -> None:
        if state["fail"]:
            raise OSError(28, "No space left on device")
        real(*a, **k)

    writer.summary_writer.add_scalar = add_scalar  # type: ignore[method-assign]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with watch(model, sinks=[writer], flush_every=1, summary=False):
            model(torch.randn(2, 3)).sum().backward()
            model(torch.randn(2, 3)).sum().backward()
            state["fail"] = False
            for _ in range(3):
                model(torch.randn(2, 3)).sum().backward()
    said = [str(w.message) for w in caught if "No space left" in str(w.message)]
    assert len(said) == 3, said
    # the error itself (once), then what was lost: when writing recovers and at close
    assert "TensorBoardWriter" in said[0] and "called again at the next flush" in said[0]
    assert "works again" in said[1] and "failed during this run" in said[2]
    lost = len([w for w in writer_tags(tmp_path) if w[0] == 1])  # the scalars of one step
    for text in said[1:]:
        assert f"{lost} scalar values (steps 0..0)" in text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    steps = [e.step for e in ea.Scalars("mean/1")]
    assert steps == [1, 2, 3, 4]  # step 0 was lost (and counted); nothing after it


def writer_tags(logdir: Any) -> list[tuple[int, str]]:
    """``(step, tag)`` of every scalar in the event files under ``logdir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir))
    ea.Reload()
    return [(e.step, tag) for tag in ea.Tags()["scalars"] for e in ea.Scalars(tag)]
