#!/usr/bin/env python3
"""Labels for the public datasets of the NetMamba+ paper, from their published folder layouts.

    python scripts/public_datasets.py iscx-vpn2016 ~/data/ISCXVPN2016 -o iscx-labels.csv
    netmamba prepare ~/data/ISCXVPN2016 -o data/iscx --labels iscx-labels.csv

Each dataset names its classes its own way; this script turns that into a labels CSV (`file,label`
rows: a capture file or a folder, matched by the end of its path) that `netmamba prepare
--labels` reads, and prints the prepare command. Datasets that already have one folder per class
need no labels file (the script says so and prints the command).

Layouts after unpacking, and the label each capture gets:
- iscx-vpn2016: VPN/*.pcap(ng), NonVPN/*.pcap(ng) -> VPN-<service> / NonVPN-<service>, the
  service (browsing, email, chat, streaming, file, voip, p2p) read from the file name;
- ustc-tfc2016: Benign/<App>.pcap or Benign/<App>/*.pcap, Malware/<Family>.pcap -> <App> or
  <Family> (20 classes: 10 benign applications, 10 malware families);
- cic-iot2022: <N-Category>/<Subcategory>/**.pcap -> <Category>-<Subcategory>;
- cstnet-tls13: <Application>/*.pcap -> the folder (120 classes; no labels file needed);
- cipherspectrum: <cipher suite>/<application>/*.pcap -> the folder under one suite;
- crossplatform: <platform>/<application>/**.pcap -> the folder under one platform.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

CAPTURE = re.compile(r"\.(pcap|pcapng|cap)(\.gz)?$", re.IGNORECASE)

# ISCX-VPN2016: service by file-name prefix (lower case, VPN files start with "vpn_").
ISCX_SERVICES = {
    "browsing": ("netflix", "spotify", "voipbuster"),
    "email": ("email",),
    "chat": (
        "icq_chat",
        "icqchat",
        "aim_chat",
        "aimchat",
        "skype_chat",
        "facebook_chat",
        "facebookchat",
        "hangouts_chat",
        "gmailchat",
    ),
    "streaming": ("vimeo", "youtube"),
    "file": ("ftps", "sftp", "skype_file", "scp", "ftp"),
    "voip": ("skype_audio", "facebook_audio", "hangouts_audio"),
    "p2p": ("bittorrent", "torrent"),
}


def captures(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and CAPTURE.search(p.name))


def iscx_vpn2016(root: Path) -> list[tuple[str, str]]:
    rows = []
    for path in captures(root):
        name = path.name.strip().lower()
        vpn = name.startswith("vpn_")
        stem = name[4:] if vpn else name
        service = next(
            (s for s, prefixes in ISCX_SERVICES.items() if stem.startswith(prefixes)), None
        )
        if service is None:
            print(f"skipped (no service for this name): {path.relative_to(root)}", file=sys.stderr)
            continue
        rows.append((path.relative_to(root).as_posix(), f"{'VPN' if vpn else 'NonVPN'}-{service}"))
    return rows


def ustc_tfc2016(root: Path) -> list[tuple[str, str]]:
    rows = []
    for group in ("Benign", "Malware"):
        folder = root / group
        if not folder.is_dir():
            raise SystemExit(
                f"error: {folder} not found; expected {root}/Benign and {root}/Malware"
            )
        for item in sorted(folder.iterdir()):
            if item.is_dir():
                rows.append((item.relative_to(root).as_posix(), item.name))
            elif CAPTURE.search(item.name):
                label = re.sub(r"-\d+$", "", CAPTURE.sub("", item.name))  # SMB-1 -> SMB
                rows.append((item.relative_to(root).as_posix(), label))
    return rows


def cic_iot2022(root: Path) -> list[tuple[str, str]]:
    rows = []
    for category in sorted(p for p in root.iterdir() if p.is_dir()):
        short = re.sub(r"^\d+-", "", category.name)
        for sub in sorted(p for p in category.iterdir() if p.is_dir()):
            rows.append((sub.relative_to(root).as_posix(), f"{short}-{sub.name}"))
    return rows


FOLDER_PER_CLASS = {
    "cstnet-tls13": "the class folders are the first level: prepare the root folder",
    "cipherspectrum": "prepare one cipher-suite folder (e.g. mix/ or aes-256-gcm/) as INPUT",
    "crossplatform": "prepare one platform folder (e.g. android/ or ios/) as INPUT",
}
LABELLERS = {"iscx-vpn2016": iscx_vpn2016, "ustc-tfc2016": ustc_tfc2016, "cic-iot2022": cic_iot2022}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted([*LABELLERS, *FOLDER_PER_CLASS]))
    parser.add_argument("root", type=Path, help="the unpacked dataset folder")
    parser.add_argument("-o", "--output", type=Path, help="labels CSV to write")
    args = parser.parse_args()
    if not args.root.is_dir():
        print(f"error: {args.root} is not a folder", file=sys.stderr)
        return 2
    common = "--mode unidirectional --split session"  # the paper's flows; our grouped split
    if args.dataset in FOLDER_PER_CLASS:
        print(f"{args.dataset}: no labels file needed; {FOLDER_PER_CLASS[args.dataset]}:")
        print(f"  netmamba prepare {args.root} -o data/{args.dataset} {common}")
        return 0
    if args.output is None:
        parser.error(f"{args.dataset} needs -o LABELS.csv")
    rows = LABELLERS[args.dataset](args.root)
    if not rows:
        print(f"error: no captures found under {args.root}", file=sys.stderr)
        return 1
    with open(args.output, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["file", "label"])
        writer.writerows(rows)
    labels = sorted({label for _, label in rows})
    print(f"wrote {args.output}: {len(rows)} rows, {len(labels)} classes: {', '.join(labels)}")
    print(f"  netmamba prepare {args.root} -o data/{args.dataset} --labels {args.output} {common}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
