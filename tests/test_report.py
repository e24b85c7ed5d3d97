"""``gradscope report``: runs read back with TensorBoard's reader, each format, bad paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import gradscope
from gradscope.cli import main
from gradscope.report import report


def _mlp(act: type[nn.Module], init: str) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    d = 8
    for _ in range(3):
        lin = nn.Linear(d, 16)
        if init == "he":
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        else:
            nn.init.normal_(lin.weight, 0.0, 3.0)
        layers += [lin, act()]
        d = 16
    return nn.Sequential(*layers, nn.Linear(16, 4))


def _write_run(logdir: Path, act: type[nn.Module], init: str, steps: int = 10) -> gradscope.Monitor:
    model = _mlp(act, init)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    with gradscope.watch(model, optimizer=opt, logdir=logdir, flush_every=5, summary=False,
                         histogram_every=None) as mon:
        for _ in range(steps):
            opt.zero_grad()
            x = torch.randn(32, 8, generator=gen)
            y = torch.randint(0, 4, (32,), generator=gen)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        mon.writer.summary_writer.add_scalar("loss/train", 1.0, steps - 1)  # type: ignore[union-attr]
    return mon


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, gradscope.Monitor]]:
    root = tmp_path_factory.mktemp("runs")
    mons = {"relu_he": _write_run(root / "relu_he", nn.ReLU, "he"),
            "sigmoid_normal": _write_run(root / "sigmoid_normal", nn.Sigmoid, "normal")}
    return root, mons


def _report(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["report", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_matches_the_monitor_history(runs: tuple[Path, dict[str, gradscope.Monitor]],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    root, mons = runs
    code, out, _ = _report(capsys, root, "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert [r["name"] for r in data["runs"]] == ["relu_he", "sigmoid_normal"]
    for r in data["runs"]:
        h = mons[r["name"]].history
        assert r["step"] == 9
        assert [a["name"] for a in r["activations"]] == h.layers("activation")
        assert [la["name"] for la in r["layers"]] == h.layers("layer")
        for la in r["layers"]:
            for metric in ("grad_norm", "update_ratio"):
                assert la["metrics"][metric] == pytest.approx(h.value(la["name"], metric), rel=1e-6)
        assert [f["rule"] for f in r["findings"]] == [f.rule for f in mons[r["name"]].findings()]
    sig = data["runs"][1]
    assert sig["activations"][0]["family"] == "sigmoid"
    assert "saturation" in {f["rule"] for f in sig["findings"]}
    # run-level health at the report step, as the TensorBoard writer defines it
    h = mons["sigmoid_normal"].history
    assert sig["health"]["worst_saturation"] == pytest.approx(
        max(h.last("saturation", "activation").values()), rel=1e-6)
    assert sig["health"]["max_update_ratio"] == pytest.approx(
        max(h.last("update_ratio", "layer").values()), rel=1e-6)
    assert sorted(data["ranking"]) == ["relu_he", "sigmoid_normal"]


def test_text_report_side_by_side(runs: tuple[Path, dict[str, gradscope.Monitor]],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    root, mons = runs
    code, out, _ = _report(capsys, root)
    assert code == 0
    assert "== run relu_he at step 9" in out and "== run sigmoid_normal at step 9" in out
    # A ranked table first, worst run (the most warnings) first; the detail in that order.
    ranked = out.split("\n== run ")[0].splitlines()
    assert ranked[0].startswith("== 2 runs ranked, worst first")
    assert ranked[1].split()[:4] == ["run", "err", "warn", "info"]
    counts = {name: tuple(-sum(f.severity == s for f in m.findings())
                          for s in ("error", "warning", "info")) for name, m in mons.items()}
    worst = min(counts, key=lambda n: (counts[n], n))
    assert ranked[3].split()[0] == worst
    assert out.index("\n== run ") == out.index(f"\n== run {worst} ")
    assert "activation call-sites:" in out and "parameterised layers:" in out
    assert "== runs side by side" in out
    g = mons["relu_he"].history.value("0", "grad_norm")
    assert f"{g:.3g}" in out
    assert "saturation" in out.split("== run sigmoid_normal")[1].split("findings:")[1]
    assert "loss" not in out  # the user's own scalars are not ours


def test_markdown_report_and_step(runs: tuple[Path, dict[str, gradscope.Monitor]],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    root, mons = runs
    code, out, _ = _report(capsys, root / "relu_he", "--format", "markdown", "--step", "4")
    assert code == 0
    assert out.startswith("## run `.` at step 4 (steps 0..4)")
    assert "| call-site | type |" in out and "|---|---|---:|" in out
    g = mons["relu_he"].history.value("2", "grad_norm", step=4)
    assert f"| 2 | Linear | {g:.3g} |" in out
    assert "runs side by side" not in out


def test_old_runs_without_layer_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with SummaryWriter(str(tmp_path / "old")) as w:
        for step in range(4):
            w.add_scalar("grad_norm/fc1", 1e-7, step)
            w.add_scalar("grad_norm/fc2", 1.0, step)
            w.add_scalar("dead_units/relu1", 0.8, step)
            w.add_scalar("loss/train", 2.0, step)
    code, out, _ = _report(capsys, tmp_path, "--format", "json")
    assert code == 0
    (r,) = json.loads(out)["runs"]
    assert [a["name"] for a in r["activations"]] == ["relu1"]
    assert [la["name"] for la in r["layers"]] == ["fc1", "fc2"]
    assert {f["rule"] for f in r["findings"]} == {"dead_units", "vanishing_gradients"}


def _foreign_run(path: Path) -> None:
    """A TensorBoard run with only someone else's scalars."""
    with SummaryWriter(str(path)) as w:
        w.add_scalar("loss/train", 1.0, 0)


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "no gradscope runs"),
    (lambda p: _foreign_run(p / "other") or p, "no gradscope runs"),
], ids=["missing", "empty", "not-ours"])
def test_bad_paths_exit_2(tmp_path: Path, setup: object, message: str,
                          capsys: pytest.CaptureFixture[str]) -> None:
    path = setup(tmp_path)  # type: ignore[operator]
    code, out, err = _report(capsys, path)
    assert code == 2 and out == ""
    assert message in err and str(path) in err


def test_negative_step_exit_2(runs: tuple[Path, dict[str, gradscope.Monitor]]) -> None:
    import io

    err = io.StringIO()
    assert report(runs[0], step=-1, out=io.StringIO(), err=err) == 2
    assert "--step -1" in err.getvalue()
