"""The catalogue: every statistic gradscope records, one :class:`~gradscope.metrics.spec.Metric`
spec each, in the order they are recorded. Adding a metric is one entry here (and its test);
the machinery is :mod:`gradscope.metrics.spec`, the lookups :mod:`gradscope.metrics.registry`."""

from __future__ import annotations

import math

from gradscope.metrics.spec import (
    Metric,
    _differentiable,
    _has_units,
    _idle_units,
    _log10,
    _negative,
    _per_element,
    _per_unit,
    _ratio,
    _relu,
    _saturating,
    _total,
    _value,
)

__all__ = ["METRICS"]

_SPECS = (
    # -- forward: one activation call ---------------------------------------------
    Metric("mean", "activation", "mean of y over all elements (NaN/Inf propagate)",
           ("sum",), _per_element("sum"), label="activation mean"),
    Metric("std", "activation", "population standard deviation of y (correction=0)",
           ("ssq",), lambda v, s: math.sqrt(v["ssq"] / s.numel) if v["ssq"] >= 0 else math.nan,
           health=2, report=3, image="gradient_flow", label="activation std"),
    Metric("min", "activation", "smallest element of y", ("min",), _value("min")),
    Metric("max", "activation", "largest element of y", ("max",), _value("max")),
    Metric("nonfinite", "activation", "count of NaN or ±Inf elements of y",
           ("nonfinite",), _value("nonfinite"), report=5, empty=0.0),
    Metric("saturation", "activation",
           "fraction of elements within eps of the family's limits (softmax: of rows whose "
           "largest probability is >= 1-eps)",
           ("saturated",), _value("saturated"), _saturating, health=0, report=0,
           image="unit_health", label="saturated outputs"),
    Metric("small_deriv", "activation",
           "fraction of elements whose local derivative f'(x) < delta", ("deriv_small",),
           _per_element("deriv_small"), _differentiable),
    Metric("mean_deriv", "activation",
           "mean of the local derivative f'(x): the factor the chain rule multiplies by here",
           ("deriv_sum",), _per_element("deriv_sum"), _differentiable),
    Metric("zero_frac", "activation", "fraction of elements with y <= 0 (finite: a NaN/Inf "
           "element is not zero)", ("off",), _per_element("off"), _relu),
    Metric("dead_units", "activation",
           "fraction of units (features or channels) that are <= 0 for every sample and "
           "position of the batch (a unit with a NaN/Inf element is non-finite, not dead)",
           ("active_units", "bad_units"), _idle_units, _relu,
           report=1.1, header="dead_units", image="unit_health", label="dead units"),
    Metric("neg_frac", "activation", "fraction of elements in the negative regime x < 0 "
           "(finite elements)", ("off",), _per_element("off"), _negative),
    Metric("neg_units", "activation",
           "fraction of units in the negative regime for every sample and position (a unit "
           "with a NaN/Inf element is non-finite, not negative)",
           ("active_units", "bad_units"), _idle_units, _negative, report=2.1,
           header="neg_units"),
    Metric("nonfinite_units", "activation",
           "fraction of units with a NaN or ±Inf element in the batch (neither dead nor alive)",
           ("bad_units",), _per_unit("bad_units"), _has_units),
    # -- forward: the unit window, at each step's end ------------------------------
    Metric("dead_units_window", "window",
           "fraction of units not positive on any sampled step of the last dead_window steps",
           ("idle_units",), _per_unit("idle_units"), _relu, health=1, report=1.0, header="dead_units", image="unit_health",
           label="dead units over the window"),
    Metric("neg_units_window", "window",
           "fraction of units in the negative regime on every sampled step of the last "
           "dead_window steps", ("idle_units",), _per_unit("idle_units"), _negative, report=2.0,
           header="neg_units"),
    # -- backward: the gradient reaching a call-site's output ------------------------
    Metric("grad_out_norm", "backprop", "L2 norm of ∂L/∂y, the gradient flowing back into y",
           ("norm",), _value("norm"), section="backward"),
    Metric("grad_out_rms", "backprop", "grad_out_norm / sqrt(y.numel()): comparable across widths",
           ("norm",), lambda v, s: v["norm"] / math.sqrt(s.numel) if s.numel else math.nan,
           section="backward", health=3, report=4, image="gradient_flow",
           label="backprop RMS ‖∂L/∂y‖/√n"),
    Metric("grad_out_nonfinite", "backprop", "count of NaN/Inf elements of ∂L/∂y",
           ("nonfinite",), _value("nonfinite"), section="backward", empty=0.0),
    # -- backward: the gradient the activation passes to its input (pre-activation) -----
    Metric("grad_in_norm", "grad_in", "L2 norm of ∂L/∂x, the gradient back-propagated "
           "through the activation to its input (the pre-activation)",
           ("norm",), _value("norm"), section="backward"),
    Metric("grad_in_rms", "grad_in", "grad_in_norm / sqrt(x.numel()): comparable across widths",
           ("norm",), lambda v, s: v["norm"] / math.sqrt(s.numel) if s.numel else math.nan,
           section="backward", label="pre-activation gradient RMS ‖∂L/∂x‖/√n"),
    Metric("grad_in_nonfinite", "grad_in", "count of NaN/Inf elements of ∂L/∂x",
           ("nonfinite",), _value("nonfinite"), section="backward", empty=0.0),
    # -- parameters (and layers: their parameters combined) --------------------------
    Metric("grad_norm", "parameter", "L2 norm of the gradient (a layer: sqrt of the sum of "
           "its parameters' squared norms)", ("grad_norm",), _value("grad_norm"),
           section="backward", health=4, report=0, image="gradient_flow",
           label="gradient norm ‖∇W‖", aggregate="norm"),
    Metric("weight_norm", "parameter", "L2 norm of the weights before the optimizer step",
           ("weight_norm",), _value("weight_norm"), section="update", report=1,
           aggregate="norm"),
    Metric("grad_weight_ratio", "parameter", "grad_norm / weight_norm",
           ("grad_norm", "weight_norm"), _ratio("grad_norm", "weight_norm"),
           section="backward", report=2, header="grad/weight"),
    Metric("grad_nonfinite", "parameter", "count of NaN/Inf gradient elements",
           ("grad_nonfinite",), _value("grad_nonfinite"), section="backward", report=4,
           aggregate="sum"),
    Metric("update_norm", "parameter", "‖w_after - w_before‖ across optimizer.step()",
           ("update_norm",), _value("update_norm"), section="update", aggregate="norm"),
    Metric("update_ratio", "parameter", "update_norm / weight_norm (rule of thumb ~1e-3)",
           ("update_norm", "weight_norm"), _ratio("update_norm", "weight_norm"),
           section="update", health=5, report=3, label="update ratio ‖Δw‖/‖w‖"),
    # -- the step: a GradScaler's verdict and scale (series "scaler") -----------------
    Metric("skipped", "step", "1 when the GradScaler skipped the optimizer step (inf/NaN "
           "gradients at the scale in force), else 0", ("skipped",), _value("skipped"),
           section="update", label="steps skipped by the GradScaler", empty=0.0),
    Metric("scale", "step", "the GradScaler's loss scale during this step's backward",
           ("scale",), _value("scale"), section="update", label="loss scale"),
    # -- recurrent layers: the gradient through time (a profile over t, summarised) ----
    Metric("grad_h_ratio", "through_time",
           "‖∂L/∂h‖ at the first step a layer processes over ‖∂L/∂h‖ at its last (≪ 1: the "
           "gradient vanishes back through time)", ("first", "last"), _ratio("first", "last"),
           section="recurrent", report=0, header="∂L/∂h first/last",
           label="‖∂L/∂h_first‖ / ‖∂L/∂h_last‖"),
    Metric("grad_h_fall", "through_time",
           "the latest step (0-based, in processing order) at which ‖∂L/∂h_t‖ is below 1% of "
           "its largest value over the sequence; -1 when it never is",
           ("fall",), _value("fall"), section="recurrent", report=1, header="falls below 1% at"),
    Metric("grad_h_first", "through_time",
           "‖∂L/∂h‖ at the first step a layer processes (L2 norm over batch and hidden units)",
           ("first",), _value("first"), section="recurrent"),
    Metric("grad_h_last", "through_time", "‖∂L/∂h‖ at the last step a layer processes",
           ("last",), _value("last"), section="recurrent"),
    Metric("seq_len", "through_time", "time steps of the sequence (the longest, when packed)",
           ("len",), _value("len"), section="recurrent", report=1.5, header="steps"),
    # -- recurrent layers: hidden states and gates, replayed on sampled steps ---------
    Metric("hidden_saturation", "gates",
           "fraction of hidden-state elements with |h| > 1 - eps (tanh RNN, GRU, LSTM "
           "without projection)", ("hidden_saturated",), _per_element("hidden_saturated"),
           section="recurrent", report=2, header="saturated h", label="saturated hidden state"),
    Metric("forget_open", "gates",
           "LSTM: fraction of forget gates f >= 1 - eps (the cell state is kept: remembering)",
           ("forget_open",), _per_element("forget_open"), section="recurrent", report=3,
           header="remembering", label="forget gates >= 1-eps (remembering)"),
    Metric("forget_shut", "gates",
           "LSTM: fraction of forget gates f <= eps (the cell state is dropped: forgetting)",
           ("forget_shut",), _per_element("forget_shut"), section="recurrent", report=4,
           header="forgetting", label="forget gates <= eps (forgetting)"),
    Metric("forget_mean", "gates", "LSTM: mean forget gate f", ("forget_sum",),
           _per_element("forget_sum"), section="recurrent", report=5, header="keep gate mean"),
    Metric("input_mean", "gates", "LSTM: mean input gate i", ("input_sum",),
           _per_element("input_sum"), section="recurrent", report=6, header="input/reset mean"),
    Metric("output_mean", "gates", "LSTM: mean output gate o", ("output_sum",),
           _per_element("output_sum"), section="recurrent", report=7),
    Metric("update_open", "gates",
           "GRU: fraction of update gates z >= 1 - eps (the previous state is kept: remembering)",
           ("update_open",), _per_element("update_open"), section="recurrent", report=3.1,
           header="remembering"),
    Metric("update_shut", "gates",
           "GRU: fraction of update gates z <= eps (the state is replaced: forgetting)",
           ("update_shut",), _per_element("update_shut"), section="recurrent", report=4.1,
           header="forgetting"),
    Metric("update_mean", "gates", "GRU: mean update gate z (1 keeps the previous state)",
           ("update_sum",), _per_element("update_sum"), section="recurrent", report=5.1,
           header="keep gate mean"),
    Metric("reset_mean", "gates", "GRU: mean reset gate r", ("reset_sum",),
           _per_element("reset_sum"), section="recurrent", report=6.1, header="input/reset mean"),
    # -- run: one value per run and step, over the layers recorded at that step -------
    Metric("worst_saturation", "run", "largest saturation over the call-sites",
           ("saturation",), _value("saturation"), section="run", report=0, aggregate="max",
           header="sat", label="worst saturation over call-sites"),
    Metric("worst_dead_units", "run", "largest dead_units_window over the call-sites",
           ("dead_units_window",), _value("dead_units_window"), section="run", report=1,
           aggregate="max", header="dead", label="worst dead units over call-sites"),
    # Per-example norms, not per-element RMS: a convolution's output has hundreds of
    # times more elements per example than a classifier's, so a healthy CNN's RMS ratio
    # reads as vanishing. ‖∂L/∂y‖ over the batch is sqrt(batch) times the per-example
    # norm (RMS over the examples) at every call-site, so its ratio is the per-example
    # ratio with no batch size to know; with equal per-example sizes at both ends (an
    # MLP of equal hidden widths, Glorot's setting) it is the RMS ratio unchanged.
    Metric("backprop_log10_ratio", "run",
           "log10 of grad_out_norm at the first call-site over the last (network order): "
           "the per-example gradient norms' ratio, whatever the layers' shapes; 0 even, -2 "
           "the gradient reaching the input is 100x weaker (needs two call-sites)",
           ("grad_out_norm",), _log10("grad_out_norm"), section="run", report=2,
           aggregate="first/last", header="log10 bp", label="log10 backprop norm first/last"),
    Metric("min_update_ratio", "run", "smallest update_ratio over the layers",
           ("update_ratio",), _value("update_ratio"), section="run", report=3, aggregate="min",
           header="min upd", label="smallest update ratio over layers"),
    Metric("max_update_ratio", "run", "largest update_ratio over the layers",
           ("update_ratio",), _value("update_ratio"), section="run", report=4, aggregate="max",
           header="max upd", label="largest update ratio over layers"),
    Metric("nonfinite_count", "run",
           "NaN/Inf elements at this step: nonfinite and grad_out_nonfinite summed over the "
           "call-sites, plus grad_nonfinite over the layers",
           ("nonfinite", "grad_out_nonfinite", "grad_nonfinite"), _total, section="run",
           report=5, aggregate="sum", header="nonfinite", label="non-finite elements", empty=0.0),
)

#: Every metric by name, in the order they are recorded.
METRICS: dict[str, Metric] = {m.name: m for m in _SPECS}


