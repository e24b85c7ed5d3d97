"""The overhead benchmark's ``--smoke`` mode: every workload and setting runs, outputs are well formed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"


@pytest.fixture(scope="module")
def overhead():
    spec = importlib.util.spec_from_file_location("overhead_bench", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_smoke_writes_well_formed_outputs(overhead, tmp_path: Path) -> None:
    results = overhead.main(["--smoke", "--no-cuda", "--out", str(tmp_path)])
    expected = len(overhead.WORKLOADS) * len(overhead.SETTINGS)
    assert len(results) == expected
    overhead.check_outputs(tmp_path, expected)  # raises on a malformed file
    data = json.loads((tmp_path / "overhead.json").read_text())
    assert data["machine"]["torch"]
    assert {r["workload"] for r in data["results"]} == {w.name for w in overhead.WORKLOADS}


def test_check_outputs_rejects_a_broken_table(overhead, tmp_path: Path) -> None:
    overhead.main(["--smoke", "--no-cuda", "--out", str(tmp_path),
                   "--workloads", "mlp5x256_relu", "--settings", "every1"])
    md = tmp_path / "overhead.md"
    md.write_text(md.read_text().replace("| every1 |", "| every1 | extra |"))
    with pytest.raises(ValueError, match="malformed"):
        overhead.check_outputs(tmp_path, 1)


def test_kernel_counts_find_no_host_read_in_gradscope_hooks() -> None:
    """benchmarks/kernel_counts.py on the accelerator path: gradscope reads nothing before the flush."""
    spec = importlib.util.spec_from_file_location(
        "kernel_counts_bench", _SCRIPT.parent / "kernel_counts.py")
    kc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kc)
    from gradscope import stats
    real = (stats.host_readable, stats.uses_scratch, stats.cpu_kernels)
    families = ["ReLU", "GELU", "Softmax"]  # a piecewise, an input-reading and an eager family
    rows = kc.measure(depth=2, width=32, batch=8, families=families)
    assert (stats.host_readable, stats.uses_scratch, stats.cpu_kernels) == real  # restored
    assert {r["family"] for r in rows} == set(families)
    for r in rows:
        if r["approach"].startswith("gradscope fused"):  # Triton kernels, interpreted
            assert r["host_reads_outside_flush"] == 0, r
            if r["approach"] == "gradscope fused" and r["family"] != "Softmax":
                assert r["triton_launches"]["forward"] == r["sites"] + 1, r  # + the outputs
                assert r["kernels_per_call_site_step"] <= 3 + 1 / r["sites"], r
        elif r["approach"] == "gradscope":
            assert r["host_reads_outside_flush"] == 0, r
            assert r["kernels_flush"] >= 1  # the step results are put together there
            assert r["kernels_per_activation_hook"] > 0 and r["kernels_per_backprop_hook"] > 0
        elif r["approach"] == "gradscope, unsampled step":  # the every-step NaN/Inf check
            assert r["host_reads_outside_flush"] == 0, r
            assert r["kernels_per_backprop_hook"] == 0  # gradients: checked at the parameters
            assert 0 < r["kernels_per_activation_hook"] <= 3, r  # min/max of the output
            assert 0 < r["kernels_optimizer"] <= 8, r  # one fused max-abs over the biases
        else:  # .item() hooks: a read per statistic and per parameter
            assert r["host_reads_outside_flush"] == 3 * r["sites"] + r["params"], r
    assert "| ReLU | gradscope |" in kc.table(rows)


def test_gpu_check_smoke_runs_the_gpu_benchmark_and_counts(tmp_path: Path) -> None:
    """scripts/gpu_check.sh --smoke (what a GPU session runs, at CPU size): benchmarks/gpu.py
    --smoke writes well-formed outputs for every workload and setting, the kernel counts are
    written, the CUDA tests are collected (and skip without a GPU)."""
    import os
    import subprocess
    root = _SCRIPT.parents[1]
    env = dict(os.environ, OUT=str(tmp_path), PYTHONPATH=str(root))
    proc = subprocess.run(["bash", str(root / "scripts" / "gpu_check.sh"), "--smoke"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout, (tmp_path / "status.txt").read_text())
    spec = importlib.util.spec_from_file_location("gpu_bench", _SCRIPT.parent / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = gpu  # dataclasses look their module up there
    spec.loader.exec_module(gpu)
    gpu.check_outputs(tmp_path / "bench", len(gpu.WORKLOADS) * len(gpu.SETTINGS))
    rows = json.loads((tmp_path / "kernel_counts.json").read_text())
    assert {r["approach"] for r in rows} >= {"gradscope", "gradscope fused"}
    tests = (tmp_path / "tests_cuda.txt").read_text()
    assert "skipped" in tests or "passed" in tests, tests


def test_findings_story_tells_each_seed(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/findings_story.py at tiny size, on the synthetic data."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "findings_story.py"
    spec = importlib.util.spec_from_file_location("findings_story", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--steps", "20", "--seeds", "0", "1", "--synthetic"])
    out = capsys.readouterr().out
    assert "20 steps, synthetic" in out
    assert out.count("test accuracy") == 2 and "of 20 steps" in out
