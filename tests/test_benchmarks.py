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
    expected = len(overhead.WORKLOADS) * (len(overhead.SETTINGS) - len(overhead.NOT_IN_SMOKE))
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
