"""Checkpoints: written atomically, carrying their metadata, loaded without executing pickled code.

Two files in ``run_dir/checkpoints/``:
- ``last.pt``: everything needed to resume (model, optimiser, step, epoch position, elapsed time, RNG state,
  metadata), saved with ``torch.save`` and read with ``torch.load(weights_only=True)``;
- ``model.safetensors`` (and ``best.safetensors``): the weights alone, with the metadata as a JSON string in the
  safetensors header, for ``attnseg eval`` / ``predict`` / ``export``.
Every write goes to a temporary file in the same folder, is flushed to disk, then renamed over the target, so an
interruption leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch


def atomic_write(path: str | Path, write_fn) -> Path:
    """Call ``write_fn(tmp_path)`` then fsync and rename the result onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous, de-duplicated CPU copies (channels_last and shared tensors are fine for torch.save but not
    for safetensors)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in unwrap(model).state_dict().items()}


def save_training_state(path, model, optimizer, state: dict, meta: dict) -> Path:
    payload = {"model": plain_state_dict(model), "optimizer": optimizer.state_dict(),
               "rng_cpu": torch.get_rng_state(), "meta_json": json.dumps(meta), **state}
    if torch.cuda.is_available():
        payload["rng_cuda"] = torch.cuda.get_rng_state_all()
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_training_state(path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["meta"] = json.loads(ckpt.pop("meta_json", "{}"))
    return ckpt


def save_weights(path, model, meta: dict) -> Path:
    from safetensors.torch import save_file
    sd = plain_state_dict(model)
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata={"attnseg": json.dumps(meta)}))


def read_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, meta) from a ``.safetensors`` weights file or a ``last.pt`` training state."""
    path = Path(path)
    if path.is_dir():  # a run directory: the final weights (best.safetensors was chosen on val: name it explicitly)
        for cand in ("checkpoints/model.safetensors", "checkpoints/last.pt", "checkpoints/best.safetensors"):
            if (path / cand).is_file():
                path = path / cand
                break
        else:
            raise FileNotFoundError(f"run directory {path} holds no checkpoint (checkpoints/model.safetensors)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("attnseg", "{}"))
        return load_file(str(path)), meta
    ckpt = load_training_state(path)
    return ckpt["model"], ckpt["meta"]


INIT_WEIGHT_KWARGS = ("pretrained", "base_weights")


def load_model(path, device="cpu"):
    """Rebuild the model named in a checkpoint's metadata and load its weights. Returns (model, meta)."""
    from ..data.labels import LabelSpec
    from ..models import create_model
    sd, meta = read_checkpoint(path)
    if "model" not in meta:
        raise ValueError(f"checkpoint {path} carries no attnseg metadata (model name, classes); "
                         "it was not written by attnseg")
    spec = LabelSpec.from_dict(meta["classes"])
    # initial weights named by the training run (``pretrained``, ``base_weights``) are in the checkpoint already:
    # rebuilding must not need those files
    kwargs = {k: v for k, v in meta.get("model_kwargs", {}).items() if k not in INIT_WEIGHT_KWARGS}
    model = create_model(meta["model"], num_classes=spec.num_classes, **kwargs)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match model {meta['model']}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.to(device).eval(), meta
