"""A rerun just works (issue 25.6): ``watch(logdir=...)`` on a directory holding a run writes
``<logdir>-2`` (then ``-3``) and says so in one line; ``overwrite=True`` replaces the run;
``resume=True`` continues it (``tests/test_report.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import gradscope
from gradscope.events import runs_in


def _run(logdir: Path, **kw: object) -> gradscope.Monitor:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with gradscope.watch(model, logdir=logdir, summary=False, histogram_every=None,
                         **kw) as mon:  # type: ignore[arg-type]
        for _ in range(2):
            model(torch.randn(4, 4)).sum().backward()
    return mon


def test_a_rerun_writes_beside_the_run_and_says_so_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "mycnn"
    first = _run(base)
    assert first.writer.logdir == base and capsys.readouterr().err == ""
    second = _run(base)
    third = _run(base)
    err = capsys.readouterr().err.splitlines()
    assert second.writer.logdir == tmp_path / "mycnn-2"
    assert third.writer.logdir == tmp_path / "mycnn-3"
    assert err == [
        f"gradscope: {str(base)!r} already holds a gradscope run; this run writes to "
        f"{str(tmp_path / name)!r} (watch(overwrite=True) replaces the old run, resume=True "
        "continues it)" for name in ("mycnn-2", "mycnn-3")]
    for d in ("mycnn", "mycnn-2", "mycnn-3"):  # one run in each
        assert len(runs_in(tmp_path / d)) == 1


def test_overwrite_replaces_the_run_and_leaves_other_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(tmp_path)
    old = sorted(tmp_path.glob("*tfevents*"))
    (tmp_path / "notes.txt").write_text("mine")
    mon = _run(tmp_path, overwrite=True)
    assert mon.writer.logdir == tmp_path
    new = sorted(tmp_path.glob("*tfevents*"))
    assert len(runs_in(tmp_path)) == 1 and not set(old) & set(new)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert "replaced (1 event file deleted, overwrite=True)" in capsys.readouterr().err
    assert not (tmp_path.parent / f"{tmp_path.name}-2").exists()


def test_overwrite_on_a_new_directory_says_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tmp_path / "new", overwrite=True).writer.logdir == tmp_path / "new"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("kw", "match"), [
    ({"overwrite": True}, r"watch\(overwrite=True\) replaces .*pass logdir too"),
    ({"overwrite": True, "resume": True, "logdir": "x"}, r"pass one of them"),
    ({"overwrite": 1, "logdir": "x"}, r"watch\(overwrite=1\): pass True or False"),
], ids=["no-logdir", "with-resume", "not-bool"])
def test_overwrite_is_checked(kw: dict[str, object], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        gradscope.watch(nn.Linear(2, 2), **kw)  # type: ignore[arg-type]
