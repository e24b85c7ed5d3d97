"""The programmatic record of a monitored run: per step, per layer, per metric.

:class:`History` is filled by the monitor at each flush and is independent of
TensorBoard, so tests and notebooks can read it directly.

Layer names come from ``model.named_modules()``. An activation module called
more than once per forward gets one series per call-site: the first call keeps
the module's name, later ones add ``[k]`` (``layer1.0.relu``, ``layer1.0.relu[1]``).
Parameters are named as in ``named_parameters()`` (``fc1.weight``).

**What is kept** (:class:`Retention`): a run of days must not fill the host, so
each series keeps its points of the last ``recent`` steps (1000) at full
resolution, and older ones thinned geometrically: about ``per_octave`` (50)
points per doubling of their age, so a series of a million steps holds about
1,500 points (25 kB) and its memory grows with the logarithm of the run. Never dropped: the first ``head`` points of a series (rules compare with the start
of the run) and its first *alarm*, the first NaN/±Inf value or positive count of
non-finite elements (a ``*nonfinite*`` metric), which :meth:`History.alarm` returns.
Everything is still written to TensorBoard at each flush. ``Retention(None)`` (or
``watch(retention=None)``) keeps every point.

Example:
    >>> h = History()
    >>> h.add_layer(LayerInfo("fc1", kind="layer", order=0, type="Linear"))
    >>> h.add(0, "fc1", "grad_norm", 0.5); h.add(1, "fc1", "grad_norm", 0.25)
    >>> h.series("fc1", "grad_norm")
    ([0, 1], [0.5, 0.25])
    >>> h = History(Retention(recent=8, per_octave=2, head=1))
    >>> for step in range(200):
    ...     h.add(step, "fc1", "grad_norm", 1.0)
    >>> h.series("fc1", "grad_norm")[0][:9]  # the further back, the sparser
    [0, 64, 96, 128, 144, 160, 168, 176, 180]
"""

from __future__ import annotations

import bisect
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

from gradscope.retention import DEFAULT_RETENTION, MAX_PROFILE_ROWS, Retention, _Profile, _Series

__all__ = ["KINDS", "MAX_PROFILE_ROWS", "History", "LayerInfo", "Retention", "decode_value",
           "encode_value"]

#: The kinds of series: activation call-sites, parameterised modules, parameters,
#: recurrent layers (one per layer and direction of an RNN module, or per cell), and
#: model-wide per-step series (the GradScaler's ``scaler``).
KINDS = ("activation", "layer", "parameter", "recurrent", "step")


@dataclass(frozen=True)
class LayerInfo:
    """What a named series belongs to.

    Args:
        name: the series name (``"features.3"``, ``"layer1.0.relu[1]"``, ``"fc1.weight"``).
        kind: ``"activation"`` (a call-site), ``"layer"`` (a module with parameters),
            ``"parameter"``, ``"recurrent"`` (a layer and direction of an RNN, or a cell)
            or ``"step"`` (a model-wide per-step series: ``scaler``).
        order: position in network order within its kind (execution order of the
            first monitored forward; registration order for modules never called).
        type: the module's class name (``"ReLU"``) or ``"Parameter"``.
        family: the activation family (``"relu"``) for activation call-sites.
        module: the module's name in ``named_modules()``.
        call: the call index of an activation module within one forward.
        shape: the shape seen at the first record (informational).
    """

    name: str
    kind: str
    order: int
    type: str
    family: Optional[str] = None
    module: Optional[str] = None
    call: int = 0
    shape: Optional[tuple[int, ...]] = None


