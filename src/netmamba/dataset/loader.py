"""Loading a prepared dataset: the arrays the models read, labels, metadata, manifest.

    ds = load_dataset("data/iot", "train")
    ds.arrays["bytes"]      # uint8 [n, M_b * (N_h + N_p)], a view of the Parquet column buffer
    ds.labels               # int64 [n], -1 = unlabelled; ds.label_names[i] names class i
    ds.meta                 # pandas DataFrame, one row per flow (capture, 5-tuple, times, ...)
    ds.crop(FeatureConfig(n_packets=3, payload_bytes=100))   # arrays for a smaller model input
    ds.redebias(DebiasConfig.none())                          # `bytes` with other de-biasing

Array columns come out of Arrow without a Python object per row (one bulk copy at most).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from netmamba.dataset.build import FORMAT
from netmamba.dataset.config import SPLIT_NAMES, PrepareConfig
from netmamba.dataset.store import META_COLUMNS, column_array, read_table
from netmamba.debias import DebiasConfig
from netmamba.features import (
    ARRAY_NAMES,
    RAW_ARRAY_NAMES,
    FeatureConfig,
    crop_arrays,
    empty_arrays,
    redebias,
)

if TYPE_CHECKING:
    import pandas as pd


class DatasetError(ValueError):
    """A folder is not a prepared dataset, or the request does not fit it."""


@dataclass
class FlowDataset:
    """The flows of one split (or several) of a prepared dataset."""

    arrays: dict[str, np.ndarray]  # ARRAY_NAMES -> [n, ...]
    labels: np.ndarray  # int64 [n]; -1 when unlabelled
    label_names: list[str]
    meta: pd.DataFrame
    manifest: dict
    raw: dict[str, np.ndarray]  # RAW_ARRAY_NAMES when the dataset keeps them, else empty
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def config(self) -> PrepareConfig:
        return PrepareConfig.from_dict(self.manifest["config"])

    @property
    def feature_config(self) -> FeatureConfig:
        return self.config.features

    def crop(self, feature_config: FeatureConfig) -> dict[str, np.ndarray]:
        """The arrays for a smaller geometry (see `netmamba.features.crop_arrays`)."""
        return crop_arrays(self.arrays, self.feature_config, feature_config)

    def redebias(self, debias: DebiasConfig) -> dict[str, np.ndarray]:
        """The arrays of the same flows, in the same order, with `bytes` de-biased by other
        switches (the shortcut audit). Needs a dataset prepared with keep_raw_bytes."""
        if not self.raw:
            raise DatasetError(
                "this dataset was prepared without raw bytes (keep_raw_bytes false): prepare it "
                "again to re-apply de-biasing"
            )
        out = dict(self.arrays)
        out["bytes"] = redebias(
            self.raw["raw_bytes"],
            self.arrays["header_lens"],
            self.arrays["payload_lens"],
            self.raw["packet_dirs"],
            self.feature_config,
            debias,
        )
        return out


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        hint = (
            " (it is a partial result of --shard: merge the shards with --merge)"
            if (path / "partial.json").exists()
            else ""
        )
        raise DatasetError(
            f"{path}: not a prepared dataset (no manifest.json){hint}; make one with "
            "`netmamba prepare`"
        ) from None
    except ValueError as exc:
        raise DatasetError(f"{path}/manifest.json: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{path}: manifest.json is not a netmamba dataset manifest")
    return manifest


def load_dataset(path: str | Path, split: str | None = "train", *, raw: bool = True) -> FlowDataset:
    """One split ('train', 'valid', 'test') of a prepared dataset, or every split (None or
    'all', in that order). `raw=False` skips the raw bytes (less memory; no `redebias`)."""
    path = Path(path)
    manifest = read_manifest(path)
    if split in (None, "all"):
        wanted = list(SPLIT_NAMES)
    elif split in SPLIT_NAMES:
        wanted = [split]
    else:
        raise DatasetError(f"unknown split {split!r}: use one of {', '.join(SPLIT_NAMES)} or all")
    files = [path / f for s in wanted for f in manifest["splits"][s]["files"]]
    config = PrepareConfig.from_dict(manifest["config"])
    raw_names = [k for k in RAW_ARRAY_NAMES if raw and k in manifest["arrays"]]
    label_names = list(manifest["label_names"])
    if not files:
        import pandas as pd

        arrays = empty_arrays(config.features, raw=bool(raw_names))
        meta = pd.DataFrame({c: [] for c in (*META_COLUMNS, "split")})
        return FlowDataset(
            {k: arrays[k] for k in ARRAY_NAMES},
            np.zeros(0, np.int64),
            label_names,
            meta,
            manifest,
            {k: arrays[k] for k in raw_names},
            path,
        )
    columns = [*ARRAY_NAMES, *raw_names, *META_COLUMNS, "label_id", "split"]
    try:
        table = read_table(files, columns=columns)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read the dataset's Parquet files: {exc}") from None
    arrays = {k: column_array(table, k) for k in ARRAY_NAMES}
    raw_arrays = {k: column_array(table, k) for k in raw_names}
    labels = table.column("label_id").to_numpy().astype(np.int64, copy=False)
    meta = table.select([*META_COLUMNS, "split"]).to_pandas()
    return FlowDataset(arrays, labels, label_names, meta, manifest, raw_arrays, path)


def reextract(path: str | Path, split: str | None, debias: DebiasConfig) -> dict[str, np.ndarray]:
    """The arrays of a prepared dataset's split with other de-biasing switches: the same flows
    in the same order as `load_dataset(path, split)` (the shortcut audit)."""
    return load_dataset(path, split).redebias(debias)
