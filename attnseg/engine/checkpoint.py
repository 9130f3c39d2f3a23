"""Checkpoints: written atomically, carrying their metadata and a checksum, loaded without executing pickled code.

Two files in ``run_dir/checkpoints/``:
- ``last.pt``: everything needed to resume (model, optimiser, step, epoch position, elapsed time, RNG state,
  metadata), saved with ``torch.save`` and read with ``torch.load(weights_only=True)``;
- ``model.safetensors`` (and ``best.safetensors``): the weights alone, with the metadata as a JSON string in the
  safetensors header, for ``attnseg eval`` / ``predict`` / ``export``.

Every write goes to a temporary file in the same folder, is flushed to disk, then renamed over the target, so an
interruption leaves either the old file or the new one, never half of one. The file gets the mode a plain
``open()`` would give it (``0666 & ~umask``). Temporaries left behind by writers that died (``kill -9``, power
loss) are removed by the next write of the same target: see :func:`remove_stale_temporaries`.

Integrity: both formats store a checksum of their tensors (:data:`CHECKSUM_ALG`, see :func:`tensors_checksum`),
verified on load; files written before checksums existed load as before. Every unreadable file raises a
:class:`CheckpointError` (a ``ValueError``) whose message is one line naming the file and saying what to do.
Model or optimiser state holding NaN/Inf is never written: :class:`NonFiniteStateError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import socket
import struct
import tempfile
import time
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

log = logging.getLogger(__name__)

#: the checksum stored with every checkpoint: sha256 over, for each tensor in sorted name order, its name, dtype,
#: shape and raw (little-endian, C-order) bytes. Stored next to the digest so that it can change later.
CHECKSUM_ALG = "sha256-tensors-v1"
#: safetensors metadata keys (strings) of the checksum
META_CHECKSUM, META_CHECKSUM_ALG = "attnseg_checksum", "attnseg_checksum_alg"
#: safetensors metadata key of the sha256 of the ``attnseg`` metadata JSON (classes, model options, preprocessing)
META_META_CHECKSUM = "attnseg_meta_sha256"
#: ``last.pt`` payload key of ``{"alg": CHECKSUM_ALG, "model": hex, "optimizer": hex}``
PT_CHECKSUM = "attnseg_checksum"
#: what ``attnseg eval`` / ``predict`` look for in a run directory, in this order
RUN_DIR_CANDIDATES = ("model.safetensors", "last.pt", "best.safetensors")
#: keys of ``last.pt`` that resuming needs
RESUME_KEYS = ("model", "optimizer", "step", "epoch", "batch_in_epoch", "elapsed")
#: a temporary untouched for this long is stale whoever wrote it (a write rewrites its file within seconds)
STALE_TMP_AGE_S = 3600.0

_PROCESS_START = time.time()  # temporaries carrying our pid but older than this come from an earlier process
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname().split(".")[0]) or "host"
_TMP_OWNED = re.compile(r"^(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[a-z0-9_]+$")  # .NAME.<host>-<pid>-<random>.tmp
_TMP_LEGACY = re.compile(r"^[a-z0-9_]{8}$")  # .NAME.<random>.tmp, written by attnseg before temporaries had a pid


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message (one line) names the file, what is wrong and what to do."""

    def __init__(self, path, problem: str, fix: str | None = None):
        self.path = Path(path)
        self.problem = problem
        self.fix = fix if fix is not None else _other_checkpoints(self.path)
        super().__init__(f"checkpoint {path} {problem}; {self.fix}")


class NonFiniteStateError(ValueError):
    """Refused to write a checkpoint whose model or optimiser state holds NaN/Inf (the file on disk is untouched).

    ``path``: the checkpoint not written; ``names``: the non-finite tensors (model names first, optimiser state
    as ``optimizer.state.<param index>.<key>``); ``total``: how many floating-point tensors were checked."""

    def __init__(self, path, names: list[str], total: int, model_bad: int, model_total: int):
        self.path, self.names, self.total = Path(path), list(names), total
        first = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        parts = [f"{model_bad} of {model_total} model tensors"]
        if total > model_total:
            parts.append(f"{len(names) - model_bad} of {total - model_total} optimizer-state tensors")
        super().__init__(f"refusing to write checkpoint {path}: {' and '.join(parts)} are NaN or Inf ({first}); "
                         "the file on disk was left as it was")


