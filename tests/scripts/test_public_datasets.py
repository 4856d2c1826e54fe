"""scripts/public_datasets.py: labels from the public datasets' file and folder names."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "public_datasets.py"
spec = importlib.util.spec_from_file_location("public_datasets", SCRIPT)
public_datasets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(public_datasets)


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_iscx_vpn2016_services_come_from_file_names(tmp_path):
    touch(
        tmp_path,
        "VPN/vpn_skype_audio1.pcap",
        "VPN/vpn_bittorrent.pcap",
        "NonVPN/facebook_chat_4a.pcapng",
        "NonVPN/youtube1.pcap",
        "NonVPN/scpDown1.pcap",
        "NonVPN/mystery.pcap",
    )
    rows = dict(public_datasets.iscx_vpn2016(tmp_path))
    assert rows == {
        "VPN/vpn_skype_audio1.pcap": "VPN-voip",
        "VPN/vpn_bittorrent.pcap": "VPN-p2p",
        "NonVPN/facebook_chat_4a.pcapng": "NonVPN-chat",
        "NonVPN/youtube1.pcap": "NonVPN-streaming",
        "NonVPN/scpDown1.pcap": "NonVPN-file",
    }


def test_ustc_tfc2016_classes_are_files_or_folders(tmp_path):
    touch(tmp_path, "Benign/Gmail.pcap", "Benign/SMB/SMB-1.pcap", "Malware/Nsis-ay.pcap")
    touch(tmp_path, "Benign/Weibo-2.pcap")
    rows = dict(public_datasets.ustc_tfc2016(tmp_path))
    assert rows == {
        "Benign/Gmail.pcap": "Gmail",
        "Benign/SMB": "SMB",
        "Benign/Weibo-2.pcap": "Weibo",
        "Malware/Nsis-ay.pcap": "Nsis-ay",
    }


def test_cic_iot2022_labels_join_category_and_subcategory(tmp_path):
    touch(tmp_path, "1-Power/Audio/a.pcap", "6-Attacks/Flood/b.pcap")
    assert public_datasets.cic_iot2022(tmp_path) == [
        ("1-Power/Audio", "Power-Audio"),
        ("6-Attacks/Flood", "Attacks-Flood"),
    ]


def test_the_script_writes_a_labels_csv_prepare_reads(tmp_path):
    touch(tmp_path / "iscx", "VPN/vpn_email2a.pcap")
    out = tmp_path / "labels.csv"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "iscx-vpn2016", str(tmp_path / "iscx"), "-o", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "netmamba prepare" in done.stdout
    with open(out) as f:
        assert list(csv.reader(f)) == [["file", "label"], ["VPN/vpn_email2a.pcap", "VPN-email"]]
