"""Where flow labels come from: a folder per class, a labels file, or nothing (pre-training).

- `directories` (default): the class is the first-level folder under each INPUT folder
  (`INPUT/<class>/.../capture.pcap`, at any depth below it). Captures directly in INPUT, or
  given as single files, have no label.
- `file`: a CSV or TSV with a header row. Each row maps to a label (the `column` setting) one of:
    * a flow: `file` plus `src_ip, src_port, dst_ip, dst_port, protocol` (either direction
      matches, so it labels both uni-directional flows of a session);
    * a host: `mac` (optionally with `file`): every flow from or to that MAC address;
    * a capture: `file` alone: every flow of that capture.
  A `file` value names a capture file or a folder holding captures: it matches a capture whose
  path, or the path of a folder above it, ends with it (`a.pcap` matches `x/y/a.pcap`; `y`
  and `x/y` match every capture under a folder `x/y`). So a MAC row with the device's folder
  labels that host only in the captures of its own folder (IoT Sentinel: two devices that
  talk through one hub share the hub's MAC address).
  A flow gets the label of the most specific row kind that matches it (flow, then host, then
  capture); rows of that kind that disagree make the flow `ambiguous` (dropped, counted).
  `filters` keep only rows whose column equals (`col=value`) or differs from (`col!=value`)
  a value, e.g. `application_is_guessed=0` for the nfstream labels of ../shared/data.
- `none`: every flow unlabelled (label -1), nothing dropped for want of a label.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

from netmamba.capture.parse import flow_key
from netmamba.config import Config, ConfigError

if TYPE_CHECKING:
    from netmamba.flows import Flow

SOURCES = ("directories", "file", "none")
AMBIGUOUS = "\0ambiguous"  # returned for a flow whose matching rows disagree

_FILE_COLUMNS = ("file", "capture", "pcap", "filename", "path")
_MAC_COLUMNS = ("mac", "mac_address", "host_mac")
_TUPLE_COLUMNS = {
    "src_ip": ("src_ip", "src_addr", "source_ip"),
    "dst_ip": ("dst_ip", "dst_addr", "destination_ip"),
    "src_port": ("src_port", "sport", "source_port"),
    "dst_port": ("dst_port", "dport", "destination_port"),
    "protocol": ("protocol", "proto", "ip_proto"),
}
_HEX_MAC = re.compile(r"^[0-9a-f]{12}$")


class LabelError(ValueError):
    """The labels file or its settings cannot be used; the message says how to fix it."""


@dataclass
class LabelConfig(Config):
    """Where labels come from (see the module docstring)."""

    source: str = "directories"  # directories | file | none
    path: str | None = None  # the labels file (source = file)
    column: str = "label"  # the labels file's column holding the label
    filters: list[str] = field(default_factory=list)  # "col=value" / "col!=value" row filters

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"LabelConfig.source must be one of {', '.join(SOURCES)}")
        if self.source == "file" and not self.path:
            raise ConfigError("LabelConfig.path is needed when labels come from a file")

    @property
    def labelled(self) -> bool:
        return self.source != "none"


def normalise_mac(text: str) -> str | None:
    """'AA-BB-CC-DD-EE-FF', 'aabb.ccdd.eeff', ... -> 'aa:bb:cc:dd:ee:ff' (None if not a MAC)."""
    digits = re.sub(r"[^0-9a-fA-F]", "", text).lower()
    if not _HEX_MAC.match(digits) or len(re.sub(r"[0-9a-fA-F:.\- ]", "", text)):
        return None
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def mac_text(mac: bytes | None) -> str | None:
    return ":".join(f"{b:02x}" for b in mac) if mac else None


class CaptureLabeller:
    """Labels the flows of one capture."""

    def __init__(
        self,
        folder_label: str | None = None,
        flow_labels: dict[bytes, set[str]] | None = None,
        mac_labels: dict[str, set[str]] | None = None,
        file_labels: set[str] | None = None,
    ) -> None:
        self.folder_label = folder_label
        self.flow_labels = flow_labels or {}
        self.mac_labels = mac_labels or {}
        self.file_labels = file_labels or set()

    def label(self, flow: Flow) -> str | None:
        """The flow's label, None (no label) or AMBIGUOUS."""
        if self.folder_label is not None:
            return self.folder_label
        if self.flow_labels:
            found = self.flow_labels.get(flow.session_key)
            if found:
                return _one(found)
        if self.mac_labels:
            found = set()
            for mac in (flow.src_mac, flow.dst_mac):
                if mac is not None:
                    found |= self.mac_labels.get(mac_text(mac) or "", set())
            if found:
                return _one(found)
        if self.file_labels:
            return _one(self.file_labels)
        return None


def _one(labels: set[str]) -> str:
    return next(iter(labels)) if len(labels) == 1 else AMBIGUOUS


@dataclass
class _Row:
    parts: tuple[str, ...]  # the file value as path components ('' = any file)
    label: str