def _other_checkpoints(path: Path) -> str:
    others = [n for n in RUN_DIR_CANDIDATES if n != path.name and (path.parent / n).is_file()]
    if others:
        return f"use another checkpoint ({', '.join(others)} in the same folder) or retrain"
    return "use another checkpoint (model.safetensors, best.safetensors, last.pt of a run) or retrain"


WRONG_KIND_FIX = "pass a run directory or a model.safetensors, best.safetensors or last.pt written by attnseg train"


# -- writing ---------------------------------------------------------------------------------------------------
def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # no /proc: the classic read-by-setting (not thread-safe, but only for a moment)
    os.umask(old)
    return old


def _pid_alive(pid: int) -> bool:
    if os.name != "posix" or pid <= 0:
        return True  # cannot tell: keep (the age rule still applies)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def remove_stale_temporaries(path: str | Path, before: float | None = None, keep: str | Path | None = None
                             ) -> list[Path]:
    """Delete temporaries of ``path`` left by interrupted writes; returns what was removed.

    Only files named like this module's own temporaries of this target (``.NAME.<host>-<pid>-<random>.tmp``,
    or ``.NAME.<random>.tmp`` from attnseg versions without a pid), in the target's folder, not ``keep``, last
    modified before ``before`` (default: now) are considered; one is stale when
    - it names this host and its pid is not a running process (the writer died), or names our own pid but
      predates this process (an earlier process with the same pid, as in containers);
    - or it was last modified more than :data:`STALE_TMP_AGE_S` ago (other hosts sharing the folder, pid reuse,
      old-style names): a live write rewrites its temporary within seconds.
    A temporary of a live writer on this host is never touched, so concurrent writers of one target are safe."""
    path = Path(path)
    before = time.time() if before is None else before
    prefix, removed = f".{path.name}.", []
    keep = os.path.basename(keep) if keep is not None else None
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")) or name == keep:
            continue
        middle = name[len(prefix):-len(".tmp")]
        owned, legacy = _TMP_OWNED.match(middle), _TMP_LEGACY.match(middle)
        if not (owned or legacy):
            continue  # not one of ours (e.g. the temporary of a target whose name extends this one)
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not entry.is_file(follow_symlinks=False) or st.st_mtime >= before:
            continue
        stale = st.st_mtime < before - STALE_TMP_AGE_S
        if owned and owned["host"] == _HOST:
            pid = int(owned["pid"])
            stale = stale or (st.st_mtime < _PROCESS_START if pid == os.getpid() else not _pid_alive(pid))
        if stale:
            try:
                os.unlink(entry.path)
            except OSError:
                continue
            log.info("removed %s (%d bytes), left by an interrupted write", entry.path, st.st_size)
            removed.append(Path(entry.path))
    return removed


