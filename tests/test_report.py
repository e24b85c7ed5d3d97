"""``gradscope report``: runs read back with TensorBoard's reader, each format, bad paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
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


def test_old_runs_with_a_layer_index_but_no_marker(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Files of earlier versions (a layer index, no run marker) are still read."""
    from gradscope.writers.layout import LAYERS_TAG

    # The layer index as earlier versions wrote it: JSON lines in a code block, no table.
    old_index = ('gradscope layer index (read by `gradscope report`):\n\n    {"name": "relu1", '
                 '"kind": "activation", "order": 0, "type": "ReLU", "family": "relu", '
                 '"module": null, "call": 0, "shape": null}')
    with SummaryWriter(str(tmp_path / "old")) as w:
        w.add_text(LAYERS_TAG, old_index, 0)
        for step in range(4):
            w.add_scalar("grad_norm/fc1", 1e-7, step)
            w.add_scalar("grad_norm/fc2", 1.0, step)
            w.add_scalar("dead_units/relu1", 0.8, step)
            w.add_scalar("loss/train", 2.0, step)
            # run-level tags, as earlier versions and this one write them: neither is a layer
            w.add_scalar("run/worst_saturation", 0.9, step)
            w.add_scalar("0_health/min_update_ratio_log10", -3.0, step)
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


# ------------------------------------------------------------ robustness
def _ours(logdir: Path, steps: int = 6, value: float = 0.5) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with gradscope.watch(model, logdir=logdir, flush_every=2, summary=False,
                         histogram_every=None):
        for _ in range(steps):
            model(torch.randn(4, 4)).sum().backward()


def _event_file(d: Path) -> Path:
    (path,) = sorted(d.glob("*tfevents*"))
    return path


