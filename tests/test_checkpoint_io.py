"""Checkpoint files: checksums, legacy files, permissions, stale temporaries, NaN/Inf refusal, unsafe pickles."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from attnseg.engine import checkpoint as ckpt_io
from attnseg.engine.checkpoint import CheckpointError, NonFiniteStateError

META = {"model": "tiny", "classes": {"names": ["a", "b"]}}


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.BatchNorm1d(64))


def stepped_optimizer(model, cls=torch.optim.AdamW):
    opt = cls(model.parameters(), lr=1e-3)
    model(torch.randn(4, 64)).sum().backward()
    opt.step()
    return opt


def training_state(tmp_path, model=None, opt=None) -> Path:
    model = model or tiny_model()
    opt = opt or stepped_optimizer(model)
    return ckpt_io.save_training_state(tmp_path / "last.pt", model, opt, {"step": 1, "epoch": 0, "batch_in_epoch": 1,
                                                                          "elapsed": 0.5}, META)


def flip(path: Path, offset: int, n: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    data[offset:offset + n] = bytes(b ^ 0xFF for b in data[offset:offset + n])
    path.write_bytes(bytes(data))


def safetensors_data_start(path: Path) -> int:
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


def zip_record_start(path: Path, record_suffix: str | None = None) -> tuple[int, int]:
    """(offset, size) of the stored data of the largest record (or the one ending in ``record_suffix``)."""
    with zipfile.ZipFile(path) as z:
        infos = [i for i in z.infolist() if record_suffix is None or i.filename.endswith(record_suffix)]
        info = max(infos, key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


# -- checksums -----------------------------------------------------------------------------------------------------
def test_weights_checksum_round_trip(tmp_path):
    from safetensors import safe_open
    model = tiny_model()
    path = ckpt_io.save_weights(tmp_path / "model.safetensors", model, META)
    with safe_open(str(path), "pt") as f:
        raw = f.metadata()
    assert raw[ckpt_io.META_CHECKSUM_ALG] == ckpt_io.CHECKSUM_ALG == "sha256-tensors-v1"
    assert len(raw[ckpt_io.META_CHECKSUM]) == 64 and json.loads(raw["attnseg"]) == META
    sd, meta = ckpt_io.read_checkpoint(path)
    assert meta == META and sd.keys() == model.state_dict().keys()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    assert raw[ckpt_io.META_CHECKSUM] == ckpt_io.tensors_checksum(model.state_dict())


def test_checksum_covers_name_dtype_shape_and_bytes():
    base = {"a": torch.arange(6, dtype=torch.float32), "b": torch.zeros(2, dtype=torch.bfloat16)}
    ref = ckpt_io.tensors_checksum(base)
    assert ckpt_io.tensors_checksum(dict(reversed(base.items()))) == ref  # key order does not matter
    variants = [{**base, "a": base["a"].reshape(2, 3)}, {**base, "a": base["a"].double()},
                {"c": base["a"], "b": base["b"]}, {**base, "a": base["a"] + 1e-6}]
    assert all(ckpt_io.tensors_checksum(v) != ref for v in variants)
    assert ckpt_io.tensors_checksum({"s": torch.tensor(1.0), "e": torch.empty(0), "m": torch.ones(2, dtype=torch.bool)})


def test_flipped_bytes_in_weights_are_detected(tmp_path):
    path = ckpt_io.save_weights(tmp_path / "model.safetensors", tiny_model(), META)
    flip(path, safetensors_data_start(path) + 1000)
    with pytest.raises(CheckpointError) as e:
        ckpt_io.read_checkpoint(path)
    msg = str(e.value)
    assert msg == (f"checkpoint {path} is corrupt: its tensors do not match the checksum stored when it was written; "
                   "use another checkpoint (model.safetensors, best.safetensors, last.pt of a run) or retrain")
    ckpt_io.save_weights(tmp_path / "best.safetensors", tiny_model(), META)  # the fix names what is there
    with pytest.raises(CheckpointError, match=r"use another checkpoint \(best\.safetensors in the same folder\)"):
        ckpt_io.read_checkpoint(path)


def test_training_state_checksum_round_trip_and_flipped_bytes(tmp_path):
    model = tiny_model()
    opt = stepped_optimizer(model)
    path = training_state(tmp_path, model, opt)
    state = ckpt_io.load_training_state(path)
    assert ckpt_io.PT_CHECKSUM not in state and state["meta"] == META and state["step"] == 1
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    fresh = tiny_model()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    fresh_opt.load_state_dict(state["optimizer"])  # what a resume does
    raw = torch.load(path, weights_only=True)
    assert raw[ckpt_io.PT_CHECKSUM]["alg"] == ckpt_io.CHECKSUM_ALG
    sgd = tiny_model()  # SGD without momentum: no optimiser tensors, so the largest record is the model's weight
    path = training_state(tmp_path, sgd, stepped_optimizer(sgd, torch.optim.SGD))
    offset, size = zip_record_start(path)
    assert size == 64 * 64 * 4
    flip(path, offset + 2048)  # 4 KiB of the 16 KiB weight: torch's zip reader does not notice
    with pytest.raises(CheckpointError, match="is corrupt: its tensors do not match the checksum") as e:
        ckpt_io.read_checkpoint(path)
    assert str(path) in str(e.value) and "retrain" in str(e.value)
    with pytest.raises(CheckpointError, match="is corrupt"):
        ckpt_io.load_training_state(path)


def test_flipped_optimizer_state_is_detected(tmp_path):
    path = training_state(tmp_path)
    offsets = []
    with zipfile.ZipFile(path) as z:
        names = [i.filename for i in z.infolist() if i.file_size == 64 * 64 * 4]
    assert len(names) == 3  # the weight, exp_avg, exp_avg_sq
    # flip each 16 KiB record in turn; every one is caught, whichever part it belongs to
    original = path.read_bytes()
    for name in names:
        path.write_bytes(original)
        offset, _ = zip_record_start(path, name)
        offsets.append(offset)
        flip(path, offset, 4096)
        with pytest.raises(CheckpointError, match=r"is corrupt: its (tensors|optimizer state tensors) do not match"):
            ckpt_io.load_training_state(path)
    assert len(set(offsets)) == 3


def test_files_without_checksum_still_load(tmp_path):
    from safetensors.torch import save_file
    model = tiny_model()
    sd = ckpt_io.plain_state_dict(model)
    save_file(sd, tmp_path / "old.safetensors", metadata={"attnseg": json.dumps(META)})
    torch.save({"model": sd, "optimizer": stepped_optimizer(model).state_dict(), "step": 3, "epoch": 0,
                "batch_in_epoch": 1, "elapsed": 1.0, "meta_json": json.dumps(META)}, tmp_path / "old.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("old.safetensors", "old.pt"):
            got, meta = ckpt_io.read_checkpoint(tmp_path / name)
            assert meta == META and all(torch.equal(got[k], v) for k, v in sd.items())
        assert ckpt_io.load_training_state(tmp_path / "old.pt")["step"] == 3


def test_checkpoint_from_a_newer_checksum_kind_says_upgrade(tmp_path):
    from safetensors.torch import save_file
    save_file({"w": torch.ones(3)}, tmp_path / "m.safetensors",
              metadata={"attnseg": "{}", ckpt_io.META_CHECKSUM: "00", ckpt_io.META_CHECKSUM_ALG: "blake3-v9"})
    with pytest.raises(CheckpointError, match="unknown kind 'blake3-v9'.*upgrade attnseg"):
        ckpt_io.read_checkpoint(tmp_path / "m.safetensors")


# -- unsafe pickles and wrong contents -------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": _Evil(marker), "meta_json": "{}"}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError) as e:
        ckpt_io.read_checkpoint(tmp_path / "last.pt")
    msg = str(e.value)
    assert "is not a trusted attnseg checkpoint" in msg and str(tmp_path / "last.pt") in msg
    assert "system" in msg and "weights_only" not in msg and "\n" not in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__  # torch's advice is not chained either
    assert not marker.exists()


@pytest.mark.parametrize("obj,needle", [(torch.zeros(3), "holds a Tensor"), ([1, 2], "holds a list"),
                                        ({"step": 1}, "lacks 'model'"), ({"model": [1]}, "not a dict of tensors")])
def test_pt_with_wrong_contents(tmp_path, obj, needle):
    torch.save(obj, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=needle) as e:
        ckpt_io.read_checkpoint(tmp_path / "x.pt")
    assert "written by attnseg train" in str(e.value)


def test_resume_needs_the_resume_keys(tmp_path):
    torch.save({"model": {"w": torch.ones(1)}, "meta_json": "{}"}, tmp_path / "last.pt")
    assert ckpt_io.read_checkpoint(tmp_path / "last.pt")[1] == {}
    with pytest.raises(CheckpointError, match="lacks 'optimizer', 'step'"):
        ckpt_io.load_training_state(tmp_path / "last.pt")


# -- permissions ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_of_a_plain_open(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        model = tiny_model()
        paths = [ckpt_io.save_weights(tmp_path / "model.safetensors", model, META),
                 training_state(tmp_path, model), ckpt_io.atomic_write_text(tmp_path / "a.txt", "x")]
        ckpt_io.atomic_write_text(tmp_path / "a.txt", "rewritten")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == mode
    assert {p.name: p.stat().st_mode & 0o777 for p in paths} == {p.name: mode for p in paths}


# -- stale temporaries ------------------------------------------------------------------------------------------------
KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from attnseg.engine.checkpoint import atomic_write
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a checkpoint" * 1000)
            f.flush()
        print(os.getpid(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # as kill -9 during torch.save
    atomic_write(sys.argv[1], write)
""")


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_temporary_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "last.pt"
    ckpt_io.atomic_write_text(target, "old")
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == -9, proc.stderr
    (left,) = temporaries(tmp_path)
    assert left.startswith(".last.pt.") and f"-{int(proc.stdout)}-" in left and target.read_text() == "old"
    ckpt_io.atomic_write_text(target, "new")
    assert temporaries(tmp_path) == [] and target.read_text() == "new"