def atomic_write(path: str | Path, write_fn) -> Path:
    """Call ``write_fn(tmp_path)`` then fsync and rename the result onto ``path``.

    The file gets mode ``0666 & ~umask``, as ``open(path, "w")`` would give a new file. Before writing, the
    temporaries of ``path`` left by dead writers are removed (:func:`remove_stale_temporaries`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    remove_stale_temporaries(path, before=started)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}-", suffix=".tmp", dir=path.parent)
    try:
        os.close(fd)
        write_fn(tmp)
        # mkstemp makes 0600; set the mode after write_fn, which may have replaced the file (safetensors does)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous, de-duplicated CPU copies (channels_last and shared tensors are fine for torch.save but not
    for safetensors)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in unwrap(model).state_dict().items()}


# -- integrity ---------------------------------------------------------------------------------------------------
def _leaves(obj, prefix: str = ""):
    """(dotted name, leaf) of nested dicts / lists / tuples, dict keys in sorted order."""
    if isinstance(obj, Mapping):
        for k in sorted(obj, key=str):
            yield from _leaves(obj[k], f"{prefix}{k}.")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1], obj


def _float_tensors(obj):
    return [(n, t) for n, t in _leaves(obj)
            if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())]


def tensors_finite(state_dict) -> list[str]:
    """Names of the floating-point tensors holding NaN or Inf (empty: all finite). ``state_dict``: name ->
    tensor; nested dicts / lists (an optimiser's ``state_dict()``) are walked, with dotted names."""
    return [n for n, t in _float_tensors(state_dict) if not bool(torch.isfinite(t.detach()).all())]


def check_finite(path, model_sd, optimizer_sd=None) -> None:
    """Raise :class:`NonFiniteStateError` if the model state (or the optimiser's tensors) holds NaN/Inf."""
    model_total = len(_float_tensors(model_sd))
    bad = tensors_finite(model_sd)
    total, opt_bad = model_total, []
    if optimizer_sd is not None:
        state = optimizer_sd.get("state", {}) if isinstance(optimizer_sd, Mapping) else optimizer_sd
        total += len(_float_tensors(state))
        opt_bad = [f"optimizer.state.{n}" for n in tensors_finite(state)]
    if bad or opt_bad:
        raise NonFiniteStateError(path, bad + opt_bad, total, len(bad), model_total)


def tensors_checksum(tree) -> str:
    """:data:`CHECKSUM_ALG` hex digest of the tensors in ``tree`` (a state dict, or nested dicts / lists whose
    other leaves enter the digest through their ``repr``)."""
    h = hashlib.sha256()
    for name, v in _leaves(tree):
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous().reshape(-1)
            h.update(f"{name}\0{str(v.dtype).removeprefix('torch.')}\0{list(v.shape)}\0{t.numel()}\0".encode())
            h.update(t.view(torch.uint8).numpy())
        else:
            h.update(f"{name}\0{type(v).__name__}\0{v!r}\0".encode())
    return h.hexdigest()


def _corrupt(path, what: str = "tensors") -> CheckpointError:
    return CheckpointError(path, f"is corrupt: its {what} do not match the checksum stored when it was written")


def _check_alg(path, alg) -> None:
    if alg != CHECKSUM_ALG:
        raise CheckpointError(path, f"carries a checksum of unknown kind {alg!r}",
                              "it was written by a newer attnseg: upgrade attnseg to read it")


# -- last.pt -------------------------------------------------------------------------------------------------------
def save_training_state(path, model, optimizer, state: dict, meta: dict) -> Path:
    """Write ``last.pt``; raises :class:`NonFiniteStateError` (and writes nothing) on NaN/Inf state."""
    model_sd, opt_sd = plain_state_dict(model), optimizer.state_dict()
    check_finite(path, model_sd, opt_sd)
    payload = {"model": model_sd, "optimizer": opt_sd,
               "rng_cpu": torch.get_rng_state(), "meta_json": json.dumps(meta), **state}
    if torch.cuda.is_available():
        payload["rng_cuda"] = torch.cuda.get_rng_state_all()
    # "rest": the step, epoch position, RNG states and metadata, so that a flip there is caught as well
    payload[PT_CHECKSUM] = {"alg": CHECKSUM_ALG, "model": tensors_checksum(model_sd),
                            "optimizer": tensors_checksum(opt_sd), "rest": tensors_checksum(_rest(payload))}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


_TORCH_LOAD_ERRORS = (RuntimeError, EOFError, KeyError, ValueError, TypeError, IndexError, AttributeError,
                      ImportError, UnicodeDecodeError, OverflowError, MemoryError, struct.error, zipfile.BadZipFile)


def _first_sentence(e: BaseException) -> str:
    s = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    s = s.split(". ")[0][:160]
    return type(e).__name__ if "weights_only" in s else s


def _torch_load(path: Path):
    if path.stat().st_size == 0:
        raise CheckpointError(path, "is empty (0 bytes): the write that made it was cut short")
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        wanted = re.search(r"GLOBAL ([\w.]+)", str(e))
        if wanted:  # a pickle asking to import something the safe loader does not allow: never load it
            raise CheckpointError(
                path, f"is not a trusted attnseg checkpoint: it asks to import {wanted[1]}, which could run code, "
                "so attnseg refused to load it", "use a checkpoint written by attnseg train (model.safetensors, "
                "best.safetensors, last.pt) that comes from a source you trust") from None
        if not is_zip:
            raise CheckpointError(path, "is not a PyTorch checkpoint (no torch.save archive): it is another kind "
                                  "of file, or damaged", WRONG_KIND_FIX) from e
        raise CheckpointError(path, f"is damaged: its pickled part cannot be read ({_first_sentence(e)})") from e
    except _TORCH_LOAD_ERRORS as e:
        if not is_zip:
            raise CheckpointError(path, "is not a PyTorch checkpoint (no torch.save archive): it is another kind "
                                  "of file, or damaged", WRONG_KIND_FIX) from e
        if "central directory" in str(e):
            raise CheckpointError(path, "is truncated: its zip archive has no end (the write was cut short or the "
                                  "copy is incomplete)") from e
        raise CheckpointError(path, f"is damaged and cannot be read ({_first_sentence(e)})") from e
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or e})", "check the file and its permissions"
                              ) from e


