"""History: ordering, lookups, persistence; schedules."""

from __future__ import annotations

import math

import pytest

from gradscope.history import History, LayerInfo
from gradscope.schedules import as_schedule, every, log_schedule


def make() -> History:
    h = History()
    h.add_layer(LayerInfo("b", kind="activation", order=1, type="ReLU", family="relu"))
    h.add_layer(LayerInfo("a", kind="activation", order=0, type="Tanh", family="tanh"))
    h.add_layer(LayerInfo("fc", kind="layer", order=0, type="Linear"))
    for step in (0, 5):
        h.add(step, "a", "std", 1.0 + step)
        h.add(step, "b", "std", 2.0 + step)
        h.add(step, "fc", "grad_norm", float("nan") if step else 0.5)
    return h


def test_layers_follow_network_order_within_kind() -> None:
    h = make()
    assert h.layers() == ["a", "b", "fc"]
    assert h.layers("activation") == ["a", "b"]
    with pytest.raises(ValueError, match="kind"):
        h.layers("neuron")


def test_lookups() -> None:
    h = make()
    assert h.series("a", "std") == ([0, 5], [1.0, 6.0])
    assert h.value("b", "std") == 7.0
    assert h.value("b", "std", step=0) == 2.0
    assert h.last("std") == {"a": 6.0, "b": 7.0}
    assert h.at(0, "std") == {"a": 1.0, "b": 2.0}
    assert h.steps() == [0, 5]
    assert len(h) == 6
    with pytest.raises(KeyError, match="no series 'mean'"):
        h.series("a", "mean")
    with pytest.raises(KeyError, match="no value at step 3"):
        h.value("a", "std", step=3)


def test_same_step_replaces_and_older_step_is_rejected() -> None:
    h = make()
    h.add(5, "a", "std", 9.0)
    assert h.series("a", "std") == ([0, 5], [1.0, 9.0])
    with pytest.raises(ValueError, match="backwards"):
        h.add(1, "a", "std", 0.0)


def test_save_and_load_round_trip_keeps_nan(tmp_path) -> None:  # type: ignore[no-untyped-def]
    h = make()
    h.save(tmp_path / "h.json")
    g = History.load(tmp_path / "h.json")
    assert g.layers() == h.layers()
    assert g.info("a") == h.info("a")
    steps, values = g.series("fc", "grad_norm")
    assert steps == [0, 5] and values[0] == 0.5 and math.isnan(values[1])


def test_schedules() -> None:
    assert [s for s in range(10) if every(4)(s)] == [0, 4, 8]
    assert [s for s in range(10) if every(4, offset=1)(s)] == [1, 5, 9]
    assert [s for s in range(70) if log_schedule(base=4, dense_until=3)(s)] == [0, 1, 2, 4, 16, 64]
    assert as_schedule(2)(4) and not as_schedule(2)(3)
    assert as_schedule(lambda s: s == 7)(7)
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"every={bad}"):
            as_schedule(bad)
    with pytest.raises(TypeError):
        as_schedule("often")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        as_schedule(True)