def test_only_stale_temporaries_of_the_same_target_are_removed(tmp_path, monkeypatch):
    host, me = ckpt_io._HOST, os.getpid()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    old = time.time() - 2 * ckpt_io.STALE_TMP_AGE_S
    files = {  # name -> (age: "old" / "new", removed?)
        f".x.bin.{host}-{dead_pid}-abc123xy.tmp": ("new", True),  # writer died
        f".x.bin.{host}-{os.getppid()}-abc123xy.tmp": ("new", False),  # live writer (another process)
        f".x.bin.{host}-{me}-abc123xy.tmp": ("new", False),  # this process, possibly another thread
        f".x.bin.otherhost-{dead_pid}-abc123xy.tmp": ("new", False),  # another host: cannot tell yet
        f".x.bin.otherhost-{os.getppid()}-abc123xy.tmp": ("old", True),  # untouched for 2 h
        ".x.bin.k2j4_8ab.tmp": ("new", False),  # from an attnseg without pids in names: only by age
        ".x.bin.q9z8y7x6.tmp": ("old", True),
        f".x.bin.bak.{host}-{dead_pid}-abc123xy.tmp": ("old", False),  # a temporary of x.bin.bak
        f".y.bin.{host}-{dead_pid}-abc123xy.tmp": ("old", False),  # another target
        ".x.bin.notes.txt": ("old", False),
        "x.bin.tmp": ("old", False),
    }
    for name, (age, _) in files.items():
        (tmp_path / name).write_text("stale")
        if age == "old":
            os.utime(tmp_path / name, (old, old))
    ckpt_io.atomic_write_text(tmp_path / "x.bin", "data")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"x.bin"} | {n for n, (_, removed) in files.items() if not removed}
    # a temporary with our pid from before this process started (pid reuse across container restarts) is stale
    mine = tmp_path / f".x.bin.{host}-{me}-abc123xy.tmp"
    monkeypatch.setattr(ckpt_io, "_PROCESS_START", time.time() + 10)
    ckpt_io.atomic_write_text(tmp_path / "x.bin", "data")
    assert not mine.exists()


