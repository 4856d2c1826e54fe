"""Benchmark the models on this CPU (issue 3); figures, never assertions.

    python benchmarks/bench_models.py                 # the issue's figures; last line is JSON
    python benchmarks/bench_models.py --fast-table    # candidates for the `fast` preset

Measured in one run, side by side (timings on a shared machine are noisy, so our models are
timed in each of several interleaved rounds and the best round counts):
- inference flows/s of the `paper` NetMamba+ classifier, the `paper` NetTrans classifier and
  the same NetMamba+ shapes built on `mambapy` (the pure-PyTorch Mamba a CPU user would pick;
  both its parallel and its sequential scan, the faster one counts; each in its own process,
  as its parallel scan holds batch x L x E x N tensors), at batch 1, 64 and 256;
- peak memory of one forward (a fresh process per model and batch size);
- the `fast` preset's flows/s at batch 256 on all threads and on one;
- training samples/s of one pre-training step (forward, backward, AdamW);
- the share of the forward spent in the selective scan, and the fraction of the machine's own
  matrix-multiply rate (measured here, same run) the model reaches for its multiply-accumulates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager

import torch
from torch import nn

from netmamba.models import ModelConfig, build_classifier, build_pretrainer, native, random_batch
from netmamba.models import mamba as mamba_module
from netmamba.models.cpu import reduce_page_faults

CLASSES = 10


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- models ------------------------------------------------------------------------------


class MambapyBlock(nn.Module):
    """mambapy's ResidualBlock (RMSNorm -> Mamba mixer -> residual) in our block interface."""

    def __init__(self, config: ModelConfig, pscan: bool) -> None:
        super().__init__()
        from mambapy.mamba import MambaConfig, ResidualBlock

        cfg = MambaConfig(
            d_model=config.d_model,
            n_layers=config.depth,
            d_state=config.d_state,
            expand_factor=config.expand,
            d_conv=config.d_conv,
            pscan=pscan,
        )
        self.block = ResidualBlock(cfg)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.block(x)


def mambapy_classifier(config: ModelConfig, pscan: bool) -> nn.Module:
    """Our NetMamba+ classifier with its Mamba blocks replaced by mambapy's (same shapes)."""
    model = build_classifier(config, CLASSES)
    model.encoder.blocks = nn.ModuleList(MambapyBlock(config, pscan) for _ in range(config.depth))
    return model


def build(name: str, config: ModelConfig | None = None) -> nn.Module:
    if name == "netmamba":
        return build_classifier(config or ModelConfig.preset("paper"), CLASSES).eval()
    if name == "nettrans":
        return build_classifier(ModelConfig.preset("paper", backbone="transformer"), CLASSES).eval()
    if name in ("mambapy_pscan", "mambapy_seq"):
        return mambapy_classifier(ModelConfig.preset("paper"), name == "mambapy_pscan").eval()
    raise ValueError(name)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- timing ------------------------------------------------------------------------------


def time_forward(model: nn.Module, batch: dict, min_seconds: float = 0.5) -> float:
    """Seconds per forward (the fastest of repeats lasting at least min_seconds in all)."""
    best, spent = float("inf"), 0.0
    with torch.inference_mode():
        while spent < min_seconds or best == float("inf"):
            start = time.perf_counter()
            model(batch)
            elapsed = time.perf_counter() - start
            best, spent = min(best, elapsed), spent + elapsed
    return best


def time_matmul(rows: int, inner: int, cols: int, repeats: int = 3) -> float:
    """FLOP/s of torch.mm on the model's largest GEMM shape (output preallocated)."""
    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    out = torch.empty(rows, cols)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * rows * inner * cols / best


