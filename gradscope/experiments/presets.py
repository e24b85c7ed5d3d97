"""Named presets that re-run classic results on MNIST and judge them from the measurements.

Each :class:`Preset` has the paper's claim, its setup (and how it is shrunk to run on a
CPU in minutes), the configs (full and ``--quick``) and a verdict function that reads
the finished runs (their results and histories) and says, with the numbers it used,
whether the qualitative claim held (:mod:`gradscope.experiments.verdicts`, with its
named thresholds).

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

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gradscope.experiments import verdicts
from gradscope.experiments.optimizers import DEFAULT_LR, OPTIMIZERS
from gradscope.experiments.train import RunConfig, RunResult
from gradscope.experiments.verdicts import Verdict

__all__ = ["PRESETS", "Preset", "Verdict"]


@dataclass(frozen=True)
class Preset:
    """A named experiment reproducing a published qualitative result.

    Args:
        name: the preset's name (``gradscope preset NAME``).
        claim: the qualitative claim under test.
        setup: the published setup and how it is shrunk here.
        configs: ``quick -> configs`` (``--quick`` shrinks further for CI/smoke runs).
        verdict: ``(results, results_dir) -> Verdict`` computed from the runs.
        quick: what ``--quick`` gave over seeds 0-2 (the verdict and its spread), so
            that a claim that does not hold at that size is said before it is run.
    """

    name: str
    claim: str
    setup: str
    configs: Callable[..., list[RunConfig]]
    verdict: Callable[[list[RunResult], Path], Verdict]
    quick: str = ""

    def describe(self) -> str:
        """Claim, setup and what ``--quick`` gives, for ``gradscope preset --list`` and ``summary.md``."""
        at_quick = f"\n  at --quick: {self.quick}" if self.quick else ""
        return f"{self.name}\n  claim: {self.claim}\n  setup: {self.setup}{at_quick}"



# ---- glorot2010 ----------------------------------------------------------------
def _glorot_configs(quick: bool = False) -> list[RunConfig]:
    d, w, steps = (4, 1000, 1000) if quick else (4, 1000, 2000)
    return [RunConfig(activation=a, init=i, depth=d, width=w, lr=0.1, batch_size=10, steps=steps,
                      eval_every=steps // 6, monitor_every=5)
            for a in ("sigmoid", "tanh") for i in ("standard", "xavier_uniform")]


# ---- he2015 --------------------------------------------------------------------
def _he_configs(quick: bool = False) -> list[RunConfig]:
    w, steps = (128, 400) if quick else (256, 2000)
    return [RunConfig(activation="relu", init=i, depth=30, width=w, optimizer="momentum", lr=0.01,
                      batch_size=64, steps=steps, eval_every=steps // 8, monitor_every=5)
            for i in ("xavier_uniform", "he")]


# ---- ioffe2015 -----------------------------------------------------------------
def _ioffe_configs(quick: bool = False) -> list[RunConfig]:
    steps = 1500 if quick else 20_000
    return [RunConfig(activation="sigmoid", init="small_normal", batchnorm=bn, depth=3, width=100,
                      lr=0.1, batch_size=60, steps=steps, eval_every=steps // 10,
                      monitor_every=5 if quick else 20)
            for bn in (False, True)]


# ---- dying_relu ----------------------------------------------------------------
def _dying_configs(quick: bool = False) -> list[RunConfig]:
    steps = 600 if quick else 2000
    return [RunConfig(activation=a, init="he", depth=3, width=256, optimizer="adam", lr=lr,
                      batch_size=64, steps=steps, eval_every=steps // 8, monitor_every=5)
            for lr in verdicts.DYING_LRS for a in ("relu", "leaky_relu")]


# ---- rnn -----------------------------------------------------------------------
def _rnn_configs(quick: bool = False) -> list[RunConfig]:
    width, steps = (32, 300) if quick else (64, 2000)
    return [RunConfig(model=m, sequence=seq, depth=1, width=width, optimizer="adam", lr=2e-3,
                      batch_size=64, steps=steps, eval_every=steps // 4, monitor_every=10)
            for seq in ("rows", "pixels") for m in ("rnn", "lstm", "gru")]


# ---- optimizers ----------------------------------------------------------------
def _optimizer_configs(quick: bool = False) -> list[RunConfig]:
    width, steps = (128, 400) if quick else (256, 2000)
    return [RunConfig(activation="sigmoid", init="xavier_uniform", depth=6, width=width,
                      optimizer=o, lr=verdicts.PRESET_LR.get(o, DEFAULT_LR[o]), batch_size=64,
                      steps=steps,
                      eval_every=steps // 4, monitor_every=10)
            for o in OPTIMIZERS]



PRESETS: dict[str, Preset] = {
    "glorot2010": Preset(
        "glorot2010",
        "\"the logistic sigmoid activation is unsuited for deep networks with random "
        "initialization because of its mean value, which can drive especially the top hidden "
        "layer into saturation\" (standard init U[±1/√n_in]: the top layer's outputs are driven "
        "to 0 early); back-propagated gradients shrink toward the input with standard init, "
        "and normalized (Xavier) init keeps them more even (their Fig. 7, tanh)",
        "paper: 5×1000 hidden, softmax, SGD batch 10, biases 0. Here: 4×1000 (the saturation "
        "of the paper's Fig. 2 already shows with 4×1000 sigmoid, standard init, lr 0.1, "
        "batch 10), sigmoid and tanh × standard and normalized init, 2000 updates instead of "
        "millions (\"early\": the first 1000); gradients compared at step 0 over one batch of 10 "
        "instead of 300 fixed test images. --quick: the same nets, 1000 updates.",
        _glorot_configs, verdicts.glorot2010,
        "held for seeds 0-2: top layer's lowest mean output 0.042-0.043 (first layer "
        "0.498-0.499), test error 0.897; tanh gradient RMS first/top layer at step 0: standard "
        "0.185-0.187, normalized 0.818-0.823"),
    "he2015": Preset(
        "he2015",
        "a 30-layer ReLU net initialised with Xavier init \"completely stalls\" while He init "
        "(std √(2/n), which keeps the activations' scale through depth) converges (their Fig. 3)",
        "paper: 30-layer ReLU conv net on ImageNet. Here: a 30×256 ReLU MLP on MNIST, SGD with "
        "momentum 0.9, lr 0.01, batch 64, 2000 steps. --quick: 30×128, 400 steps.",
        _he_configs, verdicts.he2015,
        "held for seeds 0-2: test accuracy He 0.42-0.74, Xavier 0.113 (stalled); activation "
        "std layer 30 / layer 1 at step 0: Xavier 2^-15.1 to 2^-14.9, He 2^-1.3 to 2^0.2"),
    "ioffe2015": Preset(
        "ioffe2015",
        "3 hidden layers of 100 sigmoid units: BatchNorm trains faster and keeps the sigmoid "
        "inputs' distribution stable",
        "paper: 3×100 sigmoid, small Gaussian init, 60 per batch, 50,000 steps, BN before each "
        "sigmoid. Here: the same net, N(0, 0.01²) init, SGD lr 0.1, 20,000 steps (shrunk ×2.5); "
        "the stability is read from the last sigmoid layer's mean output (a monotone image of "
        "its input) after the first 10% of training. --quick: 1500 steps.",
        _ioffe_configs, verdicts.ioffe2015,
        "held for seeds 0-2: with BN 90% train accuracy at step 513-640, test accuracy "
        "0.915-0.932; without, never and 0.098-0.103; drift of the last sigmoid mean 0.002 vs "
        "0.080-0.082"),
    "dying_relu": Preset(
        "dying_relu",
        "with a learning rate set too high a large share of a ReLU net's units die: they "
        "output 0 for every input and get no gradient again (CS231n: \"as much as 40% of "
        "your network can be dead\" if the learning rate is set too high). LeakyReLU, "
        "proposed against it, runs beside it and is reported, not judged: at --quick size it "
        "does not rescue the net (as many of its units stay negative on every input, with "
        "0.01 of the gradient, and its accuracy at the high rate is lower)",
        "784-256-256-256-10, He init, Adam batch 64 at lr 1e-3 (its usual rate), 1e-2 and "
        "3e-2 (too high), ReLU vs LeakyReLU(0.01), 2000 steps; dead = never positive over "
        "the monitor's 100-step window, the mean over the 3 layers at the end; judged at lr "
        "3e-2 against lr 1e-3, lr 1e-2 reported beside them. (Plain SGD at lr 1.0 diverges, "
        "LeakyReLU first, before most units die.) --quick: 600 steps.",
        _dying_configs, verdicts.dying_relu,
        "held for seeds 0-2: ReLU units dead at lr 3e-2 0.60-0.72 (lr 1e-2: 0.33-0.38; lr "
        "1e-3: 0.013-0.022), test accuracy 0.90-0.91; LeakyReLU at lr 3e-2: 0.41-0.55 stuck, "
        "test accuracy 0.70-0.86"),
    "rnn": Preset(
        "rnn",
        "back-propagated error signals in a plain (tanh) RNN vanish exponentially with the "
        "time lag (Bengio et al. 1994; Hochreiter & Schmidhuber 1997): "
        "‖∂L/∂h_0‖/‖∂L/∂h_T‖ collapses by orders of magnitude on a long sequence, while LSTM "
        "and GRU keep it, and their accuracy follows. At --quick size this does NOT hold "
        "robustly (below): with Adam the recurrent weights are rescaled within ~100 steps and "
        "the ratio over the run depends on the seed",
        "sequential MNIST: rows (28 steps of 28 pixels) and pixels (the image pooled to 10×10, "
        "100 steps of one pixel); tanh RNN, LSTM (forget bias 1) and GRU, one layer of 64 units, "
        "Adam lr 2e-3, batch 64, 2000 steps; the ratio is read by gradscope's recurrent capture "
        "every 10th step and its median over the run is compared. --quick: 32 units, 300 steps.",
        _rnn_configs, verdicts.rnn,
        "did NOT hold for seeds 0 and 1, held for seed 2. On pixels the median ratio: RNN "
        "4.7e-6 to 1.65 (seed 0: above 1, its gradient grew back through time), LSTM "
        "0.068-0.30, GRU 1.7e-4 to 0.044 (it vanished too in seed 0); test accuracy RNN "
        "0.26-0.36, LSTM 0.43-0.49, GRU 0.31-0.45 (GRU not 0.05 above the RNN in seed 0). "
        "Only at the first sampled step does every seed show the story on rows: RNN 9.5e-9 to "
        "2.7e-7, LSTM 8.5e-4 to 1.3e-3"),
    "optimizers": Preset(
        "optimizers",
        "in a deep sigmoid net plain SGD barely moves the first layers (their gradient is small) "
        "while optimisers that divide each step by the root of the parameter's own "
        "squared-gradient history (Adam, RMSprop, Adagrad, Adamax) move them about as much as "
        "the last. Adadelta is reported, not judged: its step is √(E[Δw²]+ε)/√(E[g²]+ε)·g, and "
        "for gradients far below √ε = 1e-3 the ε terms, not the gradient's history, set it: "
        "it moves the first layer little more than SGD",
        "6×256 sigmoid MLP, Xavier init, batch 64, 2000 steps, each optimiser at its usual "
        "learning rate (gradscope.experiments.optimizers.DEFAULT_LR) but RMSprop at 1e-3 "
        "(Hinton's lecture and Keras; at PyTorch's 1e-2 it saturates every sigmoid layer within "
        "10 steps, after which no gradient gets through); compared through gradscope's "
        "per-layer update ratio ‖Δw‖/‖w‖ of the first layer over the output layer (median over "
        "sampled steps). --quick: 6×128, 400 steps.",
        _optimizer_configs, verdicts.optimizers,
        "held for seeds 0-2: first/last update ratio SGD 1.4e-4-1.6e-4, Adam 2.8-3.1, RMSprop "
        "2.0-2.2, Adagrad 2.3-2.7, Adamax 1.8-2.1 (Adadelta 1.0e-3-1.1e-3, 6.7-7.4× SGD's)"),
}
