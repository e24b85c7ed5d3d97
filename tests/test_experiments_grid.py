"""Models, runs, grids and presets on tiny synthetic data (no download)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

import gradscope
from gradscope import cli
from gradscope.experiments import grid as grid_mod
from gradscope.experiments import train as train_mod
from gradscope.experiments.compare import FULL, QUICK
from gradscope.experiments.data import synthetic_dataset
from gradscope.experiments.grid import (
    GridError,
    expand_grid,
    fixed_axes,
    format_terminal,
    run_grid,
    run_names,
)
from gradscope.experiments.models import GAINS, build_mlp
from gradscope.experiments.presets import PRESETS, Verdict
from gradscope.experiments.train import (
    RunConfig,
    RunResult,
    gradient_ratio,
    steps_to_target,
    train_run,
)
from gradscope.history import History

TINY = dict(depths=[2], widths=[8], steps=[12], eval_every=6, monitor_every=2)


@pytest.fixture(scope="module")
def tiny_data():
    return synthetic_dataset(n_train=256, n_test=64, features=16)


# ---- models -------------------------------------------------------------------
@pytest.mark.parametrize(("init", "std"), [
    ("normal", lambda n_in, n_out, g: 1.0),
    ("standard", lambda n_in, n_out, g: 1 / math.sqrt(3 * n_in)),
    ("xavier_uniform", lambda n_in, n_out, g: math.sqrt(2 / (n_in + n_out))),
    ("xavier_normal", lambda n_in, n_out, g: math.sqrt(2 / (n_in + n_out))),
    ("he", lambda n_in, n_out, g: g / math.sqrt(n_in)),
    ("small_normal", lambda n_in, n_out, g: 0.01),
], ids=lambda v: v if isinstance(v, str) else "")
def test_init_weight_std_matches_formula(init, std):
    torch.manual_seed(0)
    m = build_mlp(in_features=400, depth=1, width=300, activation="relu", init=init)
    want = std(400, 300, GAINS["relu"])
    assert m.fc1.weight.std().item() == pytest.approx(want, rel=0.02)
    assert torch.count_nonzero(m.fc1.bias) == 0


def test_orthogonal_init_has_the_activation_gain():
    m = build_mlp(in_features=32, depth=1, width=32, activation="tanh", init="orthogonal")
    w = m.fc1.weight
    assert torch.allclose(w @ w.T, GAINS["tanh"] ** 2 * torch.eye(32), atol=1e-5)


def test_mlp_layout_with_batchnorm_and_dropout():
    m = build_mlp(in_features=4, depth=2, width=3, activation="gelu", init="default",
                  batchnorm=True, dropout=0.5)
    assert [n for n, _ in m.named_children()] == [
        "fc1", "bn1", "act1", "drop1", "fc2", "bn2", "act2", "drop2", "out"]


# ---- configs and metrics --------------------------------------------------------
@pytest.mark.parametrize(("kw", "match"), [
    ({"activation": "swish"}, r"activation='swish'.*use one of"),
    ({"width": -3}, r"width=-3.*integer ≥ 1"),
    ({"lr": 0.0}, r"lr=0.0.*> 0"),
    ({"dropout": 1.0}, r"dropout=1.0.*\[0, 1\)"),
    ({"optimizer": "lbfgs"}, r"optimizer='lbfgs'"),
    ({"init": "glorot"}, r"init='glorot'"),
], ids=["activation", "width", "lr", "dropout", "optimizer", "init"])
def test_run_config_errors_name_argument_and_fix(kw, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**kw)


def test_steps_to_target_against_a_loop():
    accs = [0.1 * (i % 11) for i in range(40)] + [1.0] * 30
    for window in (1, 5, 20):
        want = next((i + 1 for i in range(window - 1, len(accs))
                     if sum(accs[i - window + 1:i + 1]) / window >= 0.9), None)
        assert steps_to_target(accs, window=window, target=0.9) == want
    assert steps_to_target([0.5] * 10, window=5) is None


def test_gradient_ratio_is_the_median_of_per_step_ratios():
    h = History()
    for step, (a, b) in enumerate([(1.0, 2.0), (3.0, 1.0), (1.0, 4.0)]):
        h.add(step, "fc1.weight", "grad_norm", a)
        h.add(step, "out.weight", "grad_norm", b)
    assert gradient_ratio(h) == 0.5


def test_train_run_is_reproducible(tiny_data):
    cfg = RunConfig(activation="tanh", init="xavier_uniform", depth=2, width=8, steps=10,
                    eval_every=5, monitor_every=1, dropout=0.1)
    a, b = (train_run(cfg, tiny_data, progress=False) for _ in range(2))
    assert (a.test_acc, a.final_train_loss, a.grad_ratio) == (b.test_acc, b.final_train_loss,
                                                              b.grad_ratio)


# ---- grids --------------------------------------------------------------------
def test_bad_grid_fails_before_any_training(tmp_path, monkeypatch, capsys):
    def no_training(*a, **k):
        raise AssertionError("trained despite an invalid grid")

    monkeypatch.setattr(grid_mod, "train_run", no_training)
    monkeypatch.setattr("gradscope.experiments.data.load_mnist", no_training)
    with pytest.raises(GridError) as e:
        expand_grid(activations=["relu", "swish"], widths=[8, -3], **{
            k: v for k, v in TINY.items() if k != "widths"})
    assert "swish" in str(e.value) and "width=-3" in str(e.value)
    rc = cli.main(["compare", "--activations", "swish", "--width", "-3",
                   "--results-dir", str(tmp_path / "r")])
    assert rc == 2
    assert "activation='swish'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_run_names_are_the_axes_that_vary():
    quick = expand_grid(**QUICK)
    names = run_names(quick)
    assert names[:4] == ["sigmoid-normal", "sigmoid-normal-bn", "sigmoid-xavier", "sigmoid-xavier-bn"]
    assert len(set(names)) == 30 and max(map(len, names)) <= len("leaky_relu-normal-bn")
    assert fixed_axes(quick) == "5x256, sgd, lr0.1, bs64, 1000steps, seed0, eval100, monitor5"
    full = expand_grid(**FULL)
    assert len(set(run_names(full))) == len(full) == 60
    lone = [RunConfig(activation="tanh", steps=10)]
    assert run_names(lone) == [lone[0].name]  # nothing to compare: the full name
    assert run_names(expand_grid(batchnorm=[False, True], steps=[10])) == ["relu", "relu-bn"]
    assert run_names(expand_grid(lrs=[0.1, 0.01], dropouts=[0.0, 0.5], steps=[10])) == [
        "lr0.1", "lr0.1-drop0.5", "lr0.01", "lr0.01-drop0.5"]
    # Fields outside the name's usual axes still tell configs apart.
    pair = [RunConfig(steps=10, monitor_every=1), RunConfig(steps=10, monitor_every=5)]
    assert run_names(pair) == ["monitor1", "monitor5"]


def test_terminal_table_fits_120_columns():
    cfgs = expand_grid(**QUICK)
    long_cfg = RunConfig(activation="leaky_relu", init="xavier_uniform", batchnorm=True, steps=10)
    results = [RunResult(c, 0.9512, 0.2, 0.3, 512, 0.00153, 0.91, None, 12.34, "cpu",
                         ["saturation (act1, act2, act3, act4, act5)", "vanishing_gradients (fc1)"],
                         name=n) for c, n in zip(cfgs, run_names(cfgs))]
    results.append(RunResult(long_cfg, math.nan, math.nan, math.nan, None, math.nan, None, 0.7,
                             1.0, "cpu", [], name=long_cfg.name))
    text = format_terminal(results)
    lines = text.splitlines()
    assert len(lines) == 2 + 31 and max(map(len, lines)) <= 120
    assert lines[0].split()[:3] == ["run", "acc", "loss"]
    assert lines[2].startswith("sigmoid-normal ") and "0.951" in lines[2] and "saturation (act1" in lines[2]
    assert lines[-1].startswith(long_cfg.name[:39] + "…") and " nan " in lines[-1]
    assert max(map(len, format_terminal(results, width=100).splitlines())) <= 100


def test_grad_ratio_of_a_recurrent_run_reads_not_applicable_not_nan():
    """fc1/out is an MLP's ratio: a recurrent run shows '–' there; a diverged MLP's 'nan'."""
    lstm = RunConfig(model="lstm", sequence="rows", depth=1, width=8, optimizer="adam",
                     lr=2e-3, steps=10)
    mlp = RunConfig(steps=10)
    results = [RunResult(lstm, 0.9, 0.3, 0.3, None, math.nan, None, None, 1.0, "cpu", [],
                         name="lstm"),
               RunResult(mlp, 0.1, math.nan, math.nan, None, math.nan, None, None, 1.0, "cpu",
                         [], name="mlp")]
    rows = format_terminal(results).splitlines()[2:]
    from gradscope.experiments.grid import TERMINAL

    col = [k for k, _ in TERMINAL].index("grad_ratio")  # each cell one token (no spaces)
    assert rows[0].split()[col] == "–" and rows[1].split()[col] == "nan"


def _hparams_differ(run_dir):
    """The hparams a run's experiment summary marks as differing between runs."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    for ev in run_dir.glob("events.out.tfevents.*"):
        for e in EventFileLoader(str(ev)).Load():
            for v in e.summary.value:
                if v.tag == "_hparams_/experiment":
                    exp = HParamsPluginData.FromString(v.metadata.plugin_data.content).experiment
                    return {h.name for h in exp.hparam_infos if h.differs}
    raise AssertionError(f"no hparams experiment in {run_dir}")


