"""Named presets that re-run classic results on MNIST and judge them from the measurements.

Each :class:`Preset` has the paper's claim, its setup (and how it is shrunk to run on a
CPU in minutes), the configs (full and ``--quick``) and a verdict function that reads
the finished runs (their results and histories) and says, with the numbers it used,
whether the qualitative claim held. Nothing in a verdict is hard-coded except the
named thresholds below.

========== ==================================================================
preset     claim
========== ==================================================================
glorot2010 deep sigmoid/tanh with standard init: the top sigmoid layer is driven
           to 0 early; back-propagated gradients shrink toward the input with standard
           init and are more even with normalized (Xavier) init
he2015     a 30-layer ReLU MLP: Xavier init stalls or learns far slower than He
ioffe2015  3×100 sigmoid: BatchNorm trains faster and keeps sigmoid inputs stable
dying_relu a high learning rate kills most ReLU units; LeakyReLU keeps learning
rnn        sequential MNIST: back through 100 time steps the plain tanh RNN's gradient
           collapses while LSTM/GRU keep it, and their accuracy follows
optimizers a deep sigmoid net: adaptive optimisers move its first layer, plain SGD does not
========== ==================================================================

Example:
    >>> sorted(PRESETS)
    ['dying_relu', 'glorot2010', 'he2015', 'ioffe2015', 'optimizers', 'rnn']
    >>> len(PRESETS["dying_relu"].configs(quick=True))
    6
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from gradscope.experiments.optimizers import ADAPTIVE, DEFAULT_LR, OPTIMIZERS
from gradscope.experiments.train import RunConfig, RunResult
from gradscope.history import History

__all__ = ["PRESETS", "Preset", "Verdict"]

# ---- thresholds (named, used by the verdicts) ----------------------------------
#: glorot2010: the top hidden sigmoid layer is "driven to 0" (their Fig. 2) when its
#: mean output falls below this (from 0.5 at initialisation) within the first
#: 1000 updates while the first hidden layer's mean stays above it.
TOP_MEAN = 0.1
#: he2015: He "learns far faster" when its final test accuracy beats Xavier's by this.
HE_ACC_MARGIN = 0.10
#: dying_relu: "most units dead" when the mean over layers of the final windowed
#: dead fraction is at least this.
MOST_DEAD = 0.5
#: dying_relu: LeakyReLU "keeps learning" when its test accuracy beats ReLU's by this.
LEAKY_ACC_MARGIN = 0.05
#: rnn: the plain RNN's gradient "collapses" on the long sequence when its median
#: ‖∂L/∂h_0‖/‖∂L/∂h_T‖ is at most this fraction of the smaller of LSTM's and GRU's.
TIME_COLLAPSE = 1e-2
#: rnn: LSTM and GRU accuracy "follows" when both beat the plain RNN's by this.
GATED_ACC_MARGIN = 0.05
#: optimizers: an adaptive optimiser "moves the first layer" when its median update
#: ratio first/last layer is at least this many times plain SGD's.
ADAPTIVE_MOVE = 10.0
# ------------------------------------------------------------------------------


@dataclass
class Verdict:
    """Whether the claim held, and the measurements behind the judgement."""

    held: bool
    lines: list[str]

    def __str__(self) -> str:
        head = "verdict: the claim HELD" if self.held else "verdict: the claim did NOT hold"
        return "\n".join([head, *("  - " + line for line in self.lines)])


@dataclass(frozen=True)
class Preset:
    """A named experiment reproducing a published qualitative result.

    Args:
        name: the preset's name (``gradscope preset NAME``).
        claim: the qualitative claim under test.
        setup: the published setup and how it is shrunk here.
        configs: ``quick -> configs`` (``--quick`` shrinks further for CI/smoke runs).
        verdict: ``(results, results_dir) -> Verdict`` computed from the runs.
    """

    name: str
    claim: str
    setup: str
    configs: Callable[..., list[RunConfig]]
    verdict: Callable[[list[RunResult], Path], Verdict]

    def describe(self) -> str:
        """Claim and setup, for ``gradscope preset --list`` and ``summary.md``."""
        return f"{self.name}\n  claim: {self.claim}\n  setup: {self.setup}"


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


# ---- glorot2010 ----------------------------------------------------------------
def _glorot_configs(quick: bool = False) -> list[RunConfig]:
    d, w, steps = (4, 256, 600) if quick else (4, 1000, 2000)
    return [RunConfig(activation=a, init=i, depth=d, width=w, lr=0.1, batch_size=10, steps=steps,
                      eval_every=steps // 6, monitor_every=5)
            for a in ("sigmoid", "tanh") for i in ("standard", "xavier_uniform")]


def _glorot_verdict(results: list[RunResult], rd: Path) -> Verdict:
    lines = []
    r = _pick(results, activation="sigmoid", init="standard")
    h = _history(rd, r)
    top, first = f"act{r.config.depth}", "act1"

    def early(layer: str, metric: str) -> list[float]:
        return [v for s, v in zip(*h.series(layer, metric)) if s < 1000]

    top_min, first_min = min(early(top, "mean")), min(early(first, "mean"))
    sat_ok = top_min < TOP_MEAN <= first_min
    lines.append(f"sigmoid/standard: lowest mean output in the first 1000 updates: top layer "
                 f"{top_min:.3f}, first layer {first_min:.3f} (driven to 0 means < {TOP_MEAN}); "
                 f"at the end: top {h.value(top, 'mean'):.3f}; peak saturated fraction "
                 f"(within eps of 0 or 1) of the top layer in the first 1000 updates "
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


# ---- he2015 --------------------------------------------------------------------
def _he_configs(quick: bool = False) -> list[RunConfig]:
    w, steps = (128, 400) if quick else (256, 2000)
    return [RunConfig(activation="relu", init=i, depth=30, width=w, optimizer="momentum", lr=0.01,
                      batch_size=64, steps=steps, eval_every=steps // 8, monitor_every=5)
            for i in ("xavier_uniform", "he")]


def _he_verdict(results: list[RunResult], rd: Path) -> Verdict:
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


# ---- ioffe2015 -----------------------------------------------------------------
def _ioffe_configs(quick: bool = False) -> list[RunConfig]:
    steps = 1500 if quick else 20_000
    return [RunConfig(activation="sigmoid", init="small_normal", batchnorm=bn, depth=3, width=100,
                      lr=0.1, batch_size=60, steps=steps, eval_every=steps // 10,
                      monitor_every=5 if quick else 20)
            for bn in (False, True)]


def _drift(h: History, layer: str) -> float:
    """Range (max − min) of a layer's mean sigmoid output after the first 10% of steps."""
    steps, values = h.series(layer, "mean")
    cut = steps[-1] * 0.1
    kept = [v for s, v in zip(steps, values) if s >= cut]
    return max(kept) - min(kept)