def test_temporaries_made_during_a_write_are_not_touched(tmp_path):
    target = tmp_path / "x.bin"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    name = f".x.bin.{ckpt_io._HOST}-{int(dead.stdout)}-abc123xy.tmp"
    future = time.time() + 60  # modified after the write started
    (tmp_path / name).write_text("x")
    os.utime(tmp_path / name, (future, future))
    assert ckpt_io.remove_stale_temporaries(target) == []
    assert ckpt_io.remove_stale_temporaries(target, before=future + 1) == [tmp_path / name]


# -- NaN / Inf ---------------------------------------------------------------------------------------------------------
def test_tensors_finite_names_the_bad_tensors():
    sd = {"a": torch.ones(3), "b": torch.tensor([1.0, float("nan")]), "c": torch.tensor([float("-inf")]),
          "n": torch.tensor([3]), "h": torch.tensor([float("inf")], dtype=torch.float16)}
    assert ckpt_io.tensors_finite(sd) == ["b", "c", "h"]
    assert ckpt_io.tensors_finite({"a": torch.ones(2)}) == []
    assert ckpt_io.tensors_finite({"state": {0: {"exp_avg": torch.tensor([float("nan")]), "step": 3.0}}}) == \
        ["state.0.exp_avg"]


def test_non_finite_weights_are_not_written(tmp_path):
    path = ckpt_io.save_weights(tmp_path / "model.safetensors", tiny_model(), META)
    before = path.read_bytes()
    model = tiny_model()
    with torch.no_grad():
        model[0].weight[3, 3] = float("nan")
        model[1].running_var[0] = float("inf")
    with pytest.raises(NonFiniteStateError) as e:
        ckpt_io.save_weights(path, model, META)
    assert isinstance(e.value, ValueError)
    assert e.value.names == ["0.weight", "1.running_var"] and e.value.total == 6 and e.value.path == path
    assert "2 of 6 model tensors are NaN or Inf (0.weight, 1.running_var)" in str(e.value)
    assert str(path) in str(e.value)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_non_finite_optimizer_state_is_not_written(tmp_path):
    model = tiny_model()
    opt = stepped_optimizer(model)
    opt.state[model[0].weight]["exp_avg_sq"][0, 0] = float("nan")
    with pytest.raises(NonFiniteStateError) as e:
        training_state(tmp_path, model, opt)
    assert "0 of 6 model tensors and 1 of 12 optimizer-state tensors are NaN or Inf" in str(e.value)
    assert e.value.names == ["optimizer.state.0.exp_avg_sq"]
    assert list(tmp_path.iterdir()) == []
    with torch.no_grad():
        model[0].bias.fill_(float("inf"))
    with pytest.raises(NonFiniteStateError, match=r"1 of 6 model tensors and 1 of 12 .*\(0\.bias, optimizer"):
        training_state(tmp_path, model, opt)


