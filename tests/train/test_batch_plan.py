"""Which flows each step reads: a function of (seed, epoch) only, shared out among processes
exactly, honouring a step budget, and few-shot subsets that keep every class."""

from __future__ import annotations

import numpy as np
import pytest

from netmamba.train.data import (
    BatchPlan,
    epoch_order,
    step_seed,
    stratified_fraction,
)


def test_epoch_order_depends_on_seed_and_epoch_only():
    a = epoch_order(50, seed=3, epoch=2)
    epoch_order(50, seed=3, epoch=5)  # other calls in between change nothing
    assert np.array_equal(a, epoch_order(50, seed=3, epoch=2))
    assert sorted(a.tolist()) == list(range(50))
    assert not np.array_equal(a, epoch_order(50, seed=3, epoch=3))
    assert not np.array_equal(a, epoch_order(50, seed=4, epoch=2))


def test_steps_cover_each_epoch_once_with_a_smaller_last_batch():
    plan = BatchPlan(n=10, batch_size=4, seed=0)
    assert plan.steps_per_epoch == 3  # 4 + 4 + 2
    for epoch in range(2):
        steps = range(epoch * 3, epoch * 3 + 3)
        batches = [plan.global_batch(t) for t in steps]
        assert [len(b) for b in batches] == [4, 4, 2]
        assert sorted(np.concatenate(batches).tolist()) == list(range(10))
        assert np.array_equal(np.concatenate(batches), epoch_order(10, 0, epoch))
    assert plan.epoch_of(5) == 1 and plan.epoch_of(6) == 2


def test_processes_share_each_global_batch_without_overlap():
    single = BatchPlan(n=23, batch_size=6, seed=1)
    double = BatchPlan(n=23, batch_size=6, seed=1, world_size=2)
    for step in range(10):
        parts = [double.local_batch(step, r) for r in range(2)]
        assert np.array_equal(np.concatenate(parts), single.global_batch(step))
        assert abs(len(parts[0]) - len(parts[1])) <= 1


def test_a_last_batch_smaller_than_the_processes_is_dropped():
    # 9 flows, batch 4, 2 processes: 4 + 4, and the single leftover flow cannot be shared
    assert BatchPlan(n=9, batch_size=4, world_size=2).steps_per_epoch == 2
    assert BatchPlan(n=10, batch_size=4, world_size=2).steps_per_epoch == 3
    with pytest.raises(ValueError, match="at least one flow per process"):
        BatchPlan(n=10, batch_size=1, world_size=2)


def test_epochs_become_a_whole_number_of_steps():
    plan = BatchPlan(n=10, batch_size=4)
    assert plan.steps_for_epochs(2) == 6
    assert plan.steps_for_epochs(0.5) == 2  # 1.5 steps rounded up


def test_step_seeds_differ_by_step_and_rank():
    seeds = {step_seed(0, 1, step, rank) for step in range(20) for rank in range(2)}
    assert len(seeds) == 40
    assert step_seed(0, 1, 5, 0) == step_seed(0, 1, 5, 0)
    assert all(0 <= s < 2**63 for s in seeds)


def test_few_shot_fraction_is_stratified_and_keeps_rare_classes():
    labels = np.array([0] * 100 + [1] * 30 + [2] * 3)
    index = stratified_fraction(labels, 0.1, seed=0)
    counts = np.bincount(labels[index], minlength=3)
    assert counts.tolist() == [10, 3, 1]  # round(0.1 n), at least one of each class
    assert np.array_equal(index, np.sort(index))
    assert np.array_equal(index, stratified_fraction(labels, 0.1, seed=0))
    assert not np.array_equal(index, stratified_fraction(labels, 0.1, seed=1))
    assert len(stratified_fraction(labels, 1.0, seed=0)) == len(labels)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        stratified_fraction(labels, 0.0, seed=0)
