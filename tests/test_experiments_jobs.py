"""``--jobs N``: a grid's runs in worker processes, on tiny synthetic data.

Every run of a grid uses one torch thread, in a worker or in the main process
(``--jobs 1``): MKL splits small matrix products by the thread count, so the same
thread count is what makes the runs bitwise the same.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing
from pathlib import Path

import pytest
import torch

from gradscope import cli
from gradscope.experiments import jobs as jobs_mod
from gradscope.experiments.data import synthetic_dataset
from gradscope.experiments.grid import expand_grid, run_grid
from gradscope.experiments.jobs import RUN_THREADS, RunsFailed, default_jobs
from tests.fixtures.runs import tanh_fails

#: Tiny runs: dropout on, so that each run's own random stream is exercised too.
TINY = dict(depths=[2], widths=[16], steps=[24], dropouts=[0.1], eval_every=8, monitor_every=2)
GRID = ["--synthetic", "--activations", "relu", "tanh", "sigmoid", "--inits", "he",
        "--batchnorm", "off", "--depth", "2", "--width", "16", "--steps", "24", "--dropout",
        "0.1", "--eval-every", "8", "--monitor-every", "2", "--no-plots", "--no-progress",
        "--no-dashboard-images"]


@pytest.fixture(scope="module")
def tiny_data():
    return synthetic_dataset(n_train=256, n_test=64, features=16)


def _runs(out: Path) -> list[dict]:
    """``summary.json`` without the wall times, and each run's curves."""
    rows = json.loads((out / "summary.json").read_text())
    for r in rows:
        r.pop("wall_s")
        r["curves"] = json.loads((out / "runs" / r["name"] / "curves.json").read_text())
    return rows


def test_jobs_give_bitwise_the_results_of_one_process(tmp_path):
    """``compare --jobs 2`` and ``--jobs 1``: every summary value and every curve
    identical, bit for bit, whatever this process's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the grid sets one thread per run, and restores this
    try:
        assert cli.main(["compare", *GRID, "--jobs", "1", "--results-dir", str(tmp_path / "a")]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert cli.main(["compare", *GRID, "--jobs", "2", "--results-dir", str(tmp_path / "b")]) == 0
    one, two = _runs(tmp_path / "a"), _runs(tmp_path / "b")
    assert [r["name"] for r in two] == ["relu", "tanh", "sigmoid"]  # config order
    assert one == two
    assert not multiprocessing.active_children()  # the workers are gone


def test_a_failing_run_is_reported_and_the_others_kept(tmp_path, tiny_data, monkeypatch,
                                                       capsys):
    monkeypatch.setattr(jobs_mod, "train_parallel",
                        functools.partial(jobs_mod.train_parallel, train=tanh_fails))
    cfgs = expand_grid(activations=["relu", "tanh", "sigmoid"], inits=["he"], **TINY)
    with pytest.raises(RunsFailed, match=r"1 run\(s\) failed") as e:
        run_grid(cfgs, tiny_data, results_dir=tmp_path, progress=False, plots=False,
                 dashboard_images=False, jobs=2)
    assert e.value.failures == [("tanh", "RuntimeError: tanh broke on purpose")]
    assert "run tanh failed: RuntimeError: tanh broke on purpose" in capsys.readouterr().err
    assert [r["name"] for r in json.loads((tmp_path / "summary.json").read_text())] == [
        "relu", "sigmoid"]
    # the rerun trains the failed run alone
    seen: list[tuple[str, bool]] = []
    run_grid(cfgs, tiny_data, results_dir=tmp_path, progress=False, plots=False,
             dashboard_images=False, on_result=lambda r, s: seen.append((r.name, s)))
    assert seen == [("relu", True), ("tanh", False), ("sigmoid", True)]


def test_the_cli_says_which_runs_failed_and_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(jobs_mod, "train_parallel", lambda *a, **k: (_ for _ in ()).throw(
        RunsFailed([("tanh", "RuntimeError: tanh broke on purpose")])))
    assert cli.main(["compare", *GRID, "--jobs", "2", "--results-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "gradscope compare: 1 run(s) failed (the others finished and are kept" in err
    assert "tanh: RuntimeError: tanh broke on purpose" in err


def test_ctrl_c_keeps_the_finished_runs_and_ends_the_workers(tmp_path, tiny_data):
    cfgs = expand_grid(activations=["relu", "tanh", "sigmoid", "gelu"], inits=["he"], **TINY)

    def interrupt(result, skipped):
        raise KeyboardInterrupt  # as Ctrl-C does in the main process, after one run

    with pytest.raises(KeyboardInterrupt):
        run_grid(cfgs, tiny_data, results_dir=tmp_path, progress=False, plots=False,
                 dashboard_images=False, jobs=2, on_result=interrupt)
    assert not multiprocessing.active_children()
    kept = [r["name"] for r in json.loads((tmp_path / "summary.json").read_text())]
    assert len(kept) == 1 and (tmp_path / "runs" / kept[0] / "result.json").exists()
    # the other worker may have finished its run before it was ended: kept on disk too
    finished = {p.parent.name for p in (tmp_path / "runs").glob("*/result.json")}
    assert set(kept) <= finished
    seen: list[tuple[str, bool]] = []
    run_grid(cfgs, tiny_data, results_dir=tmp_path, progress=False, plots=False,
             dashboard_images=False, on_result=lambda r, s: seen.append((r.name, s)))
    assert len(seen) == len(cfgs) and {name for name, skipped in seen if skipped} == finished


def test_default_jobs_is_one_run_per_core_on_the_cpu():
    for ncores in (1, 2, 3, 8, 16):
        for runs in (1, 2, 30):
            assert default_jobs("cpu", runs, ncores=ncores) == min(ncores, runs)
    assert RUN_THREADS == 1  # so that jobs runs at once use jobs cores


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_jobs_must_be_a_positive_integer(value, capsys):
    with pytest.raises(SystemExit):
        cli.main(["compare", "--synthetic", "--jobs", value])
    assert f"--jobs: {value!r}: use an integer >= 1" in capsys.readouterr().err


def test_a_pickled_dataset_is_made_again_from_its_recipe():
    import pickle

    data = synthetic_dataset(n_train=64, n_test=16, features=8, seed=3)
    assert data.recipe is None  # its normalisation depends on the thread count: sent whole
    made = dataclasses.replace(data, recipe=functools.partial(synthetic_dataset, n_train=64,
                                                              n_test=16, features=8, seed=3))
    blob = pickle.dumps(made)
    assert len(blob) < 1000  # the recipe, not the tensors
    again = pickle.loads(blob)
    assert all(torch.equal(getattr(again, k), getattr(data, k))
               for k in ("x_train", "y_train", "x_test", "y_test"))
