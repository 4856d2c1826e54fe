"""Which flows each optimiser step reads: seeded epoch orders, batches, shards, few-shot subsets.

Data order is a pure function of (seed, epoch), never of state carried between steps:

    order(e)      = a permutation of the n training flows, from SeedSequence([seed, e])
    batch (e, k)  = order(e)[k B : (k + 1) B]          B = the GLOBAL batch (all processes)
    rank r reads  = the r-th of `world` contiguous, near-equal parts of that batch
    step t        = epoch t // S, batch t % S         S = steps per epoch = ceil(n / B)

so a run resumed at step t reads exactly what the uninterrupted run read from step t on, and a
2-process run reads, step by step, the same flows as a 1-process run with the same global batch.
An epoch's last batch is smaller when B does not divide n (it is dropped only when it has fewer
flows than there are processes). Random numbers inside a step (masks, dropout, drop path) come
from `step_seed(seed, step, rank)`, also stateless.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

# independent random streams derived from the one seed
STREAM_ORDER = 0
STREAM_STEP = 1
STREAM_FEW_SHOT = 2


def step_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for (seed, keys...), e.g. step_seed(seed, STREAM_STEP, step, rank)."""
    state = np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(
        1, np.uint64
    )
    return int(state[0] & np.uint64(2**63 - 1))


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of n flows for epoch `epoch` (a function of seed and epoch only;
    read-only, cached: every step of an epoch reads the same one)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), STREAM_ORDER, int(epoch)]))
    order = rng.permutation(n)
    order.flags.writeable = False
    return order


@dataclass(frozen=True)
class BatchPlan:
    """Steps, epochs and the flows of every (step, rank); see the module docstring."""

    n: int  # training flows
    batch_size: int  # global batch B
    seed: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"the batch size must be at least 1 (got {self.batch_size})")
        if self.batch_size < self.world_size:
            raise ValueError(
                f"a global batch of {self.batch_size} cannot be shared by {self.world_size} "
                "processes: use a batch of at least one flow per process"
            )
        if self.steps_per_epoch < 1:
            raise ValueError(f"{self.n} training flows are too few for {self.world_size} processes")

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest >= self.world_size else 0)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def global_batch(self, step: int) -> np.ndarray:
        """Indices of the flows of optimiser step `step` (0-based), all processes together."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = epoch_order(self.n, self.seed, epoch)
        return order[k * self.batch_size : (k + 1) * self.batch_size]

    def local_batch(self, step: int, rank: int) -> np.ndarray:
        """The part of step `step`'s batch that process `rank` reads."""
        return np.array_split(self.global_batch(step), self.world_size)[rank]

    def steps_for_epochs(self, epochs: float) -> int:
        return max(1, math.ceil(epochs * self.steps_per_epoch - 1e-9))


def stratified_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded stratified sample: round(fraction x n_c) flows of each class
    c (at least one of every class present), for few-shot training. fraction 1 keeps all."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the training fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    if fraction == 1.0:
        return np.arange(len(labels))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), STREAM_FEW_SHOT]))
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = max(1, round(fraction * len(members)))
        chosen.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def take(arrays: Mapping[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    """The rows `index` of every array (a batch)."""
    return {k: v[index] for k, v in arrays.items()}


def slices(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most `batch_size` rows covering 0..n (evaluation order)."""
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))
