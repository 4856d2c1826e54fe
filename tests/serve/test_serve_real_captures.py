"""Real captures (../shared/data) through the service: link types, pcapng, fragments, tunnels and
fuzzed files give the flows and labels `netmamba classify` gives them."""

from __future__ import annotations

from pathlib import Path

import pytest
import servemodel
from test_serve_matches_classify import TOLERANCE, by_flow, key, serve

from netmamba.classify import classify_captures

# Ethernet, Linux cooked (113), raw IP (101), BSD loopback (0), PPP (9), IPv4 (228), pcapng;
# IP fragments, IPv6, 4in6 and Teredo tunnels, QUIC, fuzzed and truncated files.
FILES = [
    "quickplay.pcap",
    "KakaoTalk_chat.pcap",
    "ocs.pcap",
    "nats.pcap",
    "dlt_ppp.pcap",
    "kerberos_fuzz.pcapng",
    "quic_frags_ch_in_multiple_packets.pcapng",
    "dns_fragmented.pcap",
    "ip_fragmented_garbage.pcap",
    "http_ipv6.pcap",
    "4in6tunnel.pcap",
    "teredo.pcap",
    "dhcp-fuzz.pcapng",
    "fuzz-2021-10-13.pcap",
    "whatsapp_voice_and_message.pcap",
    "tls_torrent.pcapng",
]


@pytest.mark.shared_data
def test_real_captures_give_the_flows_and_labels_classify_gives(
    shared_data: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "captures"
    folder.mkdir()
    for name in FILES:  # links to the real files (nothing is copied)
        (folder / name).symlink_to(shared_data / "ndpi-4.2" / "pcap" / name)
    model = servemodel.make_checkpoint(tmp_path / "model", flow={"mode": "bidirectional"})
    summary, records = serve(folder, model, tmp_path / "results.sqlite")
    expected = classify_captures([folder], model=model).flows
    stored = by_flow(records)
    assert len(expected) > 100 and len(stored) == len(expected) == summary.flows_classified
    assert summary.flows_lost == 0
    for row in expected.itertuples():
        r = stored[key(row.capture, row.src_ip, row.src_port, row.dst_ip, row.dst_port,
                       row.protocol, row.first_seen.value / 1e9)]  # fmt: skip
        assert r.confidence == pytest.approx(row.confidence, abs=TOLERANCE)
        if row.confidence - row.confidence_2 > TOLERANCE:
            assert r.label == row.label
