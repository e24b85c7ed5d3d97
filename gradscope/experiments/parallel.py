"""Data-parallel experiments: ``torchrun --nproc_per_node N -m gradscope.cli compare ...``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`start` joins the process group
(NCCL on CUDA, one GPU per rank by ``LOCAL_RANK``; gloo on the CPU). Every rank
then builds the same model from the same seed, wraps it in
``DistributedDataParallel`` (:func:`wrap`) and trains on its shard of each
global batch (:func:`shard`: rows ``rank::world``), so that the averaged
gradient is the global batch's. The monitor combines its statistics across the
ranks at each flush; rank 0 alone writes files, TensorBoard runs and prints.
Without ``torchrun`` every function here is the identity.

Example:
    >>> import torch
    >>> shard(torch.arange(6))  # one process: the whole batch
    tensor([0, 1, 2, 3, 4, 5])
"""

from __future__ import annotations

import gc
import os
import warnings

import torch
from torch import nn

from gradscope.distributed import world

__all__ = ["barrier", "is_writer", "mean_over_ranks", "shard", "start", "stop", "world", "wrap"]

_started = [False]


def start(device: torch.device) -> torch.device:
    """Join the process group when launched by ``torchrun`` with several ranks; this rank's device."""
    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _started[0] = True
    return device


def stop() -> None:
    """Leave the process group :func:`start` joined, on every rank, cleanly.

    A final barrier first (no rank tears down its connections while another still
    talks to it), then a garbage collection (the DDP models of finished runs hold
    the process group: while they live, destroying it leaves gloo's worker threads
    running into interpreter exit, where a thread that releases a tensor aborts the
    process: "terminate called without an active exception"), then the group is
    destroyed, which joins those threads. Never raises: it runs in ``finally``
    blocks, after a failed or interrupted run too.
    """
    if not (_started[0] and torch.distributed.is_initialized()):
        return
    _started[0] = False
    try:
        torch.distributed.barrier()
    except Exception as e:  # a rank that failed: tear down all the same
        warnings.warn(f"gradscope: the final barrier failed ({e}); leaving the process group",
                      RuntimeWarning, stacklevel=2)
    gc.collect()
    torch.distributed.destroy_process_group()


def is_writer() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return world()[0] == 0


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` under several ranks, else ``model``."""
    if world()[1] <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a global batch (``rank::world``)."""
    rank, size = world()
    return batch if size <= 1 else batch[rank::size]


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if world()[1] > 1:
        torch.distributed.barrier()


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The elementwise mean of ``t`` over the ranks (``t`` itself in one process)."""
    if world()[1] <= 1:
        return t
    t = t.clone()
    torch.distributed.all_reduce(t)
    return t / world()[1]
