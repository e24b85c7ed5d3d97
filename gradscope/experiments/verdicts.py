"""The verdicts of the presets (:mod:`gradscope.experiments.presets`): each reads the
finished runs (their results and histories) and says, with the numbers it used, whether
the paper's qualitative claim held in the setting that ran. Nothing in a verdict is
hard-coded except the named thresholds below.

Example:
    >>> print(Verdict(True, ["He 0.91 vs Xavier 0.11"]))
    verdict: the claim HELD
      - He 0.91 vs Xavier 0.11
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from gradscope.experiments.optimizers import ADAPTIVE, OPTIMIZERS
from gradscope.experiments.train import RunResult
from gradscope.history import History

__all__ = ["ADAPTIVE_MOVE", "DEAD_SHARE", "DYING_LRS", "EARLY", "GATED_ACC_MARGIN",
           "HE_ACC_MARGIN", "JUDGED", "PRESET_LR", "TIME_COLLAPSE", "TOP_MEAN", "Verdict", "dying_relu", "glorot2010",
           "he2015", "ioffe2015", "optimizers", "rnn"]

# ---- thresholds (named, used by the verdicts) ----------------------------------
#: glorot2010: the top hidden sigmoid layer is "driven to 0" (their Fig. 2) when its
#: mean output falls below this (from 0.5 at initialisation) within the first
#: :data:`EARLY` updates (all of them in a shorter run) while the first hidden layer's
#: mean stays above it.
TOP_MEAN = 0.1
#: glorot2010: "early": the first this many updates (their Fig. 2 shows the top layer
#: at 0 well within it).
EARLY = 1000
#: he2015: He "learns far faster" when its final test accuracy beats Xavier's by this.
HE_ACC_MARGIN = 0.10
#: dying_relu: Adam's learning rates: its usual one (the reference), and two too high.
DYING_LRS = (1e-3, 1e-2, 3e-2)
#: dying_relu: "a large share" of units dead (CS231n's "as much as 40%"): the mean over
#: layers of the final windowed dead fraction is at least this at the highest rate (and
#: below it at the usual one).
DEAD_SHARE = 0.4
#: rnn: the plain RNN's gradient "collapses" on the long sequence when its median
#: ‖∂L/∂h_0‖/‖∂L/∂h_T‖ is at most this fraction of the smaller of LSTM's and GRU's.
TIME_COLLAPSE = 1e-2
#: rnn: LSTM and GRU accuracy "follows" when both beat the plain RNN's by this.
GATED_ACC_MARGIN = 0.05
#: optimizers: an adaptive optimiser "moves the first layer" when its median update
#: ratio first/last layer is at least this many times plain SGD's.
ADAPTIVE_MOVE = 10.0
#: optimizers: the optimisers the claim is about (those that divide each step by the root
#: of the gradient's own squared history); Adadelta is reported beside them.
JUDGED = ("adam", "rmsprop", "adagrad", "adamax")
#: optimizers: learning rates that differ from DEFAULT_LR: RMSprop at Keras's and Hinton's
#: 1e-3 (at PyTorch's 1e-2 it saturates every sigmoid layer within 10 steps).
PRESET_LR = {"rmsprop": 1e-3}
# ------------------------------------------------------------------------------


@dataclass
class Verdict:
    """Whether the claim held, and the measurements behind the judgement."""

    held: bool
    lines: list[str]

    def __str__(self) -> str:
        head = "verdict: the claim HELD" if self.held else "verdict: the claim did NOT hold"
        return "\n".join([head, *("  - " + line for line in self.lines)])




# ---- helpers -----------------------------------------------------------------
def _pick(results: list[RunResult], **want: object) -> RunResult:
    for r in results:
        d = r.config.to_dict()
        if all(d[k] == v for k, v in want.items()):
            return r
    raise LookupError(f"no finished run with {want}; rerun the preset to finish it")


def _history(results_dir: Path, r: RunResult) -> History:
    return History.load(results_dir / "runs" / r.name / "history.json")


def _first_value(h: History, layer: str, metric: str) -> float:
    return h.series(layer, metric)[1][0]


def _fmt(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.3g}"


def glorot2010(results: list[RunResult], rd: Path) -> Verdict:
    lines = []
    r = _pick(results, activation="sigmoid", init="standard")
    h = _history(rd, r)
    top, first = f"act{r.config.depth}", "act1"

    n = min(EARLY, r.config.steps)
    span = f"the first {n} updates" if n < r.config.steps else f"all {n} updates"

    def early(layer: str, metric: str) -> list[float]:
        return [v for s, v in zip(*h.series(layer, metric)) if s < n]

    top_min, first_min = min(early(top, "mean")), min(early(first, "mean"))
    sat_ok = top_min < TOP_MEAN <= first_min
    lines.append(f"sigmoid/standard: lowest mean output in {span}: top layer "
                 f"{top_min:.3f}, first layer {first_min:.3f} (driven to 0 means < {TOP_MEAN}); "
                 f"at the end: top {h.value(top, 'mean'):.3f}; peak saturated fraction "
                 f"(within eps of 0 or 1) of the top layer in {span} "
                 f"{max(early(top, 'saturation')):.3f}; test error {1 - r.test_acc:.3f} "
                 f"(the paper: stuck near 0.9)")
    even_ok = {}
    for act in ("sigmoid", "tanh"):
        ev = {}
        for init in ("standard", "xavier_uniform"):
            ri = _pick(results, activation=act, init=init)
            hi = _history(rd, ri)
            ev[init] = (_first_value(hi, "act1", "grad_out_rms")
                        / _first_value(hi, f"act{ri.config.depth}", "grad_out_rms"))
        even_ok[act] = ev["standard"] < 1 and ev["xavier_uniform"] > ev["standard"]
        lines.append(f"{act}: back-propagated gradient RMS first/top hidden layer at step 0: "
                     f"standard {ev['standard']:.3g}, normalized {ev['xavier_uniform']:.3g} "
                     f"({'shrinks with standard, more even with normalized' if even_ok[act] else 'not as claimed'})")
    lines.append(f"held = top sigmoid layer driven to 0 ({sat_ok}) and tanh gradients more even "
                 f"with normalized init ({even_ok['tanh']}) [the paper's Fig. 7 is tanh]")
    return Verdict(sat_ok and even_ok["tanh"], lines)


def he2015(results: list[RunResult], rd: Path) -> Verdict:
    lines = []
    acc = {}
    for init in ("xavier_uniform", "he"):
        r = _pick(results, init=init)
        h = _history(rd, r)
        last = f"act{r.config.depth}"
        scale = _first_value(h, last, "std") / _first_value(h, "act1", "std")
        acc[init] = r.test_acc
        lines.append(f"{init}: activation std layer {r.config.depth} / layer 1 at step 0 = "
                     f"{scale:.3g} (log2 {math.log2(scale) if scale > 0 else float('-inf'):.1f}; "
                     f"He et al.: ≈ −14.5 for Xavier, ≈ 0 for He); final test accuracy "
                     f"{r.test_acc:.3f}; steps to 90% train accuracy {r.steps_to_90 or 'never'}")
    held = acc["he"] >= acc["xavier_uniform"] + HE_ACC_MARGIN
    lines.append(f"held = He's test accuracy beats Xavier's by ≥ {HE_ACC_MARGIN} "
                 f"({acc['he']:.3f} vs {acc['xavier_uniform']:.3f})")
    return Verdict(held, lines)


def _drift(h: History, layer: str) -> float:
    """Range (max − min) of a layer's mean sigmoid output after the first 10% of steps."""
    steps, values = h.series(layer, "mean")
    cut = steps[-1] * 0.1
    kept = [v for s, v in zip(steps, values) if s >= cut]
    return max(kept) - min(kept)


