"""Inference throughput (flows/s) and peak memory of a classifier over batch sizes (SPEC §6).

Per batch size b: the batch is built from the given flows (repeated to b) and moved to the
device first, so the figures are the model's own work; a few warm-up passes, then timed passes
until `min_seconds` and `min_iters` are both reached (CUDA synchronised before reading the clock).

Peak memory is measured on one extra pass, as the rise above what was in use just before it
(`peak_memory_mb`: activations and workspace; weights and the input batch are excluded) and as
the absolute peak (`peak_total_mb`):
    CUDA  torch.cuda.max_memory_allocated after reset_peak_memory_stats (tensor memory only)
    CPU   the process's peak resident set size. On Linux the kernel's high-water mark (VmHWM) is
          reset through /proc/self/clear_refs, and glibc is first asked to hand freed memory
          back (malloc_trim), otherwise memory freed by an earlier pass and kept by the
          allocator would be reused unseen. Elsewhere a thread samples the RSS every
          millisecond (psutil or /proc/self/statm), which can miss a short spike.
tracemalloc is not used: it does not see torch's C++ allocations.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MB = 1024 * 1024


def count_parameters(model: Any) -> dict[str, int]:
    """Parameters of a torch module: total and trainable."""
    params = list(model.parameters())
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
    }


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss_bytes() -> int | None:
    try:
        import psutil  # optional (the `bench` extra)

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _trim_heap() -> None:
    """Ask glibc to return freed heap memory to the system (no-op elsewhere)."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _high_water_mark_resettable() -> bool:
    if _status_kb("VmHWM") is None:
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class CpuPeakMemory:
    """Peak RSS of the process during a `with` block: `rise` and `peak` in bytes."""

    def __init__(self) -> None:
        self.method = (
            "VmHWM reset via /proc/self/clear_refs after malloc_trim"
            if _high_water_mark_resettable()
            else "RSS sampled every 1 ms by a thread"
        )
        self.before = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def rise(self) -> int:
        return max(0, self.peak - self.before)

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_bytes() or 0)

    def __enter__(self) -> CpuPeakMemory:
        gc.collect()
        _trim_heap()
        if self.method.startswith("VmHWM"):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # high-water mark := current RSS
            self.before = (_status_kb("VmRSS") or 0) * 1024
        else:
            self.before = _rss_bytes() or 0
            self.peak = self.before
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.peak = max(self.peak, _rss_bytes() or 0)
        else:
            self.peak = (_status_kb("VmHWM") or 0) * 1024


def _to_tensors(sample: Mapping[str, Any], batch_size: int, device: Any) -> dict[str, Any]:
    """The first axis of every array repeated (cyclically) to `batch_size` rows, on `device`."""
    import torch

    out = {}
    for name, value in sample.items():
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
        if tensor.ndim == 0 or tensor.shape[0] == 0:
            raise ValueError(f"sample array {name!r} must have at least one flow on its first axis")
        index = torch.arange(batch_size) % tensor.shape[0]
        out[name] = tensor[index].to(device)
    return out


def measure_throughput(
    model: Any,
    sample: Mapping[str, Any],
    batch_sizes: Sequence[int] = (1, 8, 64, 256),
    device: str | None = None,
    warmup: int = 2,
    min_iters: int = 3,
    min_seconds: float = 1.0,
    autocast_dtype: str | None = None,
) -> dict[str, Any]:
    """Flows/s and peak memory of `model(batch)` in inference mode for each batch size.

    `sample` holds the arrays of one or more flows (NumPy or torch, first axis = flows);
    `autocast_dtype` ("bfloat16", "float16") runs under torch.autocast. Returns a JSON-ready
    dict: device, threads, memory method, parameters, and one row per batch size.
    """
    import torch

    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch sizes must be positive, got {list(batch_sizes)}")
    first = next(iter(model.parameters()), None)
    device_obj = torch.device(device) if device else (first.device if first is not None else "cpu")
    device_obj = torch.device(device_obj)
    model = model.to(device_obj)
    cuda = device_obj.type == "cuda"
    was_training = model.training
    model.eval()
    autocast = (
        torch.autocast(device_obj.type, dtype=getattr(torch, autocast_dtype))
        if autocast_dtype
        else torch.autocast(device_obj.type, enabled=False)
    )

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device_obj)

    rows = []
    method = "torch.cuda.max_memory_allocated" if cuda else CpuPeakMemory().method
    try:
        with torch.inference_mode(), autocast:
            for batch_size in sorted(batch_sizes):
                batch = _to_tensors(sample, batch_size, device_obj)
                for _ in range(warmup):
                    model(batch)
                sync()
                iters, start = 0, time.perf_counter()
                while iters < min_iters or time.perf_counter() - start < min_seconds:
                    model(batch)
                    iters += 1
                    if iters >= min_iters:
                        sync()
                sync()
                elapsed = time.perf_counter() - start
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device_obj)
                    before = torch.cuda.memory_allocated(device_obj)
                    model(batch)
                    sync()
                    peak = torch.cuda.max_memory_allocated(device_obj)
                    rise = peak - before
                else:
                    probe = CpuPeakMemory()
                    with probe:
                        model(batch)
                    peak, rise = probe.peak, probe.rise
                rows.append(
                    {
                        "batch_size": batch_size,
                        "flows_per_s": batch_size * iters / elapsed,
                        "batch_ms": 1000.0 * elapsed / iters,
                        "iters": iters,
                        "peak_memory_mb": rise / MB,
                        "peak_total_mb": peak / MB,
                    }
                )
                del batch
    finally:
        model.train(was_training)
    return {
        "device": str(device_obj),
        "device_name": torch.cuda.get_device_name(device_obj) if cuda else "cpu",
        "threads": torch.get_num_threads(),
        "autocast_dtype": autocast_dtype,
        "memory_method": method,
        "parameters": count_parameters(model),
        "results": rows,
    }
