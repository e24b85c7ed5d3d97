"""The programmatic record of a monitored run: per step, per layer, per metric.

:class:`History` is filled by the monitor at each flush and is independent of
TensorBoard, so tests and notebooks can read it directly.

Layer names come from ``model.named_modules()``. An activation module called
more than once per forward gets one series per call-site: the first call keeps
the module's name, later ones add ``[k]`` (``layer1.0.relu``, ``layer1.0.relu[1]``).
Parameters are named as in ``named_parameters()`` (``fc1.weight``).

Example:
    >>> h = History()
    >>> h.add_layer(LayerInfo("fc1", kind="layer", order=0, type="Linear"))
    >>> h.add(0, "fc1", "grad_norm", 0.5); h.add(1, "fc1", "grad_norm", 0.25)
    >>> h.series("fc1", "grad_norm")
    ([0, 1], [0.5, 0.25])
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

__all__ = ["KINDS", "MAX_PROFILE_ROWS", "History", "LayerInfo", "decode_value", "encode_value"]

#: The kinds of series: activation call-sites, parameterised modules, parameters,
#: recurrent layers (one per layer and direction of an RNN module, or per cell), and
#: model-wide per-step series (the GradScaler's ``scaler``).
KINDS = ("activation", "layer", "parameter", "recurrent", "step")
#: A profile series keeps at most this many rows: beyond, every other row is dropped
#: and only every other new one is kept, so rows stay evenly spread over the run.
MAX_PROFILE_ROWS = 512


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
    """Per-step values of every metric of every layer, in network order."""

    def __init__(self) -> None:
        self._layers: dict[str, LayerInfo] = {}
        self._data: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
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
        series = self._data.setdefault(layer, {}).setdefault(metric, ([], []))
        steps, values = series
        if steps and steps[-1] == step:
            values[-1] = float(value)
            return
        if steps and steps[-1] > step:
            raise ValueError(
                f"History.add: step {step} for {layer}/{metric} is older than the last "
                f"recorded step {steps[-1]}; steps must not go backwards"
            )
        steps.append(int(step))
        values.append(float(value))

    def extend(self, records: Iterable[tuple[int, str, str, float]]) -> None:
        """:meth:`add` for each ``(step, layer, metric, value)``, in order (the flush's bulk path)."""
        data = self._data
        for step, layer, metric, value in records:
            metrics = data.get(layer)
            if metrics is None:
                metrics = data[layer] = {}
            series = metrics.get(metric)
            if series is None:
                series = metrics[metric] = ([], [])
            steps, values = series
            if steps and steps[-1] >= step:
                self.add(step, layer, metric, value)  # a repeated step, or an error
                continue
            steps.append(step)
            values.append(float(value))

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

    def series(self, layer: str, metric: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of one metric of one layer (copies)."""
        try:
            steps, values = self._data[layer][metric]
        except KeyError:
            raise KeyError(
                f"no series {metric!r} for layer {layer!r}; "
                f"its metrics: {self.metrics(layer) if layer in self._data else 'unknown layer'}"
            ) from None
        return list(steps), list(values)

    def value(self, layer: str, metric: str, step: Optional[int] = None) -> float:
        """The value at ``step`` (the last recorded one when ``None``)."""
        steps, values = self.series(layer, metric)
        if not steps:
            raise KeyError(f"{layer}/{metric} has no values yet")
        if step is None:
            return values[-1]
        try:
            return values[steps.index(step)]
        except ValueError:
            raise KeyError(f"{layer}/{metric} has no value at step {step}") from None

    def last(self, metric: str, kind: Optional[str] = None) -> dict[str, float]:
        """``{layer: last value}`` of ``metric`` over layers that have it, in network order."""
        out = {}
        for name in self.layers(kind):
            s = self._data.get(name, {}).get(metric)
            if s and s[0]:
                out[name] = s[1][-1]
        return out

    def at(self, step: int, metric: str, kind: Optional[str] = None) -> dict[str, float]:
        """``{layer: value}`` of ``metric`` at ``step`` over layers recorded then."""
        out = {}
        for name in self.layers(kind):
            s = self._data.get(name, {}).get(metric)
            if s and step in s[0]:
                out[name] = s[1][s[0].index(step)]
        return out

    def steps(self) -> list[int]:
        """Every step with at least one value, ascending."""
        return sorted({s for d in self._data.values() for st, _ in d.values() for s in st})

    def __len__(self) -> int:
        return sum(len(st) for d in self._data.values() for st, _ in d.values())

    def __repr__(self) -> str:
        steps = self.steps()
        span = f"steps {steps[0]}..{steps[-1]}" if steps else "empty"
        return f"History({len(self._layers)} layers, {len(self)} values, {span})"

    # -- persistence -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite values as :func:`encode_value` writes them)."""
        out: dict[str, Any] = {
            "version": 1,
            "layers": [_info_to_dict(self._layers[n]) for n in self.layers() if n in self._layers],
            "data": {
                layer: {m: [st, [encode_value(v) for v in vs]] for m, (st, vs) in d.items()}
                for layer, d in self._data.items()
            },
        }
        if self._profiles:
            out["profiles"] = [
                {"layer": layer, "metric": metric, "steps": p.steps,
                 "positions": [list(x) for x in p.positions],
                 "values": [[encode_value(v) for v in vs] for vs in p.values], "stride": p.stride}
                for (layer, metric), p in self._profiles.items()]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict`."""
        h = cls()
        for info in d.get("layers", []):
            if info.get("shape") is not None:
                info = {**info, "shape": tuple(info["shape"])}
            h.add_layer(LayerInfo(**info))
        for layer, metrics in d.get("data", {}).items():
            for metric, (steps, values) in metrics.items():
                h._data.setdefault(layer, {})[metric] = (list(steps),
                                                         [decode_value(v) for v in values])
        for p in d.get("profiles", []):
            prof = h._profiles[(p["layer"], p["metric"])] = _Profile(stride=int(p.get("stride", 1)))
            prof.steps = [int(s) for s in p["steps"]]
            prof.positions = [tuple(x) for x in p["positions"]]
            prof.values = [[decode_value(v) for v in vs] for vs in p["values"]]
        return h

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the history as JSON to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> History:
        """Read a history written by :meth:`save`."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


class _Profile:
    """Rows of one profile series, thinned to at most :data:`MAX_PROFILE_ROWS` evenly spread rows."""

    def __init__(self, stride: int = 1) -> None:
        self.steps: list[int] = []
        self.positions: list[tuple[int, ...]] = []
        self.values: list[list[float]] = []
        self.stride = stride  # keep one offered row in ``stride``
        self._offered = 0

    def add(self, step: int, positions: tuple[int, ...], values: list[float]) -> None:
        if self.steps and self.steps[-1] == step:  # a repeated step replaces the row
            self.positions[-1], self.values[-1] = positions, values
            return
        self._offered += 1
        if (self._offered - 1) % self.stride:
            return
        if self.positions and self.positions[-1] == positions:
            positions = self.positions[-1]  # share the tuple between rows
        self.steps.append(step)
        self.positions.append(positions)
        self.values.append(values)
        if len(self.steps) > MAX_PROFILE_ROWS:
            self.steps, self.positions, self.values = \
                self.steps[::2], self.positions[::2], self.values[::2]
            self.stride *= 2
            self._offered = 1  # the last row (even index: kept) is where the new stride starts


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
