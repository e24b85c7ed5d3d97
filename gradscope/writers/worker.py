"""The event files of one TensorBoard run: the writing thread, reopening after an error, losses.

:class:`EventWorker` owns the ``SummaryWriter`` of a run and everything that keeps
writing going; :class:`gradscope.writers.TensorBoardWriter` decides what to write
and hands each write to :meth:`EventWorker.submit` as a job.

* **The thread.** ``add_scalar`` costs tens of microseconds per value, so with
  ``background=True`` jobs run on one daemon thread; :meth:`EventWorker.wait`
  waits for them. An error on that thread is raised on the caller's thread by
  :meth:`EventWorker.raise_error` (the next call of the writer), where the monitor
  reports it.
* **Reopening.** TensorBoard's own writer thread dies at its first error and
  refuses every later write, so after an error the dead event file is closed and
  a new one of the same run is opened before the next job (with the run marker,
  ``resumed``); the owner is told (``reopened``) so that it writes its layer index
  and layout again.
* **Losses** (:class:`gradscope.writers.losses.Losses`): the values handed to the
  failed file since its last confirmed flush are settled by reading the file back;
  what is missing is said once when writing works again and once at close.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

from torch.utils.tensorboard import SummaryWriter

from gradscope.events import RUN_TAG, marker_text, read_events, scalars
from gradscope.writers.losses import Item, Losses

__all__ = ["EventWorker"]

#: What a job writes, for the loss accounting: scalars (counted by tag), histograms
#: (one item each), one other item (text, an image, the layout), or a flush (nothing).
JOB_KINDS = ("scalars", "histograms", "item", "flush")


class EventWorker:
    """One run's ``SummaryWriter``, its writing thread, its reopening and its losses.

    Args:
        logdir: the run directory (already checked and claimed).
        run_id: the run's id (written in the marker of each event file).
        resume: the run is resumed (said in the first marker).
        flush_secs, max_queue: the ``SummaryWriter``'s.
        background: run jobs on a background thread (else on the caller's).
        reopened: called (on the writing thread) after a new event file was opened.
        scalar_items: ``(step, tag)`` of what a scalar job's arguments would write
            (counted as lost when the job could not even start).
    """

    def __init__(self, logdir: Path, run_id: str, *, resume: bool, flush_secs: int,
                 max_queue: int, background: bool, reopened: Callable[[], None],
                 scalar_items: Callable[..., list[Item]]) -> None:
        self.logdir, self.run_id = logdir, run_id
        self.reopened, self.scalar_items = reopened, scalar_items
        self.summary_writer = SummaryWriter(
            log_dir=str(self.logdir), flush_secs=flush_secs, max_queue=max_queue)
        self.summary_writer.add_text(RUN_TAG, marker_text(self.run_id, resumed=resume), 0)
        self.losses = Losses()
        # the event file, and its size at its last successful flush
        self._confirmed: tuple[Optional[Path], int] = (_file_end(self.summary_writer)[0], 0)
        self._error: Optional[Exception] = None  # raised on the background thread, not yet reported
        self._queue: Optional[queue.Queue[Optional[tuple[Callable[..., Any], tuple[Any, ...], str]]]] = None
        self._thread: Optional[threading.Thread] = None
        if background:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._work, name="gradscope-tensorboard",
                                            daemon=True)
            self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, kind: str = "item") -> None:
        """Run a write on the background thread (or here without one); ``kind`` is one of
        :data:`JOB_KINDS`."""
        if self._queue is not None:
            self._queue.put((fn, args, kind))
        else:
            self.run(fn, args, kind)

    def wait(self) -> None:
        """Wait until every submitted job has run."""
        if self._queue is not None:
            self._queue.join()

    def flush(self) -> None:
        """Wait for the jobs, flush the event file, raise a background error."""
        self.wait()
        self.run(self.flush_file, (), "flush")
        self.raise_error()

    def close(self) -> None:
        """Stop the thread, flush (or settle a dead file) and close. An error is kept for
        :meth:`raise_error`."""
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        try:
            if self.losses.broken:  # nothing left to flush: count what the file holds
                self._settle()
            else:
                self.run(self.flush_file, (), "flush")
            self.summary_writer.close()
        except Exception as err:  # counted, and said by the owner
            if self._error is None:
                self._error = err

    def _work(self) -> None:
        """The background thread: run queued writes until the ``None`` sentinel."""
        assert self._queue is not None
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self.run(*job)
            except Exception as err:  # reported on the caller's thread by the next call
                if self._error is None:
                    self._error = err
            finally:
                self._queue.task_done()

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...], kind: str = "item") -> None:
        """One write job; after a failure that killed the event file, a new file first."""
        ran = False
        try:
            if self.losses.broken:
                self._reopen()
            ran = True
            fn(*args)
        except Exception as err:
            scalar_job = kind == "scalars"
            if scalar_job and not ran:
                self.losses.handed(self.scalar_items(*args), 0)
            items = len(args[0]) if kind == "histograms" else int(kind != "flush")
            self.losses.failed(err, 0 if scalar_job else items)
            raise

    def _reopen(self) -> None:
        """Close the event file whose writer thread died; the next write opens a new one."""
        self._settle()
        sw = self.summary_writer
        writers: list[Any] = list((sw.all_writers or {}).values())
        for w in writers:
            try:
                w.close()
            except Exception:  # the dead writer re-raises its error
                pass
        sw.file_writer = sw.all_writers = None  # SummaryWriter opens a new file on next use
        sw.add_text(RUN_TAG, marker_text(self.run_id, resumed=True), 0)
        self._confirmed = (_file_end(sw)[0], 0)
        self.reopened()  # the layer index and layout again, into the new file
        self.losses.broken = False

    def flush_file(self) -> None:
        """Flush the event file: what was handed to it is then on disk."""
        self.summary_writer.flush()
        self.losses.confirmed()
        self._confirmed = _file_end(self.summary_writer)

    def _settle(self) -> None:
        """Count what reached the dead file since its last flush; the rest is lost."""
        path, offset = self._confirmed
        found: set[tuple[int, str]] = set()
        pending = self.losses.pending()
        if path is not None and pending:
            for s in scalars(read_events(path, start=offset)):
                if (s.step, s.tag) in pending:
                    found.add((s.step, s.tag))
        if path is not None and path.exists() and path.stat().st_size == 0:
            path.unlink()  # opened during the outage, nothing reached it
        self.losses.settle(found)
        self._confirmed = (None, 0)

    def say(self, what: Optional[str], how: str) -> None:
        """Warn that ``what`` (a loss sentence of :class:`Losses`) happened, if anything."""
        if what:
            warnings.warn(f"gradscope: writing TensorBoard events to {str(self.logdir)!r} {how}: "
                          f"{what}", RuntimeWarning, stacklevel=4)

    def raise_error(self) -> None:
        """Raise (once) an error the background thread met since the last call."""
        err, self._error = self._error, None
        if err is not None:
            raise RuntimeError(f"writing TensorBoard events to {str(self.logdir)!r} failed: "
                               f"{type(err).__name__}: {err}") from err


def _file_end(sw: SummaryWriter) -> tuple[Optional[Path], int]:
    """The current event file and its size (``(None, 0)`` if TensorBoard hides it)."""
    name = getattr(getattr(sw.file_writer, "event_writer", None), "_file_name", None)
    try:
        return (Path(name), os.path.getsize(name)) if name else (None, 0)
    except OSError:
        return None, 0