class History:
    """Per-step values of every metric of every layer, in network order.

    Args:
        retention: how many points each series keeps (:class:`Retention`); the
            default keeps the last 1000 at full resolution and up to 1000 older
            ones thinned geometrically.
    """

    def __init__(self, retention: Optional[Retention] = None) -> None:
        if retention is not None and not isinstance(retention, Retention):
            raise TypeError(f"History(retention={retention!r}): pass a gradscope.Retention")
        self.retention = retention if retention is not None else DEFAULT_RETENTION
        self._bounded = self.retention.bounded
        self._layers: dict[str, LayerInfo] = {}
        self._data: dict[str, dict[str, _Series]] = {}
        self._profiles: dict[tuple[str, str], _Profile] = {}

    # -- writing -----------------------------------------------------------
    def add_layer(self, info: LayerInfo) -> None:
        """Declare a layer (first declaration wins; names are unique)."""
        if info.kind not in KINDS:
            raise ValueError(f"LayerInfo(kind={info.kind!r}) must be one of {KINDS}")
        self._layers.setdefault(info.name, info)
        self._data.setdefault(info.name, {})

    def add(self, step: int, layer: str, metric: str, value: float) -> None:
        """Record ``value`` for ``(step, layer, metric)``; a repeated step replaces the value."""
        metrics = self._data.setdefault(layer, {})
        series = metrics.get(metric)
        if series is None:
            series = metrics[metric] = _Series(metric, self.retention.head)
        steps = series.steps
        if steps and steps[-1] == step:
            series.values[-1] = float(value)
            if series.alarm is not None and series.alarm[0] == step:
                series.alarm = (step, float(value))
            return
        if steps and steps[-1] > step:
            raise ValueError(
                f"History.add: step {step} for {layer}/{metric} is older than the last "
                f"recorded step {steps[-1]}; steps must not go backwards"
            )
        series.append(int(step), float(value))
        if self._bounded and len(series.steps) >= series.compact_at:
            series.thin(self.retention)

    def extend(self, records: Iterable[tuple[int, str, str, float]]) -> None:
        """:meth:`add` for each ``(step, layer, metric, value)``, in order (the flush's bulk path)."""
        data, bounded, head = self._data, self._bounded, self.retention.head
        for step, layer, metric, value in records:
            metrics = data.get(layer)
            if metrics is None:
                metrics = data[layer] = {}
            series = metrics.get(metric)
            if series is None:
                series = metrics[metric] = _Series(metric, head)
            steps = series.steps
            if steps and steps[-1] >= step:
                self.add(step, layer, metric, value)  # a repeated step, or an error
                continue
            series.append(step, float(value))
            if bounded and len(steps) >= series.compact_at:
                series.thin(self.retention)

    def add_profile(self, step: int, layer: str, metric: str, positions: Sequence[int],
                    values: Sequence[float]) -> None:
        """Record a profile at ``step``: ``values`` at ``positions`` (``∂L/∂h`` over time steps).

        At most :data:`MAX_PROFILE_ROWS` rows are kept per series, evenly spread over the run.
        """
        prof = self._profiles.get((layer, metric))
        if prof is None:
            prof = self._profiles[(layer, metric)] = _Profile()
        prof.add(int(step), tuple(positions), [float(v) for v in values])

    def profile(self, layer: str, metric: str
                ) -> tuple[list[int], list[tuple[int, ...]], list[list[float]]]:
        """``(steps, positions per step, values per step)`` of a profile series (copies)."""
        prof = self._profiles.get((layer, metric))
        if prof is None:
            raise KeyError(f"no profile {metric!r} for layer {layer!r}; profiles: "
                           f"{self.profiles()}")
        return list(prof.steps), list(prof.positions), [list(v) for v in prof.values]

    def profiles(self) -> list[tuple[str, str]]:
        """``(layer, metric)`` of every profile series, in network order."""
        rank = {n: i for i, n in enumerate(self.layers())}
        return sorted(self._profiles, key=lambda k: (rank.get(k[0], len(rank)), k))

    # -- reading -----------------------------------------------------------
    def layers(self, kind: Optional[str] = None) -> list[str]:
        """Layer names in network order, optionally only those of one ``kind``."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"layers(kind={kind!r}): kind must be one of {KINDS}")
        infos = [i for i in self._layers.values() if kind is None or i.kind == kind]
        infos.sort(key=lambda i: (KINDS.index(i.kind), i.order))
        names = [i.name for i in infos]
        # Layers recorded without a declaration come last, in insertion order.
        names += [n for n in self._data if n not in self._layers and kind is None]
        return names

    def info(self, layer: str) -> LayerInfo:
        """The :class:`LayerInfo` of ``layer``."""
        try:
            return self._layers[layer]
        except KeyError:
            raise KeyError(f"no layer named {layer!r}; known: {self.layers()}") from None

    def metrics(self, layer: Optional[str] = None) -> list[str]:
        """Metric names of one layer, or of all layers (sorted) when ``layer`` is None."""
        if layer is not None:
            return list(self._data.get(layer, {}))
        return sorted({m for d in self._data.values() for m in d})

    def _series(self, layer: str, metric: str) -> _Series:
        try:
            return self._data[layer][metric]
        except KeyError:
            raise KeyError(
                f"no series {metric!r} for layer {layer!r}; "
                f"its metrics: {self.metrics(layer) if layer in self._data else 'unknown layer'}"
            ) from None

    def series(self, layer: str, metric: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of one metric of one layer (copies of the points kept)."""
        s = self._series(layer, metric)
        return s.steps.tolist(), s.values.tolist()  # ok-sync: host array.array, not a tensor

    def since(self, layer: str, metric: str, step: int) -> tuple[Sequence[int], Sequence[float]]:
        """``(steps, values)`` of the points after ``step`` (what a rule has not seen yet).

        Costs the number of points returned (a binary search finds the first), so
        reading what is new at each flush does not grow with the run.
        """
        s = self._series(layer, metric)
        i = bisect.bisect_right(s.steps, step)
        return s.steps[i:], s.values[i:]

    def alarm(self, layer: str, metric: str) -> Optional[tuple[int, float]]:
        """``(step, value)`` of the first NaN/±Inf value (or positive non-finite count), or ``None``.

        Kept for the whole run, whatever was thinned.
        """
        return self._series(layer, metric).alarm

    def value(self, layer: str, metric: str, step: Optional[int] = None) -> float:
        """The value at ``step`` (the last recorded one when ``None``)."""
        s = self._series(layer, metric)
        if not s.steps:
            raise KeyError(f"{layer}/{metric} has no values yet")
        if step is None:
            return s.values[-1]
        i = bisect.bisect_left(s.steps, step)
        if i == len(s.steps) or s.steps[i] != step:
            raise KeyError(f"{layer}/{metric} has no value at step {step}")
        return s.values[i]

    def added(self, layer: str, metric: str) -> int:
        """Points ever added to one series, thinned ones included (``len(series(...)[0])`` or more)."""
        return self._series(layer, metric).total

    def last(self, metric: str, kind: Optional[str] = None) -> dict[str, float]:
        """``{layer: last value}`` of ``metric`` over layers that have it, in network order."""
        out = {}
        for name in self.layers(kind):
            s = self._data.get(name, {}).get(metric)
            if s is not None and s.steps:
                out[name] = s.values[-1]
        return out

    def at(self, step: int, metric: str, kind: Optional[str] = None) -> dict[str, float]:
        """``{layer: value}`` of ``metric`` at ``step`` over layers recorded then."""
        out = {}
        for name in self.layers(kind):
            s = self._data.get(name, {}).get(metric)
            if s is None:
                continue
            i = bisect.bisect_left(s.steps, step)
            if i < len(s.steps) and s.steps[i] == step:
                out[name] = s.values[i]
        return out

    def steps(self) -> list[int]:
        """Every step with at least one value kept, ascending."""
        return sorted({s for d in self._data.values() for series in d.values()
                       for s in series.steps})

    def span(self) -> Optional[tuple[int, int]]:
        """``(first, last)`` step recorded, or ``None`` when empty; costs the number of series."""
        ends = [(s.steps[0], s.steps[-1]) for d in self._data.values() for s in d.values()
                if s.steps]
        if not ends:
            return None
        return min(a for a, _ in ends), max(b for _, b in ends)

    def recorded(self) -> int:
        """Values recorded over the whole run, thinned ones included."""
        return sum(s.total for d in self._data.values() for s in d.values())

    def __len__(self) -> int:
        """Values kept."""
        return sum(len(s.steps) for d in self._data.values() for s in d.values())

    def __repr__(self) -> str:
        span = self.span()
        where = f"steps {span[0]}..{span[1]}" if span else "empty"
        return f"History({len(self._layers)} layers, {len(self)} values, {where})"

    # -- persistence -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite values as :func:`encode_value` writes them)."""
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], retention: Optional[Retention] = None) -> History:
        """Inverse of :meth:`to_dict` (every saved point is kept; later ones follow ``retention``)."""
        return _from_dict(cls(retention), d)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the history as JSON to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> History:
        """Read a history written by :meth:`save`."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def _to_dict(h: History) -> dict[str, Any]:
    """:meth:`History.to_dict`: the JSON form (version 1)."""
    out: dict[str, Any] = {
        "version": 1,
        "layers": [_info_to_dict(h._layers[n]) for n in h.layers() if n in h._layers],
        "data": {
            layer: {m: [s.steps.tolist(),  # ok-sync: host array.array, not a tensor
                        [encode_value(v) for v in s.values]]
                    for m, s in d.items()}
            for layer, d in h._data.items()
        },
    }
    if h._profiles:
        out["profiles"] = [
            {"layer": layer, "metric": metric, "steps": p.steps,
             "positions": [list(x) for x in p.positions],
             "values": [[encode_value(v) for v in vs] for vs in p.values], "stride": p.stride}
            for (layer, metric), p in h._profiles.items()]
    return out


def _from_dict(h: History, d: dict[str, Any]) -> History:
    """:meth:`History.from_dict`: fill the empty ``h`` from the JSON form."""
    for info in d.get("layers", []):
        if info.get("shape") is not None:
            info = {**info, "shape": tuple(info["shape"])}
        h.add_layer(LayerInfo(**info))
    for layer, metrics in d.get("data", {}).items():
        for metric, (steps, values) in metrics.items():
            s = h._data.setdefault(layer, {})[metric] = _Series(metric, h.retention.head)
            for step, v in zip(steps, values):
                s.append(int(step), decode_value(v))
    for p in d.get("profiles", []):
        prof = h._profiles[(p["layer"], p["metric"])] = _Profile(stride=int(p.get("stride", 1)))
        prof.steps = [int(s) for s in p["steps"]]
        prof.positions = [tuple(x) for x in p["positions"]]
        prof.values = [[decode_value(v) for v in vs] for vs in p["values"]]
    return h


def _info_to_dict(info: LayerInfo) -> dict[str, Any]:
    d = asdict(info)
    if d["shape"] is not None:
        d["shape"] = list(d["shape"])
    return d


def encode_value(v: float) -> Union[float, str]:
    """A float for JSON: finite values as they are, NaN and ±Inf as ``"nan"``, ``"inf"``, ``"-inf"``.

    Example:
        >>> [encode_value(v) for v in (0.5, float("nan"), float("-inf"))]
        [0.5, 'nan', '-inf']
    """
    return v if math.isfinite(v) else str(v)


def decode_value(v: Union[float, int, str, None]) -> float:
    """Inverse of :func:`encode_value` (``None``, as other tools write NaN, reads as NaN)."""
    if v is None:
        return math.nan
    return float(v)
