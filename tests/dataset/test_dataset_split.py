"""Split strategies on metadata tables built in the test: grouping, duplicates, ratios, time."""

from __future__ import annotations

import numpy as np
import pandas as pd

from netmamba.dataset.config import CleaningConfig, SplitConfig
from netmamba.dataset.split import assign_splits, select_flows


def table(n_per_class=100, classes=("a", "b"), files=10, sessions=None, dup_every=0):
    rows = []
    for c, name in enumerate(classes):
        for i in range(n_per_class):
            session = i // 2 if sessions is None else i % sessions  # two flows per session
            digest = f"{name}{i}" if not dup_every or i % dup_every else "same"
            rows.append(
                {
                    "capture": f"{name}/f{i % files}.pcap",
                    "session": f"s{session}",
                    "first_ns": 1_000 * i + c,
                    "label": name,
                    "sample_hash": digest,
                }
            )
    meta = pd.DataFrame(rows)
    ids = meta["label"].map({n: k for k, n in enumerate(classes)}).to_numpy()
    return meta, ids


def sides(meta, splits, key):
    return meta.assign(split=splits).groupby(key)["split"].nunique()


def test_random_per_flow_is_stratified_8_1_1():
    meta, ids = table()
    splits = assign_splits(meta, ids, SplitConfig(strategy="flow", seed=0))
    for c in (0, 1):
        assert np.bincount(splits[ids == c], minlength=3).tolist() == [80, 10, 10]


def test_sessions_and_files_are_never_split():
    meta, ids = table()
    s = assign_splits(meta, ids, SplitConfig(strategy="session"))
    assert (sides(meta, s, ["capture", "session"]) == 1).all()
    assert set(np.bincount(s, minlength=3).tolist()) != {0}
    f = assign_splits(meta, ids, SplitConfig(strategy="file"))
    assert (sides(meta, f, "capture") == 1).all()
    assert sorted(np.bincount(f).tolist()) == [20, 20, 160]  # 20 files of 10 flows: 16/2/2


def test_identical_samples_never_land_on_two_sides():
    meta, ids = table(dup_every=7)  # every 7th flow of each class has the same sample
    for strategy in ("flow", "session", "file", "time"):
        s = assign_splits(meta, ids, SplitConfig(strategy=strategy, seed=5))
        assert sides(meta, s, "sample_hash").max() == 1, strategy


def test_time_split_puts_the_earliest_flows_in_train_per_class():
    meta, ids = table()
    s = assign_splits(meta, ids, SplitConfig(strategy="time"))
    for c in (0, 1):
        t = meta["first_ns"].to_numpy()[ids == c]
        part = s[ids == c]
        assert t[part == 0].max() < t[part == 1].min() and t[part == 1].max() < t[part == 2].min()
        assert np.bincount(part).tolist() == [80, 10, 10]


def test_seed_and_ratios():
    meta, ids = table()
    a = assign_splits(meta, ids, SplitConfig(strategy="flow", seed=1))
    b = assign_splits(meta, ids, SplitConfig(strategy="flow", seed=1))
    c = assign_splits(meta, ids, SplitConfig(strategy="flow", seed=2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    everything = assign_splits(meta, ids, SplitConfig(strategy="flow", ratios=(1, 0, 0)))
    assert (everything == 0).all()
    half = assign_splits(meta, ids, SplitConfig(strategy="flow", ratios=(1, 0, 1)))
    assert np.bincount(half, minlength=3).tolist() == [100, 0, 100]


def test_select_drops_duplicates_only_when_asked_and_caps_classes():
    meta, _ = table(dup_every=10)
    keep, dropped = select_flows(
        meta, CleaningConfig(duplicates="drop", min_per_class=0, max_per_class=None), 0, True
    )
    assert dropped == {"duplicate": 19}  # 20 flows share one hash: one is kept
    keep, dropped = select_flows(meta, CleaningConfig(max_per_class=30, min_per_class=0), 0, True)
    assert keep.sum() == 60 and dropped == {"class_cap": 140}
    keep, dropped = select_flows(
        meta, CleaningConfig(max_per_class=None, min_per_class=101), 0, True
    )
    assert keep.sum() == 0 and dropped == {"class_below_min": 200}
