"""Several processes: DDP under torchrun (2 ranks, gloo, CPU), combined once per flush."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from gradscope.distributed import combine_masks, combine_values
from gradscope.history import History
from gradscope.metrics import METRICS
from gradscope.reductions import COMBINE, combine_op
from tests import distributed_worker as worker

ROOT = Path(__file__).resolve().parents[1]
needs_torchrun = pytest.mark.skipif(
    shutil.which("torchrun") is None or not torch.distributed.is_available(),
    reason="needs torch.distributed and torchrun")


def torchrun(args: list[str], cwd: Path, timeout: int = 240, nproc: int = 2
             ) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node NPROC ARGS`` with gradscope importable and one thread per rank."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], str]:
    out = tmp_path_factory.mktemp("ddp")
    proc = torchrun([str(ROOT / "tests" / "distributed_worker.py"), str(out)], cwd=out)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(worker.WORLD)]
    events = list((out / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1  # only rank 0 writes TensorBoard
    return ranks, proc.stderr + proc.stdout


def strip(h: History) -> dict[tuple[str, str], dict[int, float]]:
    """Every series, its layer named as in the unwrapped model (DDP adds ``module.``)."""
    return {(layer.removeprefix("module."), m): dict(zip(*h.series(layer, m)))
            for layer in h.layers() for m in h.metrics(layer)}


@needs_torchrun
def test_ddp_statistics_equal_one_process_on_the_union(ddp_run: Any) -> None:
    ranks, _ = ddp_run
    union = strip(worker.train(worker.build(), worker.global_batches(), summary=False).history)
    combined = strip(History.from_dict(ranks[0]["history"]))
    assert strip(History.from_dict(ranks[1]["history"])) == combined  # every rank: the same history
    assert combined.keys() == union.keys()
    checked = set()
    for (layer, metric), series in union.items():
        got = combined[(layer, metric)]
        assert got.keys() == series.keys() == set(range(worker.STEPS)), (layer, metric)
        for step, want in series.items():
            assert got[step] == pytest.approx(want, rel=1e-4, abs=1e-6), (layer, metric, step)
        checked.add(metric)
    assert {"dead_units", "dead_units_window", "saturation", "mean", "std", "min", "max",
            "grad_out_norm", "grad_out_rms", "grad_norm", "update_ratio"} <= checked
    # the combination matters: rank 0's shard alone has other dead units and saturation
    shard = strip(worker.train(worker.build(), [(x[0::2], y[0::2]) for x, y in
                                                 worker.global_batches()], summary=False).history)
    assert shard[("1", "dead_units")][0] != union[("1", "dead_units")][0]
    assert shard[("3", "saturation")][0] != union[("3", "saturation")][0]


@needs_torchrun
def test_one_collective_per_flush_and_only_rank_0_writes(ddp_run: Any) -> None:
    ranks, output = ddp_run
    flushes = math.ceil(worker.STEPS / worker.FLUSH_EVERY)  # steps 3, 6 and the close
    for r in ranks:
        assert (r["flushes"], r["collectives"]) == (flushes, flushes)
    assert [(r["writes"], r["writer"]) for r in ranks] == [(True, True), (False, False)]
    assert output.count("gradscope: 1 finding") + output.count("gradscope: no findings") == 1
    assert output.count("activation call-sites captured") == 1  # the coverage line: rank 0's


@needs_torchrun
def test_parameter_statistics_are_identical_on_every_rank(ddp_run: Any) -> None:
    """Read after DDP's all-reduce: rank 1's local parameter values are rank 0's, not combined."""
    ranks, _ = ddp_run
    h0, h1 = (History.from_dict(r["history"]) for r in ranks)
    for layer in h0.layers("parameter") + h0.layers("layer"):
        for m in h0.metrics(layer):
            assert h0.series(layer, m) == h1.series(layer, m)


@needs_torchrun
def test_fsdp1_and_a_missing_optimizer_are_refused_with_clear_messages(ddp_run: Any) -> None:
    ranks, _ = ddp_run
    for r in ranks:  # FSDP2 (fully_shard) is watched: tests/test_sharded.py
        assert "is FullyShardedDataParallel (FSDP1), whose flat parameters" in r["fsdp"]
        assert "fully_shard" in r["fsdp"]
        # without an optimizer parameter gradients would be read before DDP's all-reduce
        assert "under torch.distributed (2 ranks) pass optimizer=..." in r["no_optimizer"]