def ioffe2015(results: list[RunResult], rd: Path) -> Verdict:
    lines = []
    s90, drift, acc = {}, {}, {}
    for bn in (False, True):
        r = _pick(results, batchnorm=bn)
        h = _history(rd, r)
        top = f"act{r.config.depth}"
        s90[bn] = r.steps_to_90 if r.steps_to_90 is not None else math.inf
        drift[bn] = _drift(h, top)
        acc[bn] = r.test_acc
        lines.append(f"{'with' if bn else 'without'} BN: steps to 90% train accuracy "
                     f"{r.steps_to_90 or 'never'}, final test accuracy {r.test_acc:.3f}, drift of "
                     f"the last sigmoid layer's mean output after 10% of training {drift[bn]:.3f}")
    faster = s90[True] < s90[False] or (s90[True] == s90[False] and acc[True] > acc[False])
    stable = drift[True] < drift[False]
    lines.append(f"held = BN reaches 90% sooner ({faster}) and its sigmoid outputs (a monotone "
                 f"image of their inputs) drift less ({stable})")
    return Verdict(faster and stable, lines)


def _final_mean(h: History, metric: str) -> Optional[float]:
    vals = [h.value(s, metric) for s in h.layers("activation") if metric in h.metrics(s)]
    return statistics.fmean(vals) if vals else None


