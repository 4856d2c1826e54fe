"""Small labelled datasets for the training, evaluation and CLI tests, made the real way:
captures written with pcapgen, turned into a dataset by `netmamba.dataset.prepare`.

Three classes that a model can separate from any modality:
    web     TCP to port 443, a 3-way handshake, then 2 requests of 90-110 bytes starting
            b"GET " and 2 responses of 700-900 bytes starting b"HTTP", 1-5 ms apart
    stream  UDP to port 5004, 5 datagrams of 1000-1200 bytes starting b"\\x80\\x60", 20 ms apart
    chat    TCP to port 5222, 3 messages of 20-40 bytes starting b"<m>", each answered by 8-16
            bytes starting b"<a>", 0.3-0.8 s apart
Flows are uni-directional (each TCP session gives two flows), so a class has about two flows per
session. A fourth class, "game", exists to play the part of traffic a model never saw.

The tiny model reads less than the data holds (the data: 3 packets of 40 + 40 bytes, sequences
of 10; the model: 32 + 32 bytes, sequences of 8), so training and evaluation crop.
"""

from __future__ import annotations

import random
from pathlib import Path

import pcapgen as pg
from netmamba.dataset import CleaningConfig, PrepareConfig, SplitConfig, prepare
from netmamba.features import FeatureConfig
from netmamba.labels import LabelConfig

S = 1_000_000_000
CLASSES = ("web", "stream", "chat")
GEOMETRY = FeatureConfig(n_packets=3, header_bytes=40, payload_bytes=40, seq_len=10)
TINY_MODEL = {
    "d_model": 32,
    "depth": 2,
    "d_state": 4,
    "n_packets": 3,
    "header_bytes": 32,
    "payload_bytes": 32,
    "stride": 8,
    "seq_len": 8,
    "decoder_dim": 32,
    "decoder_depth": 1,
    "drop_path": 0.0,
}


def _payload(rng: random.Random, head: bytes, low: int, high: int) -> bytes:
    n = rng.randint(low, high)
    return head + bytes(rng.randrange(256) for _ in range(n - len(head)))


def _conversation(kind: str, i: int, rng: random.Random, start_ns: int) -> list:
    client = (f"10.{i % 200}.{i // 200}.{rng.randint(2, 250)}", rng.randint(20000, 60000))
    if kind == "web":
        payloads = []
        for _ in range(2):
            payloads.append(("client", _payload(rng, b"GET ", 90, 110)))
            payloads.append(("server", _payload(rng, b"HTTP", 700, 900)))
        return pg.tcp_session(
            client,
            ("192.0.2.10", 443),
            payloads,
            start_ns=start_ns,
            gap_ns=rng.randint(1, 5) * 1_000_000,
        )
    if kind == "stream":
        payloads = [("client", _payload(rng, b"\x80\x60", 1000, 1200)) for _ in range(5)]
        return pg.udp_flow(
            client, ("198.51.100.7", 5004), payloads, start_ns=start_ns, gap_ns=20_000_000
        )
    if kind == "chat":
        payloads = []
        for _ in range(3):
            payloads.append(("client", _payload(rng, b"<m>", 20, 40)))
            payloads.append(("server", _payload(rng, b"<a>", 8, 16)))
        return pg.tcp_session(
            client,
            ("203.0.113.5", 5222),
            payloads,
            start_ns=start_ns,
            gap_ns=rng.randint(300, 800) * 1_000_000,
        )
    if kind == "game":
        payloads = [("client", _payload(rng, b"\xfe\xfd", 50, 70)) for _ in range(6)]
        return pg.udp_flow(
            client, ("192.0.2.99", 27015), payloads, start_ns=start_ns, gap_ns=50_000_000
        )
    raise ValueError(kind)


def write_captures(
    root: Path,
    sessions: int = 30,
    classes: tuple[str, ...] = CLASSES,
    seed: int = 0,
    files: int = 2,
) -> Path:
    """root/<class>/part-<k>.pcap with `sessions` conversations per class over `files` files."""
    rng = random.Random(seed)
    for c, kind in enumerate(classes):
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(files):
            frames = []
            for i in range(f, sessions, files):
                start = (1_700_000_000 + 1000 * c + 10 * i) * S
                frames += pg.frames(_conversation(kind, i, rng, start))
            frames.sort(key=lambda x: x[0])
            pg.write_pcap(folder / f"part-{f}.pcap", frames)
    return root


def prepare_toy(
    out: Path,
    sessions: int = 30,
    classes: tuple[str, ...] = CLASSES,
    seed: int = 0,
    labelled: bool = True,
    ratios: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> Path:
    """A prepared dataset of the toy classes (split by flow, 60:20:20) at `out`."""
    captures = write_captures(out.parent / f"{out.name}-captures", sessions, classes, seed)
    config = PrepareConfig(
        features=GEOMETRY,
        labels=LabelConfig() if labelled else LabelConfig(source="none"),
        cleaning=CleaningConfig(min_per_class=1, protocol_filter="tcp_udp"),
        split=SplitConfig(strategy="flow", ratios=ratios, seed=seed),
    )
    prepare([captures], out, config, progress=False)
    return out


# ---- runs shared by the test modules of one session (each is made once) --------------------

TINY_FINETUNE = {
    "preset": "fast",
    "model": TINY_MODEL,
    "train": {"batch_size": 16, "epochs": 25, "log_every": 5},
    "optim": {"base_lr": 0.16, "layer_decay": 1.0},
    "warmup_epochs": 1,
    "baseline": {"max_iter": 30},
}
TINY_PRETRAIN = {
    "preset": "fast",
    "model": TINY_MODEL,
    "train": {"batch_size": 16, "steps": 8, "log_every": 2, "checkpoint_every": 4},
}
_CACHE: dict[str, Path] = {}


def cached(name: str, factory, make) -> Path:  # type: ignore[no-untyped-def]
    """`make(folder)` once per test session (folder from pytest's tmp_path_factory)."""
    if name not in _CACHE or not _CACHE[name].exists():
        folder = factory.mktemp(name) / name
        make(folder)
        _CACHE[name] = folder
    return _CACHE[name]


def toy_dataset(factory) -> Path:  # type: ignore[no-untyped-def]
    """The labelled toy dataset (3 classes)."""
    return cached("toy", factory, prepare_toy)


def unseen_dataset(factory) -> Path:  # type: ignore[no-untyped-def]
    """Flows of the 'game' class only, prepared like the toy dataset (unknown-class tests)."""
    return cached("unseen", factory, lambda f: prepare_toy(f, 15, ("game",), seed=7))


def pretrained_run(factory) -> Path:  # type: ignore[no-untyped-def]
    from netmamba.train.pretrain import PretrainConfig, pretrain

    data = toy_dataset(factory)
    return cached(
        "pre",
        factory,
        lambda f: pretrain([data], f, PretrainConfig.from_dict(TINY_PRETRAIN), progress=False),
    )


def finetuned_run(factory) -> Path:  # type: ignore[no-untyped-def]
    """A tiny NetMamba+ fine-tuned from scratch on the toy dataset (25 epochs, accurate)."""
    from netmamba.train.finetune import FinetuneConfig, finetune

    data = toy_dataset(factory)
    return cached(
        "ft",
        factory,
        lambda f: finetune(data, f, FinetuneConfig.from_dict(TINY_FINETUNE), progress=False),
    )