def _ioffe_verdict(results: list[RunResult], rd: Path) -> Verdict:
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


# ---- dying_relu ----------------------------------------------------------------
def _dying_configs(quick: bool = False) -> list[RunConfig]:
    steps = 600 if quick else 2000
    return [RunConfig(activation=a, init="he", depth=3, width=256, lr=lr, batch_size=64,
                      steps=steps, eval_every=steps // 8, monitor_every=5)
            for lr in (0.1, 0.5, 1.0) for a in ("relu", "leaky_relu")]


def _final_mean(h: History, metric: str) -> Optional[float]:
    vals = [h.value(s, metric) for s in h.layers("activation") if metric in h.metrics(s)]
    return statistics.fmean(vals) if vals else None


def _dying_verdict(results: list[RunResult], rd: Path) -> Verdict:
    lines = []
    dead = {}
    for lr in (0.1, 0.5, 1.0):
        for a, metric in (("relu", "dead_units_window"), ("leaky_relu", "neg_units_window")):
            r = _pick(results, activation=a, lr=lr)
            d = _final_mean(_history(rd, r), metric)
            dead[(a, lr)] = d
            what = "dead" if a == "relu" else "stuck in the negative regime"
            diverged = "" if math.isfinite(r.final_train_loss) else " (diverged: loss not finite)"
            lines.append(f"{a} lr {lr:g}: final fraction of units {what} (mean over layers) "
                         f"{_fmt(d)}; test accuracy {r.test_acc:.3f}{diverged}")
    relu_hi, leaky_hi = _pick(results, activation="relu", lr=1.0), _pick(results, activation="leaky_relu", lr=1.0)
    killed = (dead[("relu", 1.0)] or 0.0) >= MOST_DEAD
    learns = leaky_hi.test_acc >= relu_hi.test_acc + LEAKY_ACC_MARGIN
    lines.append(f"held = at lr 1.0 most ReLU units die (≥ {MOST_DEAD}: {killed}) and LeakyReLU's "
                 f"test accuracy beats ReLU's by ≥ {LEAKY_ACC_MARGIN} ({learns})")
    return Verdict(killed and learns, lines)


# ---- rnn -----------------------------------------------------------------------
def _rnn_configs(quick: bool = False) -> list[RunConfig]:
    width, steps = (32, 300) if quick else (64, 2000)
    return [RunConfig(model=m, sequence=seq, depth=1, width=width, optimizer="adam", lr=2e-3,
                      batch_size=64, steps=steps, eval_every=steps // 4, monitor_every=10)
            for seq in ("rows", "pixels") for m in ("rnn", "lstm", "gru")]


def _time(r: RunResult) -> float:
    return r.time_ratio if r.time_ratio is not None else math.nan


def _rnn_verdict(results: list[RunResult], rd: Path) -> Verdict:
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


# ---- optimizers ----------------------------------------------------------------
def _optimizer_configs(quick: bool = False) -> list[RunConfig]:
    width, steps = (128, 400) if quick else (256, 2000)
    return [RunConfig(activation="sigmoid", init="xavier_uniform", depth=6, width=width,
                      optimizer=o, lr=DEFAULT_LR[o], batch_size=64, steps=steps,
                      eval_every=steps // 4, monitor_every=10)
            for o in OPTIMIZERS]


def _update_spread(h: History) -> tuple[float, float]:
    """Median over sampled steps of (``fc1`` update ratio, ``fc1`` over ``out`` update ratio)."""
    first = dict(zip(*h.series("fc1.weight", "update_ratio")))
    last = dict(zip(*h.series("out.weight", "update_ratio")))
    spread = [first[s] / last[s] for s in first if s in last and last[s] > 0]
    return (statistics.median(list(first.values())),
            statistics.median(spread) if spread else math.nan)


def _optimizer_verdict(results: list[RunResult], rd: Path) -> Verdict:
    lines, spread = [], {}
    for o in OPTIMIZERS:
        r = _pick(results, optimizer=o)
        first, spread[o] = _update_spread(_history(rd, r))
        lines.append(f"{o} (lr {r.config.lr:g}): median update ratio ‖Δw‖/‖w‖ of the first layer "
                     f"{first:.3g}, first/last layer {spread[o]:.3g}; peak saturated fraction "
                     f"{_fmt(r.peak_saturation)}; test accuracy {r.test_acc:.3f}")
    moved = {o: spread[o] >= ADAPTIVE_MOVE * spread["sgd"] for o in ADAPTIVE}
    lines.append(f"held = every adaptive optimiser's first/last update ratio is ≥ {ADAPTIVE_MOVE:g}× "
                 f"plain SGD's ({', '.join(f'{o}: {v}' for o, v in moved.items())})")
    return Verdict(all(moved.values()), lines)


PRESETS: dict[str, Preset] = {
    "glorot2010": Preset(
        "glorot2010",
        "deep sigmoid/tanh nets: with standard init U[±1/√n_in] the top sigmoid layer is driven "
        "to 0 (saturates) early and back-propagated gradients shrink toward the input; normalized (Xavier) init "
        "keeps them more even",
        "paper: 5×1000 hidden, softmax, SGD batch 10, biases 0. Here: 4×1000 (the saturation "
        "of the paper's Fig. 2 already shows with 4×1000 sigmoid, standard init, lr 0.1, "
        "batch 10), "
        "sigmoid and tanh × standard and normalized init, 2000 updates instead of millions; "
        "gradients compared at step 0 over one batch of 10 instead of 300 fixed test images. "
        "--quick: 4×256, 600 updates.",
        _glorot_configs, _glorot_verdict),
    "he2015": Preset(
        "he2015",
        "a 30-layer ReLU net: Xavier init stalls or learns far slower than He init (std √(2/n))",
        "paper: 30-layer ReLU conv net on ImageNet. Here: a 30×256 ReLU MLP on MNIST, SGD with "
        "momentum 0.9, lr 0.01, batch 64, 2000 steps. --quick: 30×128, 400 steps.",
        _he_configs, _he_verdict),
    "ioffe2015": Preset(
        "ioffe2015",
        "3 hidden layers of 100 sigmoid units: BatchNorm trains faster and keeps the sigmoid "
        "inputs' distribution stable",
        "paper: 3×100 sigmoid, small Gaussian init, 60 per batch, 50,000 steps, BN before each "
        "sigmoid. Here: the same net, N(0, 0.01²) init, SGD lr 0.1, 20,000 steps (shrunk ×2.5); "
        "the stability is read from the last sigmoid layer's mean output (a monotone image of "
        "its input) after the first 10% of training. --quick: 1500 steps.",
        _ioffe_configs, _ioffe_verdict),
    "dying_relu": Preset(
        "dying_relu",
        "a high learning rate kills a large share of ReLU units while LeakyReLU keeps learning",
        "784-256-256-256-10, He init, plain SGD batch 64, lr 0.1 (reference), 0.5 and 1.0, "
        "ReLU vs LeakyReLU(0.01), 2000 steps; the verdict is taken at lr 1.0, where units "
        "die most, and lr 0.5 is reported beside it. --quick: 600 steps.",
        _dying_configs, _dying_verdict),
    "rnn": Preset(
        "rnn",
        "a plain tanh RNN's gradient vanishes back through time (‖∂L/∂h_0‖/‖∂L/∂h_T‖ collapses "
        "by orders of magnitude on a long sequence) while LSTM and GRU keep it, and their "
        "accuracy follows",
        "sequential MNIST: rows (28 steps of 28 pixels) and pixels (the image pooled to 10×10, "
        "100 steps of one pixel); tanh RNN, LSTM (forget bias 1) and GRU, one layer of 64 units, "
        "Adam lr 2e-3, batch 64, 2000 steps; the ratio is read by gradscope's recurrent capture "
        "every 10th step and its median over the run is compared. --quick: 32 units, 300 steps.",
        _rnn_configs, _rnn_verdict),
    "optimizers": Preset(
        "optimizers",
        "in a deep sigmoid net plain SGD barely moves the first layers (their gradient is small) "
        "while optimisers that scale each step by the parameter's own gradient history (Adam, "
        "RMSprop, Adagrad, Adadelta, Adamax) move them about as much as the last",
        "6×256 sigmoid MLP, Xavier init, batch 64, 2000 steps, each optimiser at its usual "
        "learning rate (gradscope.experiments.optimizers.DEFAULT_LR); compared through "
        "gradscope's per-layer update ratio ‖Δw‖/‖w‖ of the first layer over the output layer "
        "(median over sampled steps). --quick: 6×128, 400 steps.",
        _optimizer_configs, _optimizer_verdict),
}