def _rest(payload: dict) -> dict:
    """The ``last.pt`` entries other than the weights, the optimiser state and the checksum itself."""
    return {k: v for k, v in payload.items() if k not in ("model", "optimizer", PT_CHECKSUM)}


def load_training_state(path, require=RESUME_KEYS) -> dict:
    """The ``last.pt`` payload, checked: a dict with the ``require``d keys whose checksum (if it has one)
    matches; ``meta`` holds the metadata. Raises :class:`CheckpointError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; {WRONG_KIND_FIX}")
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(path, f"is not an attnseg training state: it holds a {type(ckpt).__name__}, not a "
                              "dict with the model weights", WRONG_KIND_FIX)
    missing = [k for k in require if k not in ckpt]
    if missing:
        raise CheckpointError(path, f"is not an attnseg training state: it lacks {', '.join(map(repr, missing))}",
                              WRONG_KIND_FIX)
    model = ckpt.get("model")
    if model is not None and not (isinstance(model, dict)
                                  and all(isinstance(v, torch.Tensor) for v in model.values())):
        raise CheckpointError(path, "is not an attnseg training state: its 'model' is not a dict of tensors",
                              WRONG_KIND_FIX)
    checksum = ckpt.pop(PT_CHECKSUM, None)
    if checksum is not None:
        if not isinstance(checksum, dict):
            raise _corrupt(path)
        _check_alg(path, checksum.get("alg"))
        for part in ("model", "optimizer"):
            if part in checksum and part in ckpt and tensors_checksum(ckpt[part]) != checksum[part]:
                raise _corrupt(path, "tensors" if part == "model" else "optimizer state tensors")
        if "rest" in checksum and tensors_checksum(_rest(ckpt)) != checksum["rest"]:
            raise _corrupt(path, "step, RNG state and metadata")
    try:
        meta = json.loads(ckpt.pop("meta_json", "{}"))
    except (json.JSONDecodeError, TypeError):
        meta = None
    if not isinstance(meta, dict):
        raise CheckpointError(path, "is damaged: its metadata (meta_json) is not a JSON object")
    ckpt["meta"] = meta
    return ckpt


# -- safetensors ---------------------------------------------------------------------------------------------------
def save_weights(path, model, meta: dict) -> Path:
    """Write the weights as safetensors with the metadata and checksum; raises :class:`NonFiniteStateError` (and
    writes nothing) on NaN/Inf weights."""
    from safetensors.torch import save_file
    sd = plain_state_dict(model)
    check_finite(path, sd)
    meta_json = json.dumps(meta)
    metadata = {"attnseg": meta_json, META_CHECKSUM: tensors_checksum(sd), META_CHECKSUM_ALG: CHECKSUM_ALG,
                META_META_CHECKSUM: hashlib.sha256(meta_json.encode()).hexdigest()}
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=metadata))


def _safetensors_reason(msg: str) -> str:
    if "too small" in msg or "invalid header length" in msg or "not fully covered" in msg:
        return "is truncated: the file is shorter than its safetensors header says (the write or copy was cut short)"
    if "too large" in msg or "header start" in msg:
        return "is not a safetensors file: its first bytes are not a safetensors header (another kind of file, or " \
               "damaged)"
    if "JSON" in msg or "deserializ" in msg.lower():
        return "is damaged: its safetensors header (the tensor index) is not valid"
    return f"is damaged and cannot be read ({msg.splitlines()[0][:160]})"


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file
    if path.stat().st_size == 0:
        raise CheckpointError(path, "is empty (0 bytes): the write that made it was cut short")
    try:
        with safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
        sd = load_file(str(path))
    except SafetensorError as e:
        raise CheckpointError(path, _safetensors_reason(str(e))) from e
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or e})", "check the file and its permissions"
                              ) from e
    if META_META_CHECKSUM in raw and \
            hashlib.sha256(raw.get("attnseg", "").encode()).hexdigest() != raw[META_META_CHECKSUM]:
        raise _corrupt(path, "metadata (classes, model options, preprocessing)")
    try:
        meta = json.loads(raw.get("attnseg", "{}"))
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise CheckpointError(path, "is damaged: its attnseg metadata (in the safetensors header) is not a JSON "
                              "object")
    if META_CHECKSUM in raw:
        _check_alg(path, raw.get(META_CHECKSUM_ALG))
        if tensors_checksum(sd) != raw[META_CHECKSUM]:
            raise _corrupt(path)
    return sd, meta


# -- reading -------------------------------------------------------------------------------------------------------
def resolve_checkpoint(path) -> Path:
    """The checkpoint file that ``path`` names: the file itself, or for a run directory (or its ``checkpoints/``)
    the first of :data:`RUN_DIR_CANDIDATES` there (best.safetensors was chosen on val: name it explicitly)."""
    path = Path(path)
    if path.is_dir():
        for folder in (path / "checkpoints", path):
            for name in RUN_DIR_CANDIDATES:
                if (folder / name).is_file():
                    return folder / name
        raise FileNotFoundError(f"run directory {path} holds no checkpoint (looked for checkpoints/"
                                f"{', checkpoints/'.join(RUN_DIR_CANDIDATES)}); train into it first or pass a "
                                "checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; {WRONG_KIND_FIX}")
    return path


def read_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, meta) from a ``.safetensors`` weights file, a ``last.pt`` training state or a run directory;
    checksums verified. Raises :class:`CheckpointError` (one line naming the file and the fix) or
    ``FileNotFoundError``."""
    path = resolve_checkpoint(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    ckpt = load_training_state(path, require=("model",))
    return ckpt["model"], ckpt["meta"]


INIT_WEIGHT_KWARGS = ("pretrained", "base_weights")


def load_model(path, device="cpu"):
    """Rebuild the model named in a checkpoint's metadata and load its weights. Returns (model, meta)."""
    from ..data.labels import LabelSpec
    from ..models import create_model
    path = resolve_checkpoint(path)
    sd, meta = read_checkpoint(path)
    if "model" not in meta or "classes" not in meta:
        raise CheckpointError(path, "carries no attnseg metadata (model name, classes); it was not written by "
                              "attnseg", WRONG_KIND_FIX)
    spec = LabelSpec.from_dict(meta["classes"])
    # initial weights named by the training run (``pretrained``, ``base_weights``) are in the checkpoint already:
    # rebuilding must not need those files
    kwargs = {k: v for k, v in meta.get("model_kwargs", {}).items() if k not in INIT_WEIGHT_KWARGS}
    # an instance model's classes are the spec's minus the background (class 0)
    num_classes = spec.num_classes - 1 if meta.get("task") == "instances" else spec.num_classes
    model = create_model(meta["model"], num_classes=num_classes, **kwargs)
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # tensors of the wrong shape
        raise ValueError(f"checkpoint {path} does not match model {meta['model']}: "
                         f"{str(e).splitlines()[-1].strip()[:200]}") from e
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match model {meta['model']}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.to(device).eval(), meta
