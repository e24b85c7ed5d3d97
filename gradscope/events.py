"""Reading TensorBoard event files: checked record by record, runs told apart by a marker.

An event file is a sequence of records (length, checksum, an ``Event`` proto,
checksum). :func:`read_events` reads one, checking every checksum, and stops at
the first record that is cut short (a run still being written, or killed) or
corrupt; its :class:`FileRead` says how much was read and why it stopped, so a
reader can warn instead of showing a short run as if it were whole.

Every gradscope TensorBoard run starts with a **marker**, the text
``gradscope/run`` (:data:`RUN_TAG`): a run id, the gradscope version and the
start time. It is how ``gradscope report`` recognises gradscope runs (not by the
shape of their tags, which other tools share) and tells two runs written into
one directory apart, and how ``watch(logdir=...)`` refuses a directory that
already holds a run. Files of earlier versions, which have no marker, are
recognised by the layer index (``gradscope/layers``), one run per file.

Example:
    >>> import tempfile, pathlib
    >>> from torch.utils.tensorboard import SummaryWriter
    >>> d = tempfile.mkdtemp()
    >>> with SummaryWriter(d) as w:
    ...     w.add_text(RUN_TAG, marker_text("abc123"), 0)
    ...     w.add_scalar("grad_norm/fc1", 0.5, 0)
    >>> path = next(pathlib.Path(d).glob("*tfevents*"))
    >>> read_marker(path)["run"]
    'abc123'
    >>> status = FileRead(path)
    >>> [(s.step, s.tag, s.value) for s in scalars(read_events(path, status))]
    [(0, 'grad_norm/fc1', 0.5)]
    >>> status.problem is None and status.read == status.size
    True
"""

from __future__ import annotations

import json
import struct
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional

from gradscope._version import __version__

__all__ = ["LEGACY_TAG", "RUN_TAG", "FileRead", "Scalar", "claim_run", "event_files",
           "latest_run", "marker_text", "read_events", "read_marker", "run_progress", "runs_in",
           "scalars", "texts"]

#: Text tag of the run marker (written first by every gradscope TensorBoard writer).
RUN_TAG = "gradscope/run"
#: Text tag of the layer index, which runs of earlier versions have instead of a marker.
LEGACY_TAG = "gradscope/layers"
#: How many events :func:`read_marker` reads at most looking for the marker.
MARKER_EVENTS = 200

_TEXT_SUFFIX = "/text_summary"  # SummaryWriter.add_text appends it to the tag


@dataclass
class FileRead:
    """How much of one event file was read, and why reading stopped early (if it did)."""

    path: Path
    size: int = -1
    read: int = 0  # bytes of complete, checked records
    events: int = 0
    last_step: Optional[int] = None
    problem: Optional[str] = None

    def __post_init__(self) -> None:
        if self.size < 0:
            try:
                self.size = self.path.stat().st_size
            except OSError:
                self.size = 0

    def describe(self) -> str:
        """One line: what was read and what was not."""
        upto = f", up to step {self.last_step}" if self.last_step is not None else ""
        return (f"{self.path}: {self.problem}; read {self.events} events ({self.read:,} of "
                f"{self.size:,} bytes{upto}), the rest is ignored")


class Scalar(NamedTuple):
    """One scalar event."""

    step: int
    tag: str
    value: float


def _crc(data: bytes) -> int:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    return int(masked_crc32c(data))


