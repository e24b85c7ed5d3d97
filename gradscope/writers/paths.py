"""Paths the user gives (a log, data or results directory, a run to report): checked before
any work, with one phrase that says what is wrong.

Example:
    >>> import pathlib, tempfile
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "afile"
    >>> _ = f.write_text("")
    >>> dir_problem(f / "sub").endswith("is a file, not a directory")
    True
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

__all__ = ["dir_problem", "read_problem"]


def _file_above(path: Path) -> Optional[str]:
    """What is wrong when ``path`` or a directory above it is a file."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or existing.is_dir():
        return None
    if existing == path:
        return "it is a file, not a directory"
    return f"{str(existing)!r} is a file, not a directory"


def dir_problem(path: Path) -> Optional[str]:
    """Why ``path`` cannot be a directory to write into, or ``None`` (it then exists: created
    with its parents if it was missing, and a file was written and removed there)."""
    above = _file_above(path)
    if above is not None:
        return above
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".gradscope-write-test-"):
            pass
    except OSError as err:
        return f"it cannot be written ({type(err).__name__}: {err.strerror or err})"
    return None


def read_problem(path: Path) -> Optional[str]:
    """Why ``path`` (a file, or a directory to list) cannot be read, or ``None``."""
    if not path.exists():
        above = _file_above(path)
        return above if above is not None else "it does not exist"
    try:
        if path.is_dir():
            os.listdir(path)
        else:
            with open(path, "rb"):
                pass
    except OSError as err:
        return f"it cannot be read ({type(err).__name__}: {err.strerror or err})"
    return None
