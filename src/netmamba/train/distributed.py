"""Running one training command on several processes (torchrun + DistributedDataParallel).

    torchrun --nproc_per_node 2 -m netmamba finetune data/iot -o runs/iot      # 2 processes
    netmamba finetune data/iot -o runs/iot                                     # 1 process

The same command works both ways: `setup()` reads torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT), starts the process group (NCCL when each process has a GPU, gloo
on CPUs) and picks the device; without torchrun it is a single process and nothing is started.
Rank 0 writes every file (logs, checkpoints, reports); the other ranks only compute.

CPU threads: each process gets cores / processes-on-this-machine threads unless told otherwise,
so two processes on two cores do not fight over them.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Distributed:
    """Where this process stands: rank, world size, device. `world_size == 1`: no group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # "gloo" / "nccl" when a process group was started here

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sums of `values` over all processes (float64; the input list on a single process)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        torch.distributed.all_reduce(t)
        return t.cpu().tolist()

    def all_gather_object(self, value: Any) -> list[Any]:
        """`value` of every process, in rank order."""
        if not self.enabled:
            return [value]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, value)
        return out

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's `value`, on every process."""
        if not self.enabled:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.backend is not None and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.backend = None


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: str | None = None, threads: int | None = None) -> Distributed:
    """The process group and device of this process (see the module docstring).

    `device`: "cpu", "cuda", "cuda:1", ... or None for a GPU when there is one. Under torchrun
    with CUDA each process takes the GPU of its LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1")) if launched_by_torchrun() else 1
    rank = int(os.environ.get("RANK", "0")) if world > 1 else 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world))) if world > 1 else 1
    wanted = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(wanted)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {wanted!r} asked for, but CUDA is not available here")
        if world > 1 or dev.index is None:
            dev = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    if threads:
        torch.set_num_threads(threads)
    elif world > 1 and dev.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    backend = None
    if world > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return Distributed(rank, world, local_rank, local_world, dev, backend)
