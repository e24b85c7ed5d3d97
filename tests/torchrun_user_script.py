"""A user's training script under ``torchrun``: DDP, ``gradscope.watch``, and a careless exit.

Run as ``torchrun --nproc_per_node 2 tests/torchrun_user_script.py [MODE]``. ``MODE`` is
how the script ends:

* ``open`` (default): neither ``mon.close()`` nor ``destroy_process_group()``;
* ``close``: ``mon.close()``, no ``destroy_process_group()``;
* ``destroy``: ``destroy_process_group()`` while the monitor is still open;
* ``torch-destroy``: ``destroy``'s script without gradscope (``watch`` is not called): the
  control, PyTorch's own exit with a DDP model alive (it aborts intermittently, see
  :mod:`gradscope.lifecycle`), run by ``benchmarks/torchrun_exit.py`` but not gated.

Each rank prints ``rank R done`` as its last line of Python. Every mode must exit 0 on
every rank (``tests/test_distributed.py``, ``benchmarks/torchrun_exit.py``).
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn

import gradscope

if __name__ == "__main__":  # module-level names, as in a script (pytest imports this file)
    mode = sys.argv[1] if len(sys.argv) > 1 else "open"
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.ReLU(),
                                                              nn.Linear(16, 2)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = None if mode == "torch-destroy" else gradscope.watch(model, optimizer=opt,
                                                               flush_every=5, summary=False)
    for _ in range(12):  # 2 flushes, and 2 steps still queued at the end
        opt.zero_grad()
        model(torch.randn(32, 8)).pow(2).mean().backward()
        opt.step()
    if mode == "close" and mon is not None:
        mon.close()
    elif mode in ("destroy", "torch-destroy"):
        dist.destroy_process_group()
    print(f"rank {rank} done", flush=True)
