"""Where a rerun writes: ``watch(logdir="runs/mycnn")`` on a directory that already holds a run.

Rerunning a script is the most common thing anyone does, and TensorBoard merges two
runs written into one directory. So :func:`run_dir` picks the directory a new run
writes to:

* ``logdir`` itself when it holds no gradscope run (or with ``resume=True``, which
  continues the run there: :mod:`gradscope.writers.resume`);
* with ``overwrite=True``, ``logdir`` after deleting the event files of the gradscope
  runs in it (other files are left);
* otherwise the first of ``logdir-2``, ``logdir-3``, ... that holds no gradscope run,
  said in one line on stderr.

Example:
    >>> import io, tempfile
    >>> from pathlib import Path
    >>> from torch.utils.tensorboard import SummaryWriter
    >>> from gradscope.events import RUN_TAG, marker_text
    >>> d = Path(tempfile.mkdtemp()) / "mycnn"
    >>> run_dir(d, overwrite=False, resume=False) == d  # nothing there yet
    True
    >>> with SummaryWriter(str(d)) as w:
    ...     w.add_text(RUN_TAG, marker_text("abc"), 0)
    >>> said = io.StringIO()
    >>> run_dir(d, overwrite=False, resume=False, err=said).name
    'mycnn-2'
    >>> "already holds a gradscope run" in said.getvalue()
    True
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, TextIO, Union

from gradscope.events import runs_in

__all__ = ["MAX_SUFFIX", "run_dir"]

#: The largest suffix tried (``logdir-2`` .. ``logdir-9999``) before giving up.
MAX_SUFFIX = 9999


def run_dir(logdir: Union[str, os.PathLike], *, overwrite: bool, resume: bool,
            err: Optional[TextIO] = None) -> Path:
    """The directory a new run given ``logdir`` writes to (see the module's docstring).

    Raises:
        ValueError: an old run's event file cannot be deleted (``overwrite=True``), or
            ``logdir-2`` .. ``logdir-9999`` all hold runs.
    """
    path = Path(logdir).expanduser()
    existing = runs_in(path) if path.is_dir() else {}
    if resume or not existing:
        return path
    if overwrite:
        files = sorted(f for fs in existing.values() for f in fs)
        for f in files:
            try:
                f.unlink()
            except OSError as e:
                raise ValueError(
                    f"watch(logdir={str(logdir)!r}, overwrite=True): cannot delete the old "
                    f"run's {f.name} ({e.strerror or e}); delete it yourself or pass another "
                    "logdir") from None
        _say(err, f"gradscope: {str(logdir)!r} held a run; replaced ({len(files)} event "
                  f"file{'s' if len(files) != 1 else ''} deleted, overwrite=True)")
        return path
    for n in range(2, MAX_SUFFIX + 1):
        candidate = path.with_name(f"{path.name}-{n}")
        if not (candidate.is_dir() and runs_in(candidate)) and not candidate.is_file():
            _say(err, f"gradscope: {str(logdir)!r} already holds a gradscope run; this run "
                      f"writes to {str(candidate)!r} (watch(overwrite=True) replaces the old "
                      "run, resume=True continues it)")
            return candidate
    raise ValueError(f"watch(logdir={str(logdir)!r}): {path.name}-2 .. {path.name}-{MAX_SUFFIX} "
                     "all hold runs; pass a new directory, or overwrite=True")


def _say(err: Optional[TextIO], line: str) -> None:
    print(line, file=err if err is not None else sys.stderr)