class LabelSource:
    """Makes a `CaptureLabeller` for each capture (picklable: sent to worker processes)."""

    def __init__(self, config: LabelConfig) -> None:
        self.config = config
        # rows by the last component of their file value ('' = any capture)
        self._flow_rows: dict[str, list[tuple[_Row, bytes]]] = {}
        self._mac_rows: dict[str, list[tuple[_Row, str]]] = {}
        self._file_rows: dict[str, list[_Row]] = {}
        self.rows = 0
        if config.source == "file":
            assert config.path is not None
            self._load(Path(config.path))

    def for_capture(self, path: str, relative: str | None) -> CaptureLabeller:
        """`path`: the capture; `relative`: its path under the INPUT folder it was found in
        (None when given as a file)."""
        source = self.config.source
        if source == "none":
            return CaptureLabeller()
        if source == "directories":
            parts = PurePath(relative).parts if relative else ()
            return CaptureLabeller(folder_label=parts[0] if len(parts) >= 2 else None)
        cap_parts = PurePath(path).parts
        names = ("", *set(cap_parts))
        flows: dict[bytes, set[str]] = {}
        macs: dict[str, set[str]] = {}
        files: set[str] = set()
        for name in names:
            for row, key in self._flow_rows.get(name, ()):
                if _matches(cap_parts, row.parts):
                    flows.setdefault(key, set()).add(row.label)
            for row, mac in self._mac_rows.get(name, ()):
                if _matches(cap_parts, row.parts):
                    macs.setdefault(mac, set()).add(row.label)
            for row in self._file_rows.get(name, ()):
                if _matches(cap_parts, row.parts):
                    files.add(row.label)
        return CaptureLabeller(None, flows, macs, files)

    def _load(self, path: Path) -> None:
        import pandas as pd

        if not path.is_file():
            raise LabelError(f"{path}: labels file not found")
        try:
            with open(path, encoding="utf-8-sig") as f:
                first = f.readline()
            sep = "\t" if path.suffix.lower() == ".tsv" or "\t" in first else ","
            table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
        except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise LabelError(f"{path}: cannot read as CSV/TSV: {exc}") from None
        table.columns = [c.strip() for c in table.columns]
        columns = list(table.columns)
        cfg = self.config
        if cfg.column not in columns:
            raise LabelError(
                f"{path}: no label column {cfg.column!r}; its columns are {', '.join(columns)} "
                "(choose one with --label-column)"
            )
        for spec in cfg.filters:
            table = _filter(table, spec, path)
        pick = {c.lower(): c for c in columns}
        file_col = next((pick[c] for c in _FILE_COLUMNS if c in pick), None)
        mac_col = next((pick[c] for c in _MAC_COLUMNS if c in pick), None)
        tuple_cols = {
            k: next((pick[c] for c in names if c in pick), None)
            for k, names in _TUPLE_COLUMNS.items()
        }
        has_tuple = all(tuple_cols.values())
        if file_col is None and mac_col is None:
            raise LabelError(
                f"{path}: needs a 'file' column (capture file, optionally with the flow 5-tuple "
                "src_ip, src_port, dst_ip, dst_port, protocol) or a 'mac' column; it has "
                + ", ".join(columns)
            )
        for n, rec in enumerate(table.to_dict("records"), start=2):
            label = str(rec[cfg.column]).strip()
            if not label:
                continue
            parts = PurePath(rec[file_col].strip()).parts if file_col and rec[file_col] else ()
            where = f"{path}, line {n}"
            if has_tuple and parts and str(rec[tuple_cols["src_ip"]]).strip():
                key = _row_key(rec, tuple_cols, where)
                self._flow_rows.setdefault(parts[-1], []).append((_Row(parts, label), key))
            elif mac_col and str(rec[mac_col]).strip():
                mac = normalise_mac(str(rec[mac_col]))
                if mac is None:
                    raise LabelError(f"{where}: {rec[mac_col]!r} is not a MAC address")
                self._mac_rows.setdefault(parts[-1] if parts else "", []).append(
                    (_Row(parts, label), mac)
                )
            elif parts:
                self._file_rows.setdefault(parts[-1], []).append(_Row(parts, label))
            else:
                continue
            self.rows += 1
        if not self.rows:
            raise LabelError(
                f"{path}: no usable row (after the filters {cfg.filters or 'none'}): every row "
                f"needs a non-empty {cfg.column!r} and a file, flow or MAC to match"
            )


def _matches(capture: tuple[str, ...], value: tuple[str, ...]) -> bool:
    """Whether a file value names the capture or a folder above it (see the docstring)."""
    if not value:
        return True
    n = len(value)
    return any(capture[k - n : k] == value for k in range(n, len(capture) + 1))


def _filter(table, spec: str, path: Path):  # type: ignore[no-untyped-def]
    negate = "!=" in spec
    col, _, value = spec.partition("!=" if negate else "=")
    col, value = col.strip(), value.strip()
    if not _ or not col:
        raise LabelError(f"label filter {spec!r}: expected COLUMN=VALUE or COLUMN!=VALUE")
    if col not in table.columns:
        raise LabelError(
            f"{path}: label filter {spec!r}: no column {col!r}; columns: {', '.join(table.columns)}"
        )
    keep = table[col].str.strip() == value
    return table[~keep] if negate else table[keep]


def _row_key(rec: dict, cols: dict, where: str) -> bytes:
    try:
        src = ipaddress.ip_address(str(rec[cols["src_ip"]]).strip())
        dst = ipaddress.ip_address(str(rec[cols["dst_ip"]]).strip())
        sport = int(float(rec[cols["src_port"]] or 0))
        dport = int(float(rec[cols["dst_port"]] or 0))
        proto = int(float(rec[cols["protocol"]]))
    except ValueError as exc:
        raise LabelError(f"{where}: bad flow 5-tuple: {exc}") from None
    if src.version != dst.version:
        raise LabelError(f"{where}: source and destination are not the same IP version")
    _, key = flow_key(src.version, proto, src.packed, dst.packed, sport, dport)
    return key[1:]
