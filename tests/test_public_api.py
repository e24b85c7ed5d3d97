"""What ``import gradscope`` and its public modules expose: exactly these names."""

from __future__ import annotations

import importlib

import pytest

import gradscope

PUBLIC = {
    "gradscope": {
        "ActivationFamily", "Coverage", "Definitions", "Finding", "History", "LayerInfo", "Monitor",
        "Record", "Retention",
        "Sink", "Thresholds", "__version__", "every", "family_of", "log_schedule",
        "register_family", "watch"},
    "gradscope.writers": {"MemoryWriter", "Record", "Sink", "TensorBoardWriter", "scalar_tag"},
    "gradscope.findings": {"RULES", "SEVERITIES", "Finding", "FindingsSink", "Thresholds",
                           "analyze", "format_findings", "threshold_names"},
    "gradscope.metrics": {"KINDS", "METRICS", "SECTIONS", "Metric", "Shape", "by_kind", "columns", "copies",
                          "emitted", "for_family", "health", "layer_values", "ratio", "register",
                          "series_kind"},
    "gradscope.activations": {"FAMILIES", "SATURATION_RULES", "ActivationFamily", "Params",
                              "family_of",
                              "register_family", "softmax_dim"},
    "gradscope.schedules": {"Schedule", "as_schedule", "every", "log_schedule"},
}


@pytest.mark.parametrize("module", sorted(PUBLIC), ids=sorted(PUBLIC))
def test_public_names_are_exactly_these(module: str) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == PUBLIC[module]
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"


def test_help_of_watch_shows_every_option() -> None:
    import pydoc

    text = pydoc.plain(pydoc.render_doc(gradscope.watch))
    for name in ("every", "flush_every", "eps", "dead_window", "record_eval", "histogram_every",
                 "logdir", "findings", "strict"):
        assert f"{name}: " in text.split(")")[0] + text
