"""The sinks a monitor writes to: the findings sink first, the user's, then the ``logdir`` writer."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from gradscope.findings import FindingsSink
from gradscope.findings.remedies import RunFacts
from gradscope.options import Options
from gradscope.writers.base import Sink, SinkFanout
from gradscope.writers.hparams import run_settings

__all__ = ["make_sinks"]


def make_sinks(options: Options, model: nn.Module, optimizer: Optional[torch.optim.Optimizer]
               ) -> tuple[SinkFanout, Optional[Any]]:
    """The sinks (findings first, the user's, then the ``logdir`` writer) and the TensorBoard
    writer; the findings sink knows what the run applies (for its remedies)."""
    sinks: list[Sink] = list(options.sinks)
    if options.logdir is not None:
        from gradscope.writers import TensorBoardWriter
        from gradscope.writers.rundir import run_dir

        logdir = run_dir(options.logdir, overwrite=options.overwrite, resume=options.resume)
        tb = TensorBoardWriter(logdir, resume=options.resume,  # raises on a bad logdir
                               thresholds=options.thresholds)
        sinks.append(tb)
        writer: Optional[Any] = tb
    else:
        writer = next((s for s in sinks if hasattr(s, "summary_writer")), None)
    fanout = SinkFanout(sinks)
    fanout.emit("write_settings", run_settings(model, optimizer, every=options.every))
    thresholds = options.thresholds
    if thresholds is not None:
        where = f"; dashboard: tensorboard --logdir {writer.logdir}" \
            if writer is not None and hasattr(writer, "logdir") else ""
        deliver = (lambda found, step: fanout.emit("write_findings", found, step)) \
            if fanout.wants("write_findings") else None
        fanout.sinks.insert(0, FindingsSink(thresholds, deliver=deliver, summary=options.summary,
                                            where=where, facts=RunFacts.read(model, optimizer)))
    return fanout, writer
