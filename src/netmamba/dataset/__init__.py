"""Prepared datasets: cleaning, labels, splits, Parquet storage and the loader.

result = prepare(["captures/"], "data/ds", PrepareConfig())     # netmamba prepare
train = load_dataset("data/ds", "train")                         # arrays, labels, meta
extraction = extract_captures(["a.pcap"])                        # in memory (classify)
arrays = reextract("data/ds", "test", DebiasConfig.none())       # other de-biasing (audit)
"""

from netmamba.dataset.build import (
    PrepareError,
    PrepareResult,
    format_summary,
    merge_partials,
    prepare,
)
from netmamba.dataset.config import (
    SPLIT_NAMES,
    CleaningConfig,
    PrepareConfig,
    SplitConfig,
)
from netmamba.dataset.extract import Extraction, extract_captures, find_captures
from netmamba.dataset.loader import (
    DatasetError,
    FlowDataset,
    load_dataset,
    read_manifest,
    reextract,
)
from netmamba.dataset.store import META_COLUMNS

__all__ = [
    "META_COLUMNS",
    "SPLIT_NAMES",
    "CleaningConfig",
    "DatasetError",
    "Extraction",
    "FlowDataset",
    "PrepareConfig",
    "PrepareError",
    "PrepareResult",
    "SplitConfig",
    "extract_captures",
    "find_captures",
    "format_summary",
    "load_dataset",
    "merge_partials",
    "prepare",
    "read_manifest",
    "reextract",
]
