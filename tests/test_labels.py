"""Label sources: folder per class, labels file by flow / MAC / capture, filters, errors."""

from __future__ import annotations

import pytest

import pcapgen as pg
from netmamba.capture import PacketBatch
from netmamba.flows import FlowConfig, FlowMeter
from netmamba.labels import AMBIGUOUS, LabelConfig, LabelError, LabelSource, normalise_mac

MAC_A = bytes.fromhex("0a0000000001")
MAC_B = bytes.fromhex("0a0000000002")


def flows(
    mode="unidirectional",
    client=("10.0.0.1", 1000),
    server=("10.0.0.2", 80),
    client_mac=MAC_A,
    server_mac=MAC_B,
):
    sent = pg.udp_flow(client, server, [("client", b"q"), ("server", b"r")])
    frames = []
    for s in sent:
        src, dst = (client_mac, server_mac) if s.from_client else (server_mac, client_mac)
        frames.append((s.ts_ns, pg.ethernet(s.ip, src_mac=src, dst_mac=dst), 1))
    return list(FlowMeter(FlowConfig(mode=mode)).run([PacketBatch.from_frames(frames)]))


def source(tmp_path, text, name="labels.csv", **kw):
    path = tmp_path / name
    path.write_text(text)
    return LabelSource(LabelConfig(source="file", path=str(path), **kw))


def test_folder_per_class_uses_the_first_folder_under_the_input():
    src = LabelSource(LabelConfig())
    f = flows()[0]
    assert src.for_capture("in/web/day1/a.pcap", "web/day1/a.pcap").label(f) == "web"
    assert src.for_capture("in/a.pcap", "a.pcap").label(f) is None  # directly in INPUT
    assert src.for_capture("a.pcap", None).label(f) is None  # given as a file
    assert LabelSource(LabelConfig(source="none")).for_capture("x", "c/x").label(f) is None


def test_flow_rows_match_either_direction_in_their_capture_only(tmp_path):
    src = source(
        tmp_path,
        "file,src_ip,src_port,dst_ip,dst_port,protocol,label\n"
        "a.pcap,10.0.0.2,80,10.0.0.1,1000,17,web\n",  # written server first
    )
    up, down = flows()
    labeller = src.for_capture("/data/x/a.pcap", None)
    assert labeller.label(up) == labeller.label(down) == "web"
    assert src.for_capture("/data/x/b.pcap", None).label(up) is None
    assert src.for_capture("/data/x/aa.pcap", None).label(up) is None


def test_ipv6_flow_rows_match_whatever_the_address_spelling(tmp_path):
    src = source(
        tmp_path,
        "file\tsrc_ip\tsrc_port\tdst_ip\tdst_port\tprotocol\tapp\n"
        "v6.pcap\t2001:0db8:0000::0001\t1000\t2001:db8::2\t80\t17\tvoip\n",
        name="labels.tsv",
        column="app",
    )
    (f,) = flows("bidirectional", ("2001:db8::1", 1000), ("2001:db8::2", 80))
    assert src.for_capture("v6.pcap", None).label(f) == "voip"


def test_mac_rows_label_flows_from_or_to_the_host_and_can_be_scoped_to_a_folder(tmp_path):
    src = source(
        tmp_path,
        "mac,label,file\n"
        "0A-00-00-00-00-02,camera,\n"  # any capture
        "0a:00:00:00:00:01,plug,PlugFolder\n",  # only captures under a folder PlugFolder
    )
    up, _ = flows()
    assert src.for_capture("d/CamFolder/s1.pcap", "CamFolder/s1.pcap").label(up) == "camera"
    assert src.for_capture("d/PlugFolder/s1.pcap", "PlugFolder/s1.pcap").label(up) == AMBIGUOUS
    other, _ = flows(client_mac=bytes(6), server_mac=bytes.fromhex("ffffffffffff"))
    assert src.for_capture("d/CamFolder/s1.pcap", None).label(other) is None


def test_flow_rows_win_over_mac_rows_and_mac_rows_over_capture_rows(tmp_path):
    src = source(
        tmp_path,
        "file,src_ip,src_port,dst_ip,dst_port,protocol,mac,label\n"
        "a.pcap,,,,,,,whole-file\n"
        ",,,,,,0a:00:00:00:00:01,by-mac\n"
        "a.pcap,10.0.0.1,1000,10.0.0.2,80,17,,by-flow\n",
    )
    up, _ = flows()
    other, _ = flows(client=("10.9.9.9", 5))
    nomac, _ = flows(client=("10.9.9.9", 5), client_mac=bytes(6), server_mac=bytes(6))
    labeller = src.for_capture("a.pcap", None)
    assert (labeller.label(up), labeller.label(other), labeller.label(nomac)) == (
        "by-flow",
        "by-mac",
        "whole-file",
    )


def test_disagreeing_rows_make_a_flow_ambiguous(tmp_path):
    src = source(
        tmp_path,
        "file,src_ip,src_port,dst_ip,dst_port,protocol,label\n"
        "a.pcap,10.0.0.1,1000,10.0.0.2,80,17,web\n"
        "a.pcap,10.0.0.2,80,10.0.0.1,1000,17,chat\n",
    )
    assert src.for_capture("a.pcap", None).label(flows()[0]) == AMBIGUOUS


def test_filters_keep_only_matching_rows(tmp_path):
    text = (
        "file,src_ip,src_port,dst_ip,dst_port,protocol,label,guessed\n"
        "a.pcap,10.0.0.1,1000,10.0.0.2,80,17,web,1\n"
    )
    assert source(tmp_path, text).for_capture("a.pcap", None).label(flows()[0]) == "web"
    with pytest.raises(LabelError, match="no usable row"):
        source(tmp_path, text, filters=["guessed=0"])
    kept = source(tmp_path, text, filters=["guessed!=0"])
    assert kept.for_capture("a.pcap", None).label(flows()[0]) == "web"


def test_bad_label_files_have_clear_errors(tmp_path):
    with pytest.raises(LabelError, match="no label column 'label'; its columns are file, app"):
        source(tmp_path, "file,app\na.pcap,web\n")
    with pytest.raises(LabelError, match="needs a 'file' column"):
        source(tmp_path, "host,label\nx,web\n")
    with pytest.raises(LabelError, match="line 2: 'zz' is not a MAC address"):
        source(tmp_path, "mac,label\nzz,web\n")
    with pytest.raises(LabelError, match="line 2: bad flow 5-tuple"):
        source(tmp_path, "file,src_ip,src_port,dst_ip,dst_port,protocol,label\na,x,1,y,2,6,w\n")
    with pytest.raises(LabelError, match="no column 'nope'"):
        source(tmp_path, "file,label\na.pcap,w\n", filters=["nope=1"])
    with pytest.raises(LabelError, match="not found"):
        LabelSource(LabelConfig(source="file", path=str(tmp_path / "missing.csv")))


def test_mac_normalisation():
    assert normalise_mac("AA-BB-CC-dd-ee-ff") == "aa:bb:cc:dd:ee:ff"
    assert normalise_mac("aabb.ccdd.eeff") == "aa:bb:cc:dd:ee:ff"
    assert normalise_mac("aa:bb:cc:dd:ee") is None
    assert normalise_mac("gg:bb:cc:dd:ee:ff") is None