def test_every_reduction_declares_a_combine_op() -> None:
    from gradscope.reductions import ACTIVATION_REDUCTIONS, BACKPROP_REDUCTIONS

    for name in [*ACTIVATION_REDUCTIONS, *BACKPROP_REDUCTIONS, "idle_units"]:
        assert combine_op(name) in ("sum", "min", "max", "grad", "mean", "centered", "any", "all")
    needed = {n for m in METRICS.values() if m.kind in ("activation", "window", "backprop")
              for n in m.needs}
    assert needed <= set(COMBINE)


@pytest.mark.parametrize("seed", range(5))
def test_combined_moments_equal_the_union(seed: int) -> None:
    """Sums, centred sums of squares, fractions and masks from shards of unequal sizes."""
    g = torch.Generator().manual_seed(seed)
    shards = [torch.randn(n, 5, generator=g, dtype=torch.float64) + i
              for i, n in enumerate((3, 7, 1))]
    union = torch.cat(shards)
    numels = [s.numel() for s in shards]
    sums = [s.sum().item() for s in shards]
    ssq = [((s - s.mean()) ** 2).sum().item() for s in shards]
    assert combine_values("sum", sums, numels) == pytest.approx(union.sum().item())
    assert combine_values("centered", ssq, numels, sums) == pytest.approx(
        ((union - union.mean()) ** 2).sum().item())
    fracs = [(s > 0.5).double().mean().item() for s in shards]
    assert combine_values("mean", fracs, numels) == pytest.approx((union > 0.5).double().mean().item())
    assert combine_values("min", [s.min().item() for s in shards], numels) == union.min().item()
    on = [(s > 0).any(0).double().tolist() for s in shards]
    assert combine_masks("any", on) == (union > 0).any(0).sum().item()
    assert combine_masks("all", on) == sum(all(col) for col in zip(*on))
    assert math.isnan(combine_values("max", [1.0, math.nan], [1, 1]))
    assert combine_values("sum", [1.0, math.nan], [1, 0]) == 1.0  # a rank with no element is left out


@needs_torchrun
def test_compare_runs_data_parallel_under_torchrun(tmp_path: Path) -> None:
    """Two ranks, each a shard of every batch: the same runs as one process (no BatchNorm)."""
    from gradscope.cli import main

    grid = ["compare", "--synthetic", "--activations", "relu", "tanh", "--inits", "he",
            "--batchnorm", "off", "--depth", "2", "--width", "32", "--steps", "30", "--eval-every", "10",
            "--monitor-every", "1", "--no-plots", "--no-progress", "--no-dashboard-images"]
    proc = torchrun(["-m", "gradscope", *grid, "--jobs", "2", "--results-dir", str(tmp_path / "ddp")],
                    cwd=tmp_path)
    assert proc.stdout.count("summary, plots and TensorBoard runs in") == 1  # rank 0 prints, once
    assert proc.stdout.count("every run: ") == 1  # the table's shared axes, once
    assert proc.stderr.count("--jobs 2 ignored under torchrun") == 1  # rank 0 says it, once
    assert main([*grid, "--jobs", "1", "--results-dir", str(tmp_path / "one")]) == 0
    ddp, one = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("ddp", "one"))
    assert [r["name"] for r in ddp] == [r["name"] for r in one]
    for a, b in zip(ddp, one):
        for key in ("test_acc", "final_train_loss", "grad_ratio", "peak_dead", "peak_saturation"):
            if b[key] is None:
                assert a[key] is None
            else:
                assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), (a["name"], key)
        events = list((tmp_path / "ddp" / "runs" / a["name"]).glob("events.out.tfevents.*"))
        assert len(events) == 1


@needs_torchrun
@pytest.mark.parametrize("mode", ["open", "open", "open", "destroy"],
                         ids=["open-1", "open-2", "open-3", "destroy"])
def test_a_careless_user_script_exits_cleanly_on_every_rank(tmp_path: Path, mode: str) -> None:
    """No ``mon.close()``, no ``destroy_process_group()``: every rank still exits 0.

    Before the monitors were closed at exit, the open monitor's last flush ran its
    collective during interpreter finalization and a rank aborted (SIGABRT, "terminate
    called ...") in 14 of 20 runs; three runs make such a regression all but certain to
    show (``benchmarks/torchrun_exit.py`` repeats it 20 times, and ``.ci/run`` 4 times).
    """
    proc = torchrun([str(ROOT / "tests" / "torchrun_user_script.py"), mode], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert "terminate called" not in out
    assert proc.stdout.count(" done") == 2, out[-2000:]  # both ranks ran to the end
    if mode == "destroy":  # the last flush cannot be combined: said, and each rank keeps its own
        assert out.count("the process group was destroyed before this flush") == 2
