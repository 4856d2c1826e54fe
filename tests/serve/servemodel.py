"""A small real model and real captures for the service's end-to-end tests.

`make_checkpoint` writes a fine-tuned-classifier checkpoint folder the way `netmamba finetune`
does (weights + checkpoint.json with label names, logit scale, unknown detector and the flow,
feature and de-biasing settings of the training data), from a tiny `fast`-preset model with
random weights: the service and `classify` must agree on every flow whatever the weights.
`write_traffic` writes a capture (tests/pcapgen.py) with flows of every length class.
"""

from __future__ import annotations

import json
from pathlib import Path

import pcapgen

TINY = {"d_model": 16, "depth": 1, "d_state": 4, "drop_path": 0.0}
LABELS = ["web", "video", "chat", "voip", "mail", "game"]
T0 = 1_650_000_000_000_000_000


def make_checkpoint(
    folder: Path,
    *,
    seed: int = 0,
    labels: list[str] | None = None,
    flow: dict | None = None,
    min_packets: int | None = None,
    threshold: float | None = 1.6,
    preset: str = "fast",
    overrides: dict | None = None,
) -> Path:
    """A classifier checkpoint; the training data had the paper's geometry (5 x (80 + 240)
    bytes, 20 sizes), which the `fast` model crops to 5 x (64 + 64)."""
    import torch

    from netmamba.debias import DebiasConfig
    from netmamba.evaluate.ood import UnknownDetector
    from netmamba.features import FeatureConfig
    from netmamba.flows import FlowConfig
    from netmamba.models import ModelConfig, build_classifier
    from netmamba.models.weights import save_checkpoint

    labels = labels or LABELS
    torch.manual_seed(seed)
    config = ModelConfig.preset(
        preset, head_bias=True, **(TINY if overrides is None else overrides)
    )
    model = build_classifier(config, len(labels)).eval()
    spread_head(model, len(labels))
    extra = {
        "label_names": labels,
        "logit_scale": 30.0,
        "temperature": 3.0,
        "unknown_detector": UnknownDetector(temperature=3.0, threshold=threshold).to_dict(),
        "features": config.feature_config().to_dict(),
        "data_features": FeatureConfig().to_dict(),
        "flow": FlowConfig(**(flow or {})).to_dict(),
        "debias": DebiasConfig().to_dict(),
    }
    if min_packets is not None:
        extra["cleaning"] = {"min_packets": min_packets}
    save_checkpoint(folder, model, extra)
    json.loads((folder / "checkpoint.json").read_text())  # written and readable
    return folder


def spread_head(model, classes: int) -> None:  # type: ignore[no-untyped-def]
    """Point the head along the directions in which a random encoder's features vary most
    (they share a large common part), so that different flows get different labels, as a
    trained model's would."""
    import torch

    from netmamba.models import random_batch

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        f = model.features(random_batch(model.config, 512, generator=g))  # (512, D)
        mean = f.mean(0)
        _, s, v = torch.linalg.svd(f - mean, full_matrices=False)
        directions = v[:classes] / (s[:classes, None] / (512**0.5))  # unit variance each
        model.head.weight.copy_(directions * 0.1)  # x logit scale 30 / T 3: a few units
        model.head.bias.copy_(-(directions * 0.1) @ mean)


def traffic(n_sessions: int = 12, start_ns: int = T0, subnet: int = 1) -> list:
    """(ts_ns, frame) of: TCP sessions of 3 to 40 packets (some past M_seq = 20 packets, so
    classified as soon as they are ready, with packets after that), UDP exchanges of 1 to 6
    datagrams, single packets; interleaved by time, 1 ms apart inside a conversation."""
    conversations = []
    for i in range(n_sessions):
        n_payloads = (i * 7) % 38  # 3-way handshake + 0..37 segments
        payloads = [
            ("client" if k % 3 else "server", bytes([65 + (i + k) % 26]) * (20 + (i * k) % 700))
            for k in range(n_payloads)
        ]
        conversations.append(
            pcapgen.tcp_session(
                (f"10.{subnet}.0.{i + 1}", 40000 + i),
                ("192.0.2.10", 443 if i % 2 else 8080),
                payloads,
                start_ns=start_ns + i * 3_000_000,
                gap_ns=1_000_000,
            )
        )
        udp = [("client" if k % 2 == 0 else "server", b"u%d-%d" % (i, k) * (1 + k)) for k in
               range(1 + i % 6)]  # fmt: skip
        conversations.append(
            pcapgen.udp_flow(
                (f"10.{subnet}.1.{i + 1}", 50000 + i),
                ("198.51.100.7", 3478 + i % 3),
                udp,
                start_ns=start_ns + i * 2_500_000 + 500_000,
                gap_ns=1_500_000,
            )
        )
    sent = [s for conv in conversations for s in conv]
    return pcapgen.frames(pcapgen.merge(sent))


def write_traffic(path: Path, **kw: object) -> Path:
    return pcapgen.write_pcap(path, traffic(**kw), pcapgen.LINKTYPE_ETHERNET)


def slowed(factory, delay_s: float):  # type: ignore[no-untyped-def]
    """The model of `factory`, `delay_s` slower per batch (a picklable factory for the worker):
    inference that a replay easily outruns."""
    import time

    predict = factory()

    def slow_predict(arrays):  # type: ignore[no-untyped-def]
        time.sleep(delay_s)
        return predict(arrays)

    return slow_predict