def read_events(path: Path, status: Optional[FileRead] = None,
                limit: Optional[int] = None, start: int = 0) -> Iterator[Any]:
    """The ``Event`` protos of one file, in order; stops at a cut-short or corrupt record.

    ``status`` (a :class:`FileRead`) is updated as records are read; its
    ``problem`` says why reading stopped before the end of the file, if it did.
    ``limit``: stop after this many events (no problem is reported then).
    ``start``: the byte offset of a record to start at.
    """
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto.event_pb2 import Event

    st = status if status is not None else FileRead(path)
    try:
        f = open(path, "rb")
    except OSError as err:
        st.problem = f"cannot be opened ({type(err).__name__}: {err.strerror or err})"
        return
    with f:
        if start:
            f.seek(start)
            st.read = start
        while limit is None or st.events < limit:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                st.problem = "cut short in a record header (truncated)"
                return
            (length,), (crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
            if _crc(header[:8]) != crc:
                st.problem = f"corrupt record header at byte {st.read:,} (checksum mismatch)"
                return
            data, footer = f.read(length), f.read(4)
            if len(data) < length or len(footer) < 4:
                st.problem = "cut short in a record (truncated)"
                return
            if _crc(data) != struct.unpack("<I", footer)[0]:
                st.problem = f"corrupt record at byte {st.read:,} (checksum mismatch)"
                return
            try:
                event = Event.FromString(data)
            except DecodeError:
                st.problem = f"unreadable event at byte {st.read:,}"
                return
            st.read += 12 + length + 4
            st.events += 1
            if event.step or st.last_step is None:
                st.last_step = max(event.step, st.last_step or 0)
            yield event


def scalars(events: Iterable[Any]) -> Iterator[Scalar]:
    """The scalar values among ``events`` (``simple_value`` or scalar tensors)."""
    for event in events:
        if not event.HasField("summary"):
            continue
        for v in event.summary.value:
            kind = v.WhichOneof("value")
            if kind == "simple_value":
                yield Scalar(event.step, v.tag, float(v.simple_value))
            elif kind == "tensor" and v.metadata.plugin_data.plugin_name == "scalars":
                t = v.tensor
                vals = list(t.float_val) or list(t.double_val)
                if len(vals) == 1:
                    yield Scalar(event.step, v.tag, float(vals[0]))


def texts(event: Any) -> Iterator[tuple[str, str]]:
    """``(tag, text)`` of the text summaries in one event (tags without ``/text_summary``)."""
    if not event.HasField("summary"):
        return
    for v in event.summary.value:
        if v.WhichOneof("value") == "tensor" and v.tensor.string_val:
            tag = v.tag[:-len(_TEXT_SUFFIX)] if v.tag.endswith(_TEXT_SUFFIX) else v.tag
            yield tag, v.tensor.string_val[0].decode("utf-8", "replace")


def marker_text(run_id: str, *, resumed: bool = False) -> str:
    """The marker's text: JSON with the run id, gradscope's version and the start time."""
    return json.dumps({"run": run_id, "gradscope": __version__, "resumed": resumed,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def read_marker(path: Path, status: Optional[FileRead] = None) -> Optional[dict[str, Any]]:
    """The marker of one event file: its JSON, ``{"run": <file name>, "legacy": True}`` for a
    file of an earlier version (a layer index, no marker), or ``None`` (not gradscope's, or
    not readable: then ``status.problem`` says why)."""
    legacy = False
    for event in read_events(path, status, limit=MARKER_EVENTS):
        for tag, text in texts(event):
            if tag == RUN_TAG:
                try:
                    found = json.loads(text)
                except ValueError:
                    found = None
                if isinstance(found, dict) and isinstance(found.get("run"), str):
                    return found
            elif tag == LEGACY_TAG:
                legacy = True
    return {"run": path.name, "legacy": True} if legacy else None


def event_files(directory: Path) -> list[Path]:
    """The event files directly in ``directory``, oldest first (their names start with a time)."""
    try:
        return sorted(p for p in directory.iterdir() if ".tfevents." in p.name and p.is_file())
    except OSError:
        return []


def runs_in(directory: Path) -> dict[str, list[Path]]:
    """The gradscope runs of the event files directly in ``directory``: run id -> files."""
    runs: dict[str, list[Path]] = {}
    for path in event_files(directory):
        found = read_marker(path)
        if found is not None:
            runs.setdefault(found["run"], []).append(path)
    return runs


def latest_run(runs: dict[str, list[Path]]) -> str:
    """The id of the run among ``runs`` (of :func:`runs_in`) written last."""
    return max(runs, key=lambda r: runs[r][-1].name)


def run_progress(files: list[Path]) -> tuple[Optional[int], Optional[str]]:
    """The last step with a scalar in a run's ``files`` (oldest first), and its latest layer
    index text (:data:`LEGACY_TAG`); ``None`` for what the files do not hold. Files are read
    newest first, until one has both."""
    last: Optional[int] = None
    index: Optional[str] = None
    for path in reversed(files):
        file_index: Optional[str] = None
        for event in read_events(path):
            if event.HasField("summary"):
                for tag, text in texts(event):
                    if tag == LEGACY_TAG:
                        file_index = text
                steps = [s.step for s in scalars((event,))]
                if steps:
                    last = max(steps) if last is None else max(last, *steps)
        index = index or file_index
        if last is not None and index is not None:
            break
    return last, index


def claim_run(path: Path, logdir: Any, *, resume: bool = False) -> str:
    """The run id for a new TensorBoard run in ``path`` (``logdir`` as the user gave it).

    A new id; with ``resume``, the id of the run already there (the latest).

    Raises:
        ValueError: ``path`` already holds a gradscope run and ``resume`` is false
            (the message says how to resume on purpose).
    """
    existing = runs_in(path)
    if existing and resume:
        return latest_run(existing)
    if existing:
        files = ", ".join(sorted(p.name for ps in existing.values() for p in ps)[:3])
        raise ValueError(
            f"watch(logdir={str(logdir)!r}): this directory already holds a gradscope run "
            f"({files}); a second run there would be merged with it in TensorBoard. Pass a new "
            "directory (one per run, e.g. runs/exp2), delete the old run, or add to it on "
            "purpose with TensorBoardWriter(logdir, resume=True) (it continues at the run's "
            "next step); watch(logdir=...) writes a rerun to <logdir>-2 itself")
    return uuid.uuid4().hex[:12]