def test_a_flip_in_the_metadata_or_the_resume_state_is_caught(tmp_path):
    """The checksums cover more than the tensors: the safetensors metadata (classes, model options) and last.pt's
    step, RNG state and metadata."""
    import json as _json

    import torch as _torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from attnseg.engine import checkpoint as ck
    model = _torch.nn.Linear(2, 2)
    path = ck.save_weights(tmp_path / "w.safetensors", model, {"model": "x", "classes": {"names": ["a", "b"]}})
    with safe_open(str(path), "pt") as f:
        raw = dict(f.metadata())
    raw["attnseg"] = raw["attnseg"].replace('"a"', '"c"')  # same length, other class name
    save_file(ck.plain_state_dict(model), str(tmp_path / "m.safetensors"), metadata=raw)
    with pytest.raises(ck.CheckpointError, match="metadata"):
        ck.read_checkpoint(tmp_path / "m.safetensors")

    opt = _torch.optim.SGD(model.parameters(), lr=0.1)
    state = {"step": 5, "epoch": 0, "batch_in_epoch": 5, "elapsed": 1.0, "best": -1.0}
    ck.save_training_state(tmp_path / "last.pt", model, opt, state, {"model": "x"})
    payload = _torch.load(tmp_path / "last.pt", weights_only=True)
    payload["step"] = 6
    _torch.save(payload, tmp_path / "last.pt")
    with pytest.raises(ck.CheckpointError, match="step, RNG state and metadata"):
        ck.load_training_state(tmp_path / "last.pt")
    assert _json.loads(payload["meta_json"]) == {"model": "x"}