def _event_tags(run_dir):
    tags, plugins = set(), set()
    for ev in run_dir.glob("events.out.tfevents.*"):
        for e in EventFileLoader(str(ev)).Load():
            for v in e.summary.value:
                tags.add(v.tag)
                plugins.add(v.metadata.plugin_data.plugin_name)
    return tags, plugins


def test_tiny_grid_end_to_end_writes_every_output_and_resumes(tmp_path, tiny_data, monkeypatch):
    cfgs = expand_grid(activations=["sigmoid", "relu", "leaky_relu"], inits=["he"],
                       batchnorm=[False, True], **TINY)
    assert len(cfgs) == 6
    seen = []
    results = run_grid(cfgs, tiny_data, results_dir=tmp_path, progress=False,
                       dashboard_images=False, on_result=lambda r, skipped: seen.append(skipped))
    assert seen == [False] * 6
    assert [r.name for r in results] == ["sigmoid", "sigmoid-bn", "relu", "relu-bn", "leaky_relu",
                                         "leaky_relu-bn"]
    for r in results:
        run_dir = tmp_path / "runs" / r.name
        for f in ("result.json", "history.json", "curves.json"):
            assert (run_dir / f).exists()
        assert _hparams_differ(run_dir) == {"activation", "batchnorm"}  # lead the HParams table
        tags, plugins = _event_tags(run_dir)
        assert {"train/loss", "train/accuracy", "test/accuracy", "hparam/test_accuracy"} <= tags
        assert "hparams" in plugins
        assert 0 <= r.test_acc <= 1 and r.device == "cpu"
    sig = next(r for r in results if r.config.activation == "sigmoid")
    assert sig.peak_saturation is not None and sig.peak_dead is None
    md = (tmp_path / "summary.md").read_text()
    assert all(r.name in md for r in results) and "grad ratio first/last" in md
    assert "Every run: he, 2x8, sgd, lr0.1, bs64, 12steps, seed0, eval6, monitor2." in md
    rows = (tmp_path / "summary.csv").read_text().strip().splitlines()
    assert len(rows) == 7 and rows[0].startswith("run,activation,init")
    # the full config stays in the summary files
    names = [f.name for f in dataclasses.fields(RunConfig)]
    assert rows[0].split(",")[1:1 + len(names)] == names
    assert json.loads((tmp_path / "summary.json").read_text())[1]["config"] == cfgs[1].to_dict()
    assert len(json.loads((tmp_path / "summary.json").read_text())) == 6
    for png in ("test_accuracy", "gradients_per_layer", "saturation", "dead_units"):
        assert (tmp_path / "plots" / f"{png}.png").stat().st_size > 1000

    # rerun: every finished config is skipped, nothing trains
    monkeypatch.setattr(grid_mod, "train_run", lambda *a, **k: pytest.fail("retrained"))
    seen.clear()
    again = run_grid(cfgs, tiny_data, results_dir=tmp_path, progress=False,
                     on_result=lambda r, skipped: seen.append(skipped))
    assert seen == [True] * 6 and [r.to_dict() for r in again] == [r.to_dict() for r in results]


