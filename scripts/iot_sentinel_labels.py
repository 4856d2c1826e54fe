"""Write a labels CSV (mac,label,file) for the IoT Sentinel captures, by device MAC address.

IoT Sentinel (Miettinen et al., ICDCS 2017) has one folder per device (`captures/<Device>/`)
with `_iotdevice-mac.txt` holding the device's MAC address. Other hosts appear in the same
captures (the gateway, the phone that sets the device up), so flows are labelled by that MAC,
not by folder. The 31 devices are 27 types: four types have two devices each, whose folders
differ only by a trailing number (EdimaxCam1/2, EdnetCam1/2, WeMoInsightSwitch/2,
WeMoSwitch/2); `--by type` (default) merges those, `--by device` keeps 31 classes.

Each row is scoped to its device's folder (`file` column): two pairs of devices talk through
a hub and share its MAC address (HueSwitch via HueBridge, D-LinkDoorSensor via D-LinkHomeHub),
so a MAC labels flows only in the captures of the device being set up.

    python scripts/iot_sentinel_labels.py ../shared/data/iot-sentinel/captures -o macs.csv
    netmamba prepare ../shared/data/iot-sentinel/captures -o data/iot --labels macs.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

# The device folders that are a second (or first) device of a type with two devices.
SAME_TYPE = {
    "EdimaxCam1": "EdimaxCam",
    "EdimaxCam2": "EdimaxCam",
    "EdnetCam1": "EdnetCam",
    "EdnetCam2": "EdnetCam",
    "WeMoInsightSwitch": "WeMoInsightSwitch",
    "WeMoInsightSwitch2": "WeMoInsightSwitch",
    "WeMoSwitch": "WeMoSwitch",
    "WeMoSwitch2": "WeMoSwitch",
}


def normalise_mac(text: str) -> str:
    digits = "".join(c for c in text.lower() if c in "0123456789abcdef")
    if len(digits) != 12:
        raise ValueError(f"not a MAC address: {text.strip()!r}")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def rows(captures: Path, by: str) -> list[tuple[str, str, str]]:
    out = []
    for folder in sorted(p for p in captures.iterdir() if p.is_dir()):
        mac_file = folder / "_iotdevice-mac.txt"
        if not mac_file.is_file():
            print(f"skipping {folder}: no _iotdevice-mac.txt", file=sys.stderr)
            continue
        mac = normalise_mac(mac_file.read_text())
        label = SAME_TYPE.get(folder.name, folder.name) if by == "type" else folder.name
        out.append((mac, label, folder.name))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("captures", type=Path, help="the IoT Sentinel captures/ folder")
    parser.add_argument("-o", "--output", type=Path, required=True, help="labels CSV to write")
    parser.add_argument("--by", choices=("type", "device"), default="type")
    args = parser.parse_args(argv)
    if not args.captures.is_dir():
        parser.error(f"{args.captures}: not a folder")
    table = rows(args.captures, args.by)
    if not table:
        parser.error(f"{args.captures}: no device folder with an _iotdevice-mac.txt")
    with open(args.output, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mac", "label", "file"])
        w.writerows(table)
    print(f"wrote {len(table)} devices, {len({r[1] for r in table})} labels to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