def test_an_event_file_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _ours(tmp_path / "a")
    code, out, err = _report(capsys, _event_file(tmp_path / "a"), "--format", "json")
    assert code == 0 and err == ""
    (r,) = json.loads(out)["runs"]
    assert r["step"] == 5 and [la["name"] for la in r["layers"]] == ["0", "2"]


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "garbage"])
def test_damaged_files_warn_with_how_much_was_read(tmp_path: Path, damage: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A cut-short or corrupt file is read up to the damage, said on stderr; never a traceback."""
    _ours(tmp_path, steps=10)
    path = _event_file(tmp_path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "corrupt":
        cut = len(data) // 3
        path.write_bytes(data[:cut] + bytes(b ^ 0xFF for b in data[cut:cut + 8]) + data[cut + 8:])
    else:
        path.write_bytes(data + b"\x00\x01garbage")
    code, out, err = _report(capsys, tmp_path, "--format", "json")
    assert code == 0
    assert f"warning: {path}:" in err and "the rest is ignored" in err
    assert ("truncated" in err) if damage != "corrupt" else ("checksum mismatch" in err)
    assert f"of {path.stat().st_size:,} bytes" in err
    (r,) = json.loads(out)["runs"]
    if damage == "garbage":
        assert r["step"] == 9  # everything before the garbage
    else:
        assert 0 < r["step"] < 9


def test_not_an_event_file_and_a_foreign_run_exit_2(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Another tool's tags that look like ours are not taken for a gradscope run."""
    with SummaryWriter(str(tmp_path / "rl")) as w:
        for step in range(3):
            w.add_scalar("std/returns", 1.0, step)
            w.add_scalar("mean/returns", 1.0, step)
            w.add_scalar("grad_norm/total", 1.0, step)
    code, out, err = _report(capsys, tmp_path)
    assert code == 2 and "no gradscope runs" in err and out == ""
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    code, out, err = _report(capsys, junk)
    assert code == 2 and "no gradscope runs" in err and "Traceback" not in err


def test_two_runs_in_one_directory_are_never_merged(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs in one directory (watch() refuses that; another writer may not) are two runs."""
    from gradscope.events import RUN_TAG, marker_text

    for run_id, value in (("run1", 1.0), ("run2", 2.0)):
        with SummaryWriter(str(tmp_path), filename_suffix=run_id) as w:
            w.add_text(RUN_TAG, marker_text(run_id), 0)
            for step in range(3):
                w.add_scalar("grad_norm/fc1", value, step)
    code, out, _ = _report(capsys, tmp_path, "--format", "json")
    assert code == 0
    runs = {r["name"]: r for r in json.loads(out)["runs"]}
    assert set(runs) == {".#run1", ".#run2"}
    assert {name: [la["metrics"]["grad_norm"] for la in r["layers"]]
            for name, r in runs.items()} == {".#run1": [1.0], ".#run2": [2.0]}


def test_watch_resumes_a_run_on_purpose(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _ours(tmp_path, steps=4)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with gradscope.watch(model, logdir=tmp_path, resume=True, start_step=4, flush_every=2,
                         summary=False, histogram_every=None):
        for _ in range(4):
            model(torch.randn(4, 4)).sum().backward()
    code, out, _ = _report(capsys, tmp_path, "--format", "json")
    (r,) = json.loads(out)["runs"]  # one run, continued
    assert code == 0 and r["name"] == "." and r["step"] == 7


def test_resume_refuses_a_different_model_and_continues_at_the_next_step(
        tmp_path: Path) -> None:
    """Issue 23.5: a run of an 8-16-2 ReLU net, then an 8-64-5 sigmoid net resumed into it
    (refused, nothing written), then the same net resumed: steps 6.. follow the run's
    0..5, and a start_step over them is refused."""
    def net(width: int = 8, out: int = 2, act: type[nn.Module] = nn.ReLU) -> nn.Module:
        return nn.Sequential(nn.Linear(4, width), act(), nn.Linear(width, out))

    _ours(tmp_path, steps=6)
    files = sorted(tmp_path.glob("*tfevents*"))
    with pytest.raises(ValueError, match=r"written by a different model: 1 is a ReLU there, "
                       r"a Sigmoid here; 0.weight has shape \(8, 4\) there, \(64, 4\) here"):
        gradscope.watch(net(64, 5, nn.Sigmoid), logdir=tmp_path, resume=True)
    with pytest.raises(ValueError, match=r"parameter 2.weight \(2, 8\) there, none here"):
        gradscope.watch(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), logdir=tmp_path, resume=True)
    with pytest.raises(ValueError, match=r"start_step=3: the run already has steps up to 5"):
        gradscope.watch(net(), logdir=tmp_path, resume=True, start_step=3)
    assert sorted(tmp_path.glob("*tfevents*")) == files  # refused before writing anything
    model = net()
    with gradscope.watch(model, logdir=tmp_path, resume=True, flush_every=2, summary=False,
                         histogram_every=None) as mon:
        for _ in range(3):
            model(torch.randn(4, 4)).sum().backward()
    assert mon.history.steps() == [6, 7, 8]
    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    assert [e.step for e in ea.Scalars("grad_norm/0")] == list(range(9))  # none written twice


def test_an_unreadable_or_cut_event_file_is_named_with_what_is_wrong(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23.8: an event file that cannot be opened (tests run as root: ``open`` is made to
    refuse it) is named with the error, not "no gradscope runs"; a file cut to 2% (its
    marker kept, its values lost) says the run holds no value that could be read."""
    import builtins

    from gradscope import events

    _ours(tmp_path / "cut", steps=40)
    path = _event_file(tmp_path / "cut")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 50])
    code, _, err = _report(capsys, tmp_path / "cut")
    assert code == 2 and "cut short" in err
    assert "hold" in err and "no value that could be read" in err
    assert "no TensorBoard event file starting" not in err

    _ours(tmp_path / "locked")
    locked = _event_file(tmp_path / "locked")

    def refuse(file: object, *args: object, **kwargs: object) -> object:
        if Path(str(file)) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(events, "open", refuse, raising=False)
    code, _, err = _report(capsys, tmp_path / "locked")
    assert code == 2
    assert f"{locked}: cannot be opened (PermissionError: Permission denied)" in err
