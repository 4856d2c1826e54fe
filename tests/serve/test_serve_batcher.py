"""Dynamic batching in a worker process: right results for the right flows, batch cutting,
back-pressure and drops, failures reported, clean shutdown."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from servehelpers import SPEC, flow_arrays, make_failing, make_nothing, make_summing

from netmamba.serve.batcher import Batcher, BatcherError, BatchResult


class Collected:
    """on_results that keeps every flow's outputs by id."""

    def __init__(self) -> None:
        self.by_id: dict[int, dict[str, float]] = {}
        self.batches: list[BatchResult] = []
        self.lock = threading.Lock()

    def __call__(self, result: BatchResult) -> None:
        with self.lock:
            self.batches.append(result)
            for row, flow_id in enumerate(result.ids.tolist()):
                assert flow_id not in self.by_id, f"flow {flow_id} came back twice"
                self.by_id[flow_id] = {k: v[row] for k, v in result.outputs.items()}


def expected(i: int) -> tuple[int, list[float]]:
    # By hand: x = [i % 256, 7i % 256, 1, 2] sums to that; y = [i, -i, 0.5] doubles.
    return i % 256 + (i * 7) % 256 + 3, [2.0 * i, -2.0 * i, 1.0]


def test_every_flow_gets_its_own_result_through_a_small_ring() -> None:
    got = Collected()
    n = 1000
    with Batcher(make_summing, SPEC, capacity=16, max_batch=8, on_results=got) as batcher:
        for i in range(n):
            assert batcher.submit(i, flow_arrays(i))
    assert sorted(got.by_id) == list(range(n))  # nothing lost, nothing twice
    for i, out in got.by_id.items():
        total, scaled = expected(i)
        assert out["total"] == total
        assert out["scaled"].tolist() == scaled
    assert batcher.stats.submitted == batcher.stats.completed == n
    assert batcher.stats.dropped == 0
    assert all(1 <= b.size <= 8 for b in got.batches)
    assert sum(b.size for b in got.batches) == n
    # predict saw exactly the batch that came back: its "rows" output is the batch size.
    assert all(int(b.outputs["rows"][0]) == b.size for b in got.batches)


def test_batches_are_cut_at_max_batch_under_load() -> None:
    got = Collected()
    slow = functools.partial(make_summing, delay_s=0.05)
    with Batcher(slow, SPEC, capacity=256, max_batch=32, max_wait_s=5, on_results=got) as b:
        for i in range(200):
            b.submit(i, flow_arrays(i))
    sizes = [r.size for r in got.batches]
    assert max(sizes) == 32 and sum(sizes) == 200
    # While predict sleeps, the next batch fills up: most batches are full ones.
    assert sizes.count(32) >= 4


def test_a_lone_flow_leaves_after_max_wait() -> None:
    got = Collected()
    with Batcher(make_summing, SPEC, max_batch=100, max_wait_s=0.5, on_results=got) as b:
        for i in range(3):
            b.submit(i, flow_arrays(i))
        deadline = 600
        while len(got.batches) < 1 and deadline:
            threading.Event().wait(0.05)
            deadline -= 1
        b.submit(3, flow_arrays(3))
    assert [r.size for r in got.batches] == [3, 1]
    first = got.batches[0]
    # It waited for company until max_wait had passed (a lower bound: cannot fail under load).
    assert first.started_at - float(first.submitted_at.min()) >= 0.5 * 0.95
    assert first.latency_s >= first.inference_s >= 0


def test_full_ring_drops_and_counts_under_the_drop_policy(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    held = functools.partial(make_summing, gate=str(gate))
    got = Collected()
    batcher = Batcher(
        held, SPEC, capacity=8, max_batch=4, max_wait_s=0, on_results=got, drop_when_full=True
    )
    with batcher:
        accepted = [i for i in range(100) if batcher.submit(i, flow_arrays(i))]
        # The worker holds at most one batch (4) in predict; the ring holds 8: the rest drop.
        assert 8 <= len(accepted) <= 12
        assert batcher.stats.dropped == 100 - len(accepted)
        gate.touch()
    assert sorted(got.by_id) == accepted
    assert batcher.stats.completed == len(accepted)


def test_slow_consumer_blocks_the_producer_without_losing_flows() -> None:
    got = Collected()

    def slow_consumer(result: BatchResult) -> None:
        threading.Event().wait(0.01)
        got(result)

    with Batcher(
        make_summing, SPEC, capacity=8, max_batch=4, result_capacity=1, on_results=slow_consumer
    ) as batcher:
        for i in range(300):
            batcher.submit(i, flow_arrays(i))
    assert sorted(got.by_id) == list(range(300))
    assert batcher.stats.dropped == 0


def test_failing_predict_is_reported_with_its_traceback() -> None:
    batcher = Batcher(make_failing, SPEC, max_wait_s=0).start()
    batcher.submit(1, flow_arrays(1))
    with pytest.raises(
        BatcherError, match=r"(?s)predict\(\) failed.*the model exploded on purpose"
    ):
        for i in range(2, 2000):  # a later submit, or close(), reports it
            batcher.submit(i, flow_arrays(i))
            threading.Event().wait(0.01)
        batcher.close()
    batcher.kill()


def test_failing_factory_fails_start() -> None:
    with pytest.raises(BatcherError, match=r"(?s)building the model failed.*no checkpoint"):
        Batcher(make_nothing, SPEC).start()


def test_bad_arrays_are_refused_with_names_and_shapes() -> None:
    with Batcher(make_summing, SPEC) as batcher:
        bad = flow_arrays(1) | {"y": np.zeros(5, np.float32)}
        with pytest.raises(
            ValueError, match=r"array 'y' of flow 7 has shape \(5,\), expected \(3,\)"
        ):
            batcher.submit(7, bad)
        with pytest.raises(ValueError, match="flow 8 lacks the array 'x'"):
            batcher.submit(8, {"y": np.zeros(3, np.float32)})
        assert batcher.submit(9, flow_arrays(9))  # the slot was given back
    assert batcher.stats.completed == 1


def test_worker_ignores_ctrl_c_and_close_delivers_everything() -> None:
    got = Collected()
    slow = functools.partial(make_summing, delay_s=0.02)
    batcher = Batcher(slow, SPEC, capacity=512, max_batch=16, on_results=got).start()
    for i in range(400):
        batcher.submit(i, flow_arrays(i))
    os.kill(batcher._process.pid, signal.SIGINT)  # what Ctrl-C sends the process group
    batcher.close()
    assert sorted(got.by_id) == list(range(400))


def test_a_worker_never_closed_does_not_keep_python_from_exiting() -> None:
    # The worker ignores SIGTERM (the parent decides when it stops); an exit without close()
    # must still end, not wait for it forever.
    code = (
        "from servehelpers import make_summing, SPEC\n"
        "from netmamba.serve.batcher import Batcher\n"
        "if __name__ == '__main__':\n"
        "    Batcher(make_summing, SPEC).start()\n"
        "    print('started', flush=True)\n"
    )
    here = str(Path(__file__).parent)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == "started\n", proc.stderr