def dying_relu(results: list[RunResult], rd: Path) -> Verdict:
    lines = []
    dead: dict[tuple[str, float], Optional[float]] = {}
    for lr in DYING_LRS:
        for a, metric in (("relu", "dead_units_window"), ("leaky_relu", "neg_units_window")):
            r = _pick(results, activation=a, lr=lr)
            finite = math.isfinite(r.final_train_loss)
            # NaN outputs are neither dead nor stuck: a diverged run's count reads "–"
            d = _final_mean(_history(rd, r), metric) if finite else None
            dead[(a, lr)] = d
            what = "dead" if a == "relu" else "stuck in the negative regime"
            diverged = "" if finite else " (diverged: loss not finite, units not counted)"
            lines.append(f"{a} lr {lr:g}: final fraction of units {what} (mean over layers) "
                         f"{_fmt(d)}; test accuracy {r.test_acc:.3f}{diverged}")
    ref, high = DYING_LRS[0], DYING_LRS[-1]
    relu, leaky, usual = dead[("relu", high)], dead[("leaky_relu", high)], dead[("relu", ref)]
    killed = relu is not None and relu >= DEAD_SHARE and usual is not None and usual < DEAD_SHARE
    acc = {a: _pick(results, activation=a, lr=high).test_acc for a in ("relu", "leaky_relu")}
    lines.append(f"LeakyReLU at lr {high:g} (reported, not judged): {_fmt(leaky)} of its units "
                 f"stuck, test accuracy {acc['leaky_relu']:.3f} vs ReLU's {acc['relu']:.3f}")
    lines.append(f"held = at lr {high:g} at least {DEAD_SHARE:.0%} of ReLU units are dead "
                 f"({_fmt(relu)}) and fewer than {DEAD_SHARE:.0%} at lr {ref:g} "
                 f"({_fmt(usual)}): {killed}")
    return Verdict(killed, lines)


def _time(r: RunResult) -> float:
    return r.time_ratio if r.time_ratio is not None else math.nan


def rnn(results: list[RunResult], rd: Path) -> Verdict:
    lines = []
    for seq in ("rows", "pixels"):
        for m in ("rnn", "lstm", "gru"):
            r = _pick(results, model=m, sequence=seq)
            h = _history(rd, r)
            layer = h.layers("recurrent")[-1]
            ratios = h.series(layer, "grad_h_ratio")[1]
            fall = statistics.median(h.series(layer, "grad_h_fall")[1])
            falls = (f"median last time step where ‖∂L/∂h_t‖ is below 1% of its largest: "
                     f"{fall:g}") if fall >= 0 else "‖∂L/∂h_t‖ never below 1% of its largest (median)"
            lines.append(f"{seq} ({h.value(layer, 'seq_len'):.0f} steps) {m}: "
                         f"‖∂L/∂h_0‖/‖∂L/∂h_T‖ median {_time(r):.3g} (first sampled step "
                         f"{ratios[0]:.3g}, last {ratios[-1]:.3g}); {falls}; test accuracy "
                         f"{r.test_acc:.3f}")
    rnn = _pick(results, model="rnn", sequence="pixels")
    gated = [_pick(results, model=m, sequence="pixels") for m in ("lstm", "gru")]
    keep = min(_time(g) for g in gated)
    collapsed = _time(rnn) <= TIME_COLLAPSE * keep
    follows = all(g.test_acc >= rnn.test_acc + GATED_ACC_MARGIN for g in gated)
    lines.append(f"held = on pixels the RNN's ratio is ≤ {TIME_COLLAPSE:g} × the gated nets' "
                 f"({_time(rnn):.3g} vs {keep:.3g}: {collapsed}) and LSTM and GRU beat its test "
                 f"accuracy by ≥ {GATED_ACC_MARGIN} ({follows})")
    return Verdict(collapsed and follows, lines)


def _update_spread(h: History) -> tuple[float, float]:
    """Median over sampled steps of (``fc1`` update ratio, ``fc1`` over ``out`` update ratio)."""
    first = dict(zip(*h.series("fc1.weight", "update_ratio")))
    last = dict(zip(*h.series("out.weight", "update_ratio")))
    spread = [first[s] / last[s] for s in first if s in last and last[s] > 0]
    return (statistics.median(list(first.values())),
            statistics.median(spread) if spread else math.nan)


def optimizers(results: list[RunResult], rd: Path) -> Verdict:
    lines, spread = [], {}
    for o in OPTIMIZERS:
        r = _pick(results, optimizer=o)
        first, spread[o] = _update_spread(_history(rd, r))
        lines.append(f"{o} (lr {r.config.lr:g}): median update ratio ‖Δw‖/‖w‖ of the first layer "
                     f"{first:.3g}, first/last layer {spread[o]:.3g}; peak saturated fraction "
                     f"{_fmt(r.peak_saturation)}; test accuracy {r.test_acc:.3f}")
    moved = {o: spread[o] >= ADAPTIVE_MOVE * spread["sgd"] for o in ADAPTIVE if o in JUDGED}
    lines.append(f"held = the first/last update ratio of {', '.join(moved)} is ≥ "
                 f"{ADAPTIVE_MOVE:g}× plain SGD's ({', '.join(f'{o}: {v}' for o, v in moved.items())}"
                 f"; adadelta, not judged: "
                 f"{spread['adadelta'] / spread['sgd'] if spread['sgd'] > 0 else math.nan:.3g}×)")
    return Verdict(all(moved.values()), lines)
