"""Unusable checkpoints given to ``attnseg eval`` / ``attnseg predict``: one line naming the file and the fix.

A tiny model is trained once for the module; each case damages a copy of its checkpoints in a run directory of
its own, runs the command, and checks exit code 2, the message, no traceback, and that the run directory is
exactly as it was (a failed load must not write, rename or delete anything).
"""

from __future__ import annotations

import json
import os
import random
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from attnseg.cli import main

from .conftest import expect_bad, tree_digest

DATA = "synthetic:train=4,val=2,size=32x32"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of a freshly trained run's checkpoints: {"model.safetensors": ..., "last.pt": ...}."""
    run = tmp_path_factory.mktemp("trained") / "run"
    rc = main(["train", "model=fcn8s_resnet18", f"data={DATA}", "crop=[32,32]", "batch_size=2", "iters=1",
               "warmup_iters=1", "val_interval=0", "workers=0", "progress=false", "precision=fp32", f"run_dir={run}"])
    assert rc == 0
    return {n: (run / "checkpoints" / n).read_bytes() for n in ("model.safetensors", "last.pt")}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    from PIL import Image
    path = tmp_path_factory.mktemp("img") / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


# -- the damage ------------------------------------------------------------------------------------------------------
def _header_len(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


def _flip(data: bytes, offset: int, n: int = 4096) -> bytes:
    out = bytearray(data)
    out[offset:offset + n] = bytes(b ^ 0xFF for b in out[offset:offset + n])
    return bytes(out)


def _random(n: int) -> bytes:
    return random.Random(0).randbytes(n)


def bitflip_safetensors(t):
    data = t["model.safetensors"]
    return _flip(data, 8 + _header_len(data) + len(data) // 3)


def bitflip_last_pt(t):
    data = t["last.pt"]
    with zipfile.ZipFile(__import__("io").BytesIO(data)) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    return _flip(data, info.header_offset + 30 + name_len + extra_len + info.file_size // 2)


def broken_header_json(t):
    data = t["model.safetensors"]
    pos = data.index(b'"', 8)
    return data[:pos] + b"\x00" + data[pos + 1:]  # a control character where a quote was


def broken_attnseg_metadata(t):
    data = t["model.safetensors"]
    n = _header_len(data)
    header = json.loads(data[8:8 + n])
    header["__metadata__"]["attnseg"] = header["__metadata__"]["attnseg"][:-40]  # cut: not JSON any more
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    return struct.pack("<Q", len(new)) + new + data[8 + n:]


def foreign_safetensors(t):
    from safetensors.torch import save
    return save({"conv.weight": torch.ones(4, 3, 3, 3)})


def torch_bytes(obj) -> bytes:
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class Malicious:
    marker: Path

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_last_pt(marker: Path):
    def make(t):
        m = Malicious()
        m.marker = marker
        return torch_bytes({"model": m, "meta_json": "{}"})
    return make


# id: (command, file name in checkpoints/ (None: none), make(trained) -> bytes, pass the run dir?, needles)
TRUSTED_FIX = "from a source you trust"
OTHER_FIX = "use another checkpoint"
KIND_FIX = "written by attnseg train"
CASES = {
    "truncated-half-safetensors": ("eval", "model.safetensors", lambda t: t["model.safetensors"][
        :len(t["model.safetensors"]) // 2], True, ("is truncated", OTHER_FIX, "retrain")),
    "truncated-in-header": ("predict", "model.safetensors", lambda t: t["model.safetensors"][
        :8 + _header_len(t["model.safetensors"]) // 2], False, ("is truncated", OTHER_FIX)),
    "truncated-last-pt": ("eval", "last.pt", lambda t: t["last.pt"][:len(t["last.pt"]) // 2], False,
                          ("is truncated", OTHER_FIX)),
    "zero-byte-safetensors": ("eval", "model.safetensors", lambda t: b"", False, ("is empty (0 bytes)", OTHER_FIX)),
    "zero-byte-last-pt": ("predict", "last.pt", lambda t: b"", True, ("is empty (0 bytes)", OTHER_FIX)),
    "bit-flipped-safetensors": ("eval", "model.safetensors", bitflip_safetensors, True,
                                ("is corrupt: its tensors do not match the checksum stored when it was written",
                                 OTHER_FIX, "retrain")),
    "bit-flipped-safetensors-predict": ("predict", "model.safetensors", bitflip_safetensors, False,
                                        ("is corrupt", "checksum", OTHER_FIX)),
    "bit-flipped-last-pt": ("predict", "last.pt", bitflip_last_pt, False, ("is corrupt", "checksum", OTHER_FIX)),
    "random-bytes-safetensors": ("eval", "model.safetensors", lambda t: _random(100_000), False,
                                 ("is not a safetensors file", OTHER_FIX)),
    "random-bytes-pt": ("predict", "last.pt", lambda t: _random(100_000), False,
                        ("is not a PyTorch checkpoint", KIND_FIX)),
    "broken-header-json": ("eval", "model.safetensors", broken_header_json, False,
                           ("safetensors header", "is not valid", OTHER_FIX)),
    "broken-attnseg-metadata": ("predict", "model.safetensors", broken_attnseg_metadata, True,
                                ("is corrupt", "its metadata", OTHER_FIX)),  # caught by its checksum
    "foreign-safetensors": ("eval", "model.safetensors", foreign_safetensors, False,
                            ("carries no attnseg metadata", "not written by attnseg")),
    "foreign-safetensors-predict": ("predict", "model.safetensors", foreign_safetensors, True,
                                    ("carries no attnseg metadata", "not written by attnseg")),
    "plain-tensor-pt": ("eval", "last.pt", lambda t: torch_bytes(torch.zeros(3)), False,
                        ("is not an attnseg training state", "holds a Tensor", KIND_FIX)),
    "pt-dict-without-model": ("predict", "last.pt", lambda t: torch_bytes({"step": 3, "meta_json": "{}"}), True,
                              ("lacks 'model'", KIND_FIX)),
    "pt-list": ("eval", "last.pt", lambda t: torch_bytes([1, 2, 3]), True, ("holds a list", KIND_FIX)),
    "run-dir-without-checkpoints": ("eval", None, None, True,
                                    ("holds no checkpoint", "checkpoints/model.safetensors", "train into it first")),
    "run-dir-without-checkpoints-predict": ("predict", None, None, True, ("holds no checkpoint", "train into it")),
}


def command(cmd: str, arg, image: Path, tmp_path: Path) -> list:
    if cmd == "eval":
        return ["eval", arg, "--data", DATA]
    return ["predict", arg, image, "--out", tmp_path / "pred"]


def check(res, tmp_path, *needles) -> str:
    text = expect_bad(res, *needles)
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("attnseg: error: "), res.err
    assert not (tmp_path / "pred").exists()
    return text


@pytest.mark.parametrize("case", list(CASES))
def test_unusable_checkpoint(case, trained, image, tmp_path, run_cli):
    cmd, name, make, pass_dir, needles = CASES[case]
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: fcn8s_resnet18\n")
    ckpt = None
    if name is not None:
        ckpt = run / "checkpoints" / name
        ckpt.write_bytes(make(trained))
    before = tree_digest(run)
    res = run_cli(*command(cmd, run if pass_dir or ckpt is None else ckpt, image, tmp_path))
    check(res, tmp_path, str(ckpt if ckpt is not None else run), *needles)
    assert tree_digest(run) == before


@pytest.mark.parametrize("cmd,pass_dir", [("eval", True), ("predict", False)])
def test_malicious_pickle_is_never_run(cmd, pass_dir, trained, image, tmp_path, run_cli):
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.pt"
    ckpt.write_bytes(malicious_last_pt(marker)(trained))
    before = tree_digest(run)
    res = run_cli(*command(cmd, run if pass_dir else ckpt, image, tmp_path))
    text = check(res, tmp_path, str(ckpt), "is not a trusted attnseg checkpoint", "system", TRUSTED_FIX)
    assert "weights_only" not in text and "weights-only" not in text.lower()
    assert not marker.exists()
    assert tree_digest(run) == before


@pytest.mark.parametrize("cmd", ["eval", "predict"])
def test_missing_checkpoint(cmd, image, tmp_path, run_cli):
    missing = tmp_path / "runs" / "nope" / "model.safetensors"
    res = run_cli(*command(cmd, missing, image, tmp_path))
    check(res, tmp_path, str(missing), "does not exist", "pass a run directory")
    assert not (tmp_path / "runs").exists()


def test_the_intact_checkpoints_work(trained, image, tmp_path, run_cli):
    """The control: the same copies, undamaged, evaluate and predict (so the failures above are the damage's)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name, data in trained.items():
        (run / "checkpoints" / name).write_bytes(data)
    assert run_cli("eval", run / "checkpoints" / "last.pt", "--data", DATA).rc == 0
    assert run_cli("predict", run, image, "--out", tmp_path / "pred").rc == 0
    assert (tmp_path / "pred" / "img_ids.png").is_file()
