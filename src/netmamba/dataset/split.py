"""Selection (duplicates, per-class minimum and cap) and train / valid / test splits.

Everything here is a function of the metadata table in its global order (captures sorted by
path, flows in the order they ended) and the seed, so results never depend on file-system
listing order, on `--workers` or on `--shard`.

Split strategies (SPEC section 2), each stratified by class:
- `flow`: random per flow (the paper's; both directions of a session can land on both sides);
- `session` (default): the flows of one session (both directions, and later flows of the same
  5-tuple in the same capture) stay together;
- `file`: the flows of one capture file stay together;
- `time`: chronological per class: the earliest flows train, the latest test.
Identical samples (equal `sample_hash`) are merged into one group first, so they never land on
two sides. Groups are assigned in a seeded random order, each to the split that most lacks
flows of the group's classes relative to the target ratios (greedy stratification).
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from netmamba.dataset.config import SPLIT_NAMES, CleaningConfig, SplitConfig

if TYPE_CHECKING:
    import pandas as pd


def _class_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def select_flows(
    meta: pd.DataFrame, cleaning: CleaningConfig, seed: int, labelled: bool
) -> tuple[np.ndarray, Counter]:
    """(keep mask, dropped counts by reason) after duplicates, class minimum and class cap."""
    n = len(meta)
    keep = np.ones(n, bool)
    dropped: Counter[str] = Counter()
    if cleaning.duplicates == "drop" and n:
        dup = meta["sample_hash"].duplicated(keep="first").to_numpy()
        keep &= ~dup
        dropped["duplicate"] += int(dup.sum())
    if not labelled:
        return keep, dropped
    labels = meta["label"].to_numpy(dtype=object)
    counts = Counter(labels[keep].tolist())
    for name in sorted(counts):
        rows = np.flatnonzero(keep & (labels == name))
        if len(rows) < cleaning.min_per_class:
            keep[rows] = False
            dropped["class_below_min"] += len(rows)
        elif cleaning.max_per_class is not None and len(rows) > cleaning.max_per_class:
            chosen = _class_rng(seed, name).choice(len(rows), cleaning.max_per_class, replace=False)
            drop = np.ones(len(rows), bool)
            drop[chosen] = False
            keep[rows[drop]] = False
            dropped["class_cap"] += int(drop.sum())
    return keep, dropped


class _DisjointSets:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra  # the smaller id is the root: deterministic


def split_groups(meta: pd.DataFrame, strategy: str) -> np.ndarray:
    """Group id per flow (numbered by first appearance): flows of one group share a side."""
    n = len(meta)
    if strategy == "session":
        keys = list(zip(meta["capture"].tolist(), meta["session"].tolist(), strict=True))
    elif strategy == "file":
        keys = meta["capture"].tolist()
    else:
        keys = list(range(n))
    ids: dict = {}
    base = np.fromiter((ids.setdefault(k, len(ids)) for k in keys), np.int64, n)
    sets = _DisjointSets(len(ids))
    first: dict[str, int] = {}
    for g, h in zip(base.tolist(), meta["sample_hash"].tolist(), strict=True):
        if h in first:
            sets.union(first[h], g)
        else:
            first[h] = g
    roots = np.array([sets.find(g) for g in range(len(ids))], np.int64)
    _, dense = np.unique(roots, return_inverse=True)
    return dense[base] if n else base


def assign_splits(meta: pd.DataFrame, label_ids: np.ndarray, config: SplitConfig) -> np.ndarray:
    """Split index per flow (0 train, 1 valid, 2 test); see the module docstring."""
    n = len(meta)
    out = np.zeros(n, np.int8)
    if n == 0:
        return out
    ratios = np.asarray(config.ratios, float)
    groups = split_groups(meta, config.strategy)
    n_groups = int(groups.max()) + 1
    classes = label_ids.astype(np.int64)
    if config.strategy == "time":
        group_split = _chronological(groups, classes, meta["first_ns"].to_numpy(), ratios)
    else:
        group_split = _greedy(groups, classes, n_groups, ratios, config.seed)
    return group_split[groups]


def _group_classes(groups: np.ndarray, classes: np.ndarray) -> list[dict[int, int]]:
    per_group: list[dict[int, int]] = [{} for _ in range(int(groups.max()) + 1)]
    for g, c in zip(groups.tolist(), classes.tolist(), strict=True):
        d = per_group[g]
        d[c] = d.get(c, 0) + 1
    return per_group


def _greedy(
    groups: np.ndarray, classes: np.ndarray, n_groups: int, ratios: np.ndarray, seed: int
) -> np.ndarray:
    per_group = _group_classes(groups, classes)
    totals = Counter(classes.tolist())
    target = {c: ratios * t for c, t in totals.items()}
    current = {c: np.zeros(3) for c in totals}
    allowed = [s for s in range(3) if ratios[s] > 0]
    order = np.random.default_rng(seed).permutation(n_groups)
    out = np.zeros(n_groups, np.int8)
    for g in order.tolist():
        best, best_score = allowed[0], -np.inf
        counts = per_group[g]
        for s in allowed:
            score = 0.0
            for c, k in counts.items():
                score += k * (target[c][s] - current[c][s]) / totals[c]
            if score > best_score + 1e-12:
                best, best_score = s, score
        out[g] = best
        for c, k in counts.items():
            current[c][best] += k
    return out


def _chronological(
    groups: np.ndarray, classes: np.ndarray, first_ns: np.ndarray, ratios: np.ndarray
) -> np.ndarray:
    n_groups = int(groups.max()) + 1
    start = np.full(n_groups, np.iinfo(np.int64).max)
    np.minimum.at(start, groups, first_ns)
    size = np.bincount(groups, minlength=n_groups)
    first_row = np.full(n_groups, len(groups))
    np.minimum.at(first_row, groups, np.arange(len(groups)))
    group_class = classes[first_row]
    out = np.zeros(n_groups, np.int8)
    bounds = np.cumsum(ratios)
    for c in np.unique(group_class).tolist():
        members = np.flatnonzero(group_class == c)
        members = members[np.lexsort((members, start[members]))]  # by time, then id
        total = size[members].sum()
        done = np.cumsum(size[members]) - size[members]  # flows before each group
        position = (done + size[members] / 2) / total  # the group's middle, as a fraction
        out[members] = np.minimum(np.searchsorted(bounds, position, side="right"), 2)
    return out


def split_names(codes: Sequence[int]) -> list[str]:
    return [SPLIT_NAMES[c] for c in codes]