def test_interrupt_keeps_finished_runs_and_rerun_continues(tmp_path, tiny_data, monkeypatch):
    cfgs = expand_grid(activations=["relu", "tanh", "gelu"], inits=["he"], **TINY)
    real = train_run
    calls = []

    def interrupted(cfg, *a, **k):
        calls.append(cfg.name)
        if len(calls) == 2:
            k["run_dir"].mkdir(parents=True)
            (k["run_dir"] / "partial").write_text("half a run")
            raise KeyboardInterrupt
        return real(cfg, *a, **k)

    monkeypatch.setattr(grid_mod, "train_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_grid(cfgs, tiny_data, results_dir=tmp_path, progress=False, plots=False,
                 dashboard_images=False)
    assert len(json.loads((tmp_path / "summary.json").read_text())) == 1
    monkeypatch.setattr(grid_mod, "train_run", real)
    seen = []
    run_grid(cfgs, tiny_data, results_dir=tmp_path, progress=False, plots=False,
             dashboard_images=False, on_result=lambda r, skipped: seen.append(skipped))
    assert seen == [True, False, False]
    assert not (tmp_path / "runs" / cfgs[1].name / "partial").exists()


def test_compare_cli_synthetic(tmp_path, capsys):
    rc = cli.main(["compare", "--synthetic", "--quick", "--device", "cpu", "--no-progress",
                   "--jobs", "1", "--activations", "relu", "sigmoid", "--inits", "he", "--batchnorm", "off",
                   "--steps", "8",
                   "--width", "8", "--eval-every", "4", "--results-dir", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "\nrelu " in out and "2 runs (2 trained now" in out
    assert "every run: he, 5x8, sgd, lr0.1, bs64, 8steps, seed0, eval4, monitor5" in out
    tags, plugins = _event_tags(tmp_path / "runs" / "relu")
    assert {"gradscope/gradient_flow", "grad_norm/fc1", "test/accuracy"} <= tags  # dashboards
    assert "hparams" in plugins


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_verdict_is_computed_from_runs(name, tmp_path):
    """Each preset's verdict runs on shrunk configs (on noise, so no claim is asserted)."""
    preset = PRESETS[name]
    cfgs = [dataclasses.replace(c, width=8, steps=12, eval_every=6, monitor_every=2)
            for c in preset.configs(quick=True)]
    data = synthetic_dataset(n_train=128, n_test=32, features=784)
    results = run_grid(cfgs, data, results_dir=tmp_path, progress=False, plots=False,
                       dashboard_images=False)
    v = preset.verdict(results, tmp_path)
    assert isinstance(v, Verdict) and isinstance(v.held, bool)
    assert v.lines and str(v).startswith("verdict: the claim")
    assert preset.name in preset.describe() and "setup:" in preset.describe()


def test_findings_are_grouped_by_rule():
    class F:
        def __init__(self, rule, layer):
            self.rule, self.layer = rule, layer

    class Mon:
        def findings(self):
            return [F("saturation", "act1"), F("saturation", "act2"), F("nonfinite", None),
                    F("saturation", "act1")]

    assert train_mod._findings(Mon()) == ["saturation (act1, act2)", "nonfinite"]
    assert train_mod._findings(object()) == []  # a gradscope without findings


def test_every_bad_grid_value_is_listed_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("gradscope.experiments.data.load_mnist",
                        lambda *a, **k: pytest.fail("loaded data for an invalid grid"))
    rc = cli.main(["compare", "--activations", "swish", "--width", "-3", "--lr", "0",
                   "--optimizer", "lion", "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2
    for bad in ("activation='swish'", "width=-3", "lr=0", "optimizer='lion'"):
        assert bad in err, (bad, err)


def test_results_dir_that_is_a_file_fails_before_loading_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("gradscope.experiments.data.load_mnist",
                        lambda *a, **k: pytest.fail("loaded data before checking --results-dir"))
    f = tmp_path / "results.txt"
    f.write_text("not a directory")
    for cmd in (["compare", "--quick"], ["preset", "he2015", "--quick"]):
        assert cli.main([*cmd, "--results-dir", str(f)]) == 2
        assert "is a file, not a directory; pass a directory" in capsys.readouterr().err


def test_a_data_error_reaches_the_cli_user_as_a_message(tmp_path, monkeypatch, capsys):
    from gradscope.experiments import data

    def broken(*a, **k):
        raise data.DataError("could not obtain verified MNIST in /x: no network")

    monkeypatch.setattr(data, "load_mnist", broken)
    rc = cli.main(["compare", "--quick", "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "gradscope compare: could not obtain verified MNIST" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("kw, expected", [
    (dict(activation="sigmoid", init="small_normal", batchnorm=False),
     {"vanishing_gradients (fc1)", "update_ratio_low (fc1)"}),
    (dict(activation="sigmoid", init="small_normal", batchnorm=True), set()),
    (dict(activation="relu", init="he", batchnorm=False), set()),
], ids=["ioffe-no-bn", "ioffe-bn", "relu-he"])
def test_ioffe_setting_gets_a_finding_and_healthy_nets_none(kw, expected):
    """3x100 sigmoid, N(0, 0.1^2), no BatchNorm: the back-propagated gradient vanishes
    towards the input, and the findings say so; with BatchNorm, or ReLU + He, none. 130
    steps: the update-ratio rules judge from step 100 on (``Thresholds.update_settle``; the
    small-initialised sigmoid nets' output layer updates by more than 0.1 of its weights
    over their first ~16 steps, which is the start, not a finding)."""
    from gradscope.experiments.data import synthetic_dataset

    data = synthetic_dataset(n_train=1024, n_test=256, features=784)
    cfg = RunConfig(depth=3, width=100, lr=0.1, batch_size=60, steps=130, eval_every=130,
                    monitor_every=2, **kw)
    found = set(train_run(cfg, data, progress=False).findings)
    assert found == expected


def test_recurrent_runs_do_not_show_the_mlp_only_axes():
    """activation, init, BatchNorm and dropout do not apply to the recurrent models: their
    names and the shared-axes line leave them out."""
    from gradscope.experiments.grid import fixed_axes, run_names
    from gradscope.experiments.train import RunConfig

    configs = [RunConfig(model=m, sequence="rows", depth=1, width=32, optimizer="adam",
                         lr=2e-3, steps=300) for m in ("rnn", "lstm", "gru")]
    assert run_names(configs) == ["rnn", "lstm", "gru"]
    shared = fixed_axes(configs)
    assert shared.startswith("rows, 1x32, adam, lr0.002")
    assert "relu" not in shared and "he" not in shared.split(", ")


def test_every_cli_path_under_a_file_is_a_clean_message(tmp_path, monkeypatch, capsys):
    """Issue 23.7: a path under a regular file (``afile/sub``), for each path the CLI takes:
    one line that names the file, no traceback, exit code 2."""
    monkeypatch.setattr("gradscope.experiments.data.load_mnist",
                        lambda *a, **k: pytest.fail("loaded data before checking the paths"))
    f = tmp_path / "afile"
    f.write_text("")
    bad = str(f / "sub")
    for argv in (["compare", "--quick", "--results-dir", bad],
                 ["preset", "he2015", "--quick", "--results-dir", bad],
                 ["report", bad]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"{str(f)!r} is a file, not a directory" in err, (argv, err)
        assert "Traceback" not in err
    with pytest.raises(SystemExit, match=r"--logdir .*is a file, not a directory"):
        cli.main(["demo", "--logdir", bad, "--steps", "1"])
    with pytest.raises(ValueError, match=r"logdir=.*is a file, not a directory"):
        gradscope.watch(torch.nn.Linear(2, 2), logdir=bad)
    from gradscope.experiments import data

    with pytest.raises(data.DataError, match=r"is a file, not a directory.*GRADSCOPE_DATA"):
        data.ensure_mnist(bad, quiet=True)