def matmul_flops(model: nn.Module, batch: dict) -> float:
    """Multiply-accumulate FLOPs of one forward (linear layers, attention), as torch counts."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(batch)
    return float(counter.get_total_flops())


@contextmanager
def timed_kernels(record: dict[str, float]):
    """Time the scan and conv calls of the Mamba mixers."""
    scan, conv = mamba_module.selective_scan, mamba_module.causal_conv1d

    def wrap(fn, key):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            record[key] = record.get(key, 0.0) + time.perf_counter() - start
            return out

        return timed

    mamba_module.selective_scan = wrap(scan, "scan")
    mamba_module.causal_conv1d = wrap(conv, "conv")
    try:
        yield record
    finally:
        mamba_module.selective_scan, mamba_module.causal_conv1d = scan, conv


def kernel_shares(model: nn.Module, batch: dict, rounds: int) -> dict[str, float]:
    best = None
    for _ in range(rounds):
        record: dict[str, float] = {}
        with timed_kernels(record), torch.inference_mode():
            start = time.perf_counter()
            model(batch)
            total = time.perf_counter() - start
        shares = {k: v / total for k, v in record.items()}
        if best is None or shares["scan"] < best["scan"]:
            best = shares
    return best or {}


def time_train_step(config: ModelConfig, batch_size: int, rounds: int) -> float:
    """Samples/s of one pre-training step: forward, backward, AdamW."""
    model = build_pretrainer(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = random_batch(config, batch_size, torch.Generator().manual_seed(0))
    best = float("inf")
    for step in range(rounds + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model(batch, generator=torch.Generator().manual_seed(step))["loss"].backward()
        optimizer.step()
        if step:  # the first step warms up
            best = min(best, time.perf_counter() - start)
    return batch_size / best


# ---- subprocess workers: peak memory of one forward, and the mambapy baseline ----------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def worker(name: str, batch_size: int) -> dict:
    """Peak resident memory during one forward, and above what the process held before it."""
    paper = ModelConfig.preset("paper")
    model = build(name)
    batch = random_batch(paper, batch_size, torch.Generator().manual_seed(batch_size))
    with torch.inference_mode():
        model(random_batch(paper, 1))  # lazy initialisation
        before = _status_kb("VmRSS")
        try:  # reset the peak-RSS mark (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")
        except OSError:
            pass
        model(batch)
        peak = _status_kb("VmHWM")
    return {"peak_rss_mb": round(peak / 1024), "forward_mb": round((peak - before) / 1024)}


def pair_worker(baseline: str, batch_size: int, rounds: int, min_seconds: float) -> dict:
    """Our NetMamba+ and a mambapy build timed alternately in one process (the same load, the
    same allocator state), best of `rounds` each."""
    paper = ModelConfig.preset("paper")
    ours, theirs = build("netmamba"), build(baseline)
    batch = random_batch(paper, batch_size, torch.Generator().manual_seed(batch_size))
    best = {"netmamba": float("inf"), baseline: float("inf")}
    with torch.inference_mode():
        ours(random_batch(paper, 1)), theirs(random_batch(paper, 1))  # lazy initialisation
    for _ in range(rounds):
        best["netmamba"] = min(best["netmamba"], time_forward(ours, batch, min_seconds))
        best[baseline] = min(best[baseline], time_forward(theirs, batch, 0.0))
    return {name: batch_size / seconds for name, seconds in best.items()}


def run_worker(args: argparse.Namespace, *worker_args: str) -> dict | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", *worker_args]
    cmd += ["--threads", str(args.threads), "--min-seconds", str(args.min_seconds)]
    cmd += ["--rounds", str(args.baseline_rounds)]
    if not args.malloc_tuned:
        cmd.append("--no-malloc-tuning")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        log(f"worker {' '.join(worker_args)} failed: {done.stderr[-800:]}")
        return None


# ---- the figures -------------------------------------------------------------------


def run_main(args: argparse.Namespace) -> dict:
    paper = ModelConfig.preset("paper")
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    b64 = 64 if 64 in sizes else sizes[-1]
    names = ["netmamba", "nettrans"]
    models = {name: build(name) for name in names}
    batches = {b: random_batch(paper, b, torch.Generator().manual_seed(b)) for b in sizes}
    fast_config = ModelConfig.preset("fast")
    fast_model = build_classifier(fast_config, CLASSES).eval()
    fast_batch = random_batch(fast_config, 256, torch.Generator().manual_seed(0))
    fps: dict[str, dict[int, float]] = {name: {} for name in names}
    fast_fps: dict[str, float] = {}
    matmul_rate = 0.0
    for rnd in range(args.rounds):
        for b in sizes:
            for name, model in models.items():
                if rnd == 0:
                    time_forward(model, batches[b], 0.0)  # warm-up
                seconds = time_forward(model, batches[b], args.min_seconds)
                fps[name][b] = max(fps[name].get(b, 0.0), b / seconds)
                log(f"round {rnd} batch {b:4d} {name:10s} {b / seconds:9.2f} flows/s")
        rate = time_matmul(64 * paper.n_tokens, paper.d_model, 2 * paper.d_inner)
        matmul_rate = max(matmul_rate, rate)
        log(f"round {rnd} matmul {rate / 1e9:.1f} GFLOP/s")
        for threads in sorted({args.threads, 1}, reverse=True):
            torch.set_num_threads(threads)
            if rnd == 0:
                time_forward(fast_model, fast_batch, 0.0)
            seconds = time_forward(fast_model, fast_batch, args.min_seconds)
            key = f"{threads}_threads"
            fast_fps[key] = max(fast_fps.get(key, 0.0), 256 / seconds)
            log(f"round {rnd} fast preset, {threads} thread(s): {256 / seconds:.0f} flows/s")
        torch.set_num_threads(args.threads)

    shares = kernel_shares(models["netmamba"], batches[b64], args.rounds)
    flops = {n: matmul_flops(models[n], batches[b64]) / b64 for n in names}
    fraction = (flops["netmamba"] / matmul_rate) * fps["netmamba"][b64]
    train = {
        name: time_train_step(config, args.train_batch, args.rounds)
        for name, config in (
            ("netmamba", paper),
            ("nettrans", ModelConfig.preset("paper", backbone="transformer")),
        )
    }
    log(f"training samples/s at batch {args.train_batch}: {train}")

    # memory, and the mambapy baseline timed alongside ours, each in a fresh process
    memory: dict[str, dict | None] = {}
    if not args.no_memory:
        for name in names:
            for b in sizes:
                memory[f"{name}_b{b}"] = run_worker(args, "memory", name, str(b))
                log(f"memory {name} batch {b}: {memory[f'{name}_b{b}']}")
    pairs: dict[str, dict | None] = {}
    baseline_sizes = [b for b in sizes if b <= 64]  # mambapy needs ~15-20 GB at batch 256
    for baseline in [] if args.skip_mambapy else ["mambapy_seq", "mambapy_pscan"]:
        for b in baseline_sizes:
            pairs[f"{baseline}_b{b}"] = run_worker(args, "pair", baseline, str(b))
            log(f"side by side, batch {b}: {pairs[f'{baseline}_b{b}']}")
    speedup: dict[int, float] = {}
    mambapy_fps: dict[int, float] = {}
    for b in baseline_sizes:
        runs = [p for k, p in pairs.items() if k.endswith(f"_b{b}") and p]
        if runs:  # mambapy's faster mode, against ours timed in the same process
            fastest = max(runs, key=lambda p: next(v for k, v in p.items() if k != "netmamba"))
            mambapy_fps[b] = next(v for k, v in fastest.items() if k != "netmamba")
            speedup[b] = fastest["netmamba"] / mambapy_fps[b]

    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "threads": args.threads,
        "malloc_tuned": args.malloc_tuned,
        "scan_impl": "native" if native.available() else "torch",
        "params": {n: n_params(models[n]) for n in names},
        "fps": {n: {str(b): round(v, 2) for b, v in fps[n].items()} for n in fps},
        "peak_memory_mb": memory,
        "mambapy_side_by_side": pairs,
        "mambapy_fps": {str(b): round(v, 2) for b, v in mambapy_fps.items()},
        "fast_preset_fps_b256": {k: round(v) for k, v in fast_fps.items()},
        f"train_samples_per_s_b{args.train_batch}": {k: round(v, 2) for k, v in train.items()},
        "matmul_gflops": round(matmul_rate / 1e9, 1),
        "gflop_per_flow": {k: round(v / 1e9, 3) for k, v in flops.items()},
        "conv_share": round(shares.get("conv", 0.0), 3),
        "netmamba_fps_b64": round(fps["netmamba"][b64], 2),
        "nettrans_fps_b64": round(fps["nettrans"][b64], 2),
        "mambapy_fps_b64": round(mambapy_fps.get(b64, 0.0), 2),
        "speedup_vs_mambapy": round(speedup[b64], 2) if b64 in speedup else None,
        "mamba_over_nettrans": round(fps["netmamba"][b64] / fps["nettrans"][b64], 2),
        "scan_share": round(shares.get("scan", 0.0), 3),
        "matmul_fraction": round(fraction, 3),
    }


# ---- candidates for the `fast` preset ------------------------------------------------------


def _small(d_model: int, depth: int, stride: int, d_state: int = 8, payload: int = 64) -> dict:
    return dict(header_bytes=64, payload_bytes=payload, stride=stride, d_model=d_model,
                depth=depth, d_state=d_state)  # fmt: skip


CANDIDATES = {
    # name: overrides of the `paper` preset (64 header + 64 payload bytes per packet unless named)
    "paper": {},
    "D128-d3-N8-s8": _small(128, 3, 8),
    "D128-d2-N8-s16": _small(128, 2, 16),
    "D96-d3-N8-s8": _small(96, 3, 8),
    "D96-d2-N8-s16": _small(96, 2, 16),
    "D64-d4-N8-s16": _small(64, 4, 16),
    "D64-d3-N8-s8": _small(64, 3, 8),
    "D64-d3-N8-s16": _small(64, 3, 16),
    "D64-d2-N8-s16": _small(64, 2, 16),
    "D64-d3-N16-s16": _small(64, 3, 16, d_state=16),
    "D64-d3-N8-s16-p128": _small(64, 3, 16, payload=128),
    "fast": "preset",
}


def run_fast_table(args: argparse.Namespace) -> dict:
    configs = {
        name: ModelConfig.preset("fast")
        if spec == "preset"
        else ModelConfig.preset("paper", **spec)
        for name, spec in CANDIDATES.items()
    }
    models = {name: build_classifier(c, CLASSES).eval() for name, c in configs.items()}
    batches = {
        name: random_batch(c, args.fast_batch, torch.Generator().manual_seed(0))
        for name, c in configs.items()
    }
    table: dict[str, dict[str, float]] = {name: {} for name in configs}
    for rnd in range(args.rounds):
        for threads in (args.threads, 1):
            torch.set_num_threads(threads)
            for name, model in models.items():
                if name == "paper" and rnd > 0:
                    continue
                if rnd == 0:
                    time_forward(model, batches[name], 0.0)
                fps = args.fast_batch / time_forward(model, batches[name], args.min_seconds)
                key = f"fps_{threads}t"
                table[name][key] = round(max(table[name].get(key, 0.0), fps), 1)
                log(f"round {rnd} threads {threads} {name:26s} {fps:9.1f} flows/s")
    torch.set_num_threads(args.threads)
    for name, c in configs.items():
        table[name].update(
            params=n_params(models[name]), tokens=c.n_tokens, d_model=c.d_model,
            depth=c.depth, d_state=c.d_state, byte_tokens=c.n_byte_tokens,
        )  # fmt: skip
    return {"fast_table_batch": args.fast_batch, "threads": args.threads, "table": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,64,256")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=1.0, help="per timing")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--skip-mambapy", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-malloc-tuning", dest="malloc_tuned", action="store_false")
    parser.add_argument("--fast-table", action="store_true", help="time `fast` candidates")
    parser.add_argument("--fast-batch", type=int, default=256)
    parser.add_argument("--baseline-rounds", type=int, default=2, help="mambapy timings")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.malloc_tuned:  # every model alike; see netmamba.models.cpu
        args.malloc_tuned = reduce_page_faults()
    if args.worker:
        kind, name, batch_size = args.worker
        if kind == "memory":
            print(json.dumps(worker(name, int(batch_size))))
        else:
            print(json.dumps(pair_worker(name, int(batch_size), args.rounds, args.min_seconds)))
        return
    result = run_fast_table(args) if args.fast_table else run_main(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
