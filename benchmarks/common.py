"""Helpers shared by the benchmark scripts (one module, imported as ``from common import ...`` by the scripts in
this folder, which put it on ``sys.path``).

- output: ``jsonable``, ``emit`` (the JSON document on stdout and in ``--out``), ``machine_info``, ``pct``;
- options: ``set_threads``, ``parse_size`` (``HxW``), ``parse_sweep_args`` (the options every training sweep shares);
- training sweeps: ``run_or_reuse`` (an ordinary engine run, resumed when interrupted, reused when finished with the
  same settings; ``RESULT_FILE``, ``RESUME_KEYS``, ``check_resumable``);
- the attention-to-scale variants of the scale sweeps (``FUSION_VARIANTS``, ``scale_variant_model``) and the object
  size buckets of the synthetic scenes (``SIZE_BUCKETS``, ``BUCKET_DEFINITION``, ``bucket_index``);
- CamVid sweeps: ``DEFAULT_DATA``, ``find_camvid``, ``CAMVID_KEYS`` (the settings a reused run must match),
  ``camvid_score`` (the row of a finished run);
- measuring: ``rss_peak_bytes``, ``reset_rss_peak``, ``Meter`` (wall time and added memory per device) and
  ``run_child`` (a measuring child process whose last stdout line is its JSON row).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attnseg.engine.checkpoint import atomic_write_text  # noqa: E402
from attnseg.engine.config import TrainConfig, config_to_dict  # noqa: E402
from attnseg.engine.distributed import cleanup  # noqa: E402
from attnseg.engine.trainer import Trainer  # noqa: E402

FUSION_VARIANTS = {f"{fusion}{suffix}": (fusion, suffix == "_esupv")
                   for fusion in ("avg", "max", "attention") for suffix in ("", "_esupv")}
SIZE_BUCKETS = {"small": (0.0, 8.0), "medium": (8.0, 16.0), "large": (16.0, math.inf)}
BUCKET_DEFINITION = (
    "instance radius r in px of the generated image (SyntheticScenes.instances): small r < 8, medium 8 <= r < 16, "
    "large r >= 16. Per bucket: confusion matrix over the pixels of that bucket's visible instances plus all "
    "background pixels (other buckets' instance pixels ignored); mIoU over the classes present in that ground "
    "truth; object_acc = correct / all object pixels of the bucket.")
RESULT_FILE = "bench_result.json"
# settings that must match for a run directory to be reused or resumed
RESUME_KEYS = ("model", "model_kwargs", "data", "crop", "scale_range", "batch_size", "iters", "time_budget", "lr",
               "weight_decay", "warmup_iters", "seed", "precision", "class_weights", "class_weight_power")
CAMVID_KEYS = (*RESUME_KEYS, "base_scale", "test_scale", "eval_mode", "eval_scales", "eval_flip", "train_split",
               "val_split", "optimizer", "label_smoothing", "aux_weight")
DEFAULT_DATA = "../shared/data/camvid"


# -- output ----------------------------------------------------------------------------------------------------------
def jsonable(value):
    """Plain JSON: NaN and infinities -> None, tuples -> lists, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def emit(doc: dict, out: str | None) -> None:
    text = json.dumps(jsonable(doc), indent=1)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def machine_info(device: str) -> dict:
    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    if device != "cpu" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.1f}"


# -- options ---------------------------------------------------------------------------------------------------------
def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def parse_sweep_args(p: argparse.ArgumentParser, argv, run_root: str, variants) -> argparse.Namespace:
    """The options every sweep shares (run root, pruning, progress bar, JSON file), then parse and check
    ``--variants`` against ``variants``."""
    p.add_argument("--run-root", default=run_root)
    p.add_argument("--prune", action="store_true", help="delete last.pt and best.safetensors of finished runs")
    p.add_argument("--progress", action="store_true", help="the engine's tqdm bar")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in variants]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(variants)}")
    return args


# -- training sweeps -------------------------------------------------------------------------------------------------
def check_resumable(cfg: TrainConfig) -> None:
    """Refuse to resume a run directory that was started with other settings."""
    path = Path(cfg.run_dir) / "config.yaml"
    if not path.is_file():
        return
    old = yaml.safe_load(path.read_text()) or {}
    new = config_to_dict(cfg)
    diff = [k for k in RESUME_KEYS if jsonable(old.get(k)) != jsonable(new.get(k))]
    if diff:
        raise SystemExit(f"{cfg.run_dir} holds a run with other settings ({', '.join(diff)}: "
                         f"{[old.get(k) for k in diff]} vs {[new.get(k) for k in diff]}); use another --run-root "
                         "or delete that directory")


def run_or_reuse(cfg: TrainConfig, settings: dict, score, label: str, prune: bool = False) -> dict:
    """Train ``cfg`` with the engine (resuming an interrupted run) and return ``score(trainer, metrics)`` plus
    timings, or the stored result of a finished run with the same ``settings``.

    The result is stored in ``run_dir/bench_result.json``. ``train_seconds`` is the engine's training-step time
    (validation and set-up excluded, summed over resumes); ``wall_seconds`` the wall time of this call.
    """
    run_dir = Path(cfg.run_dir)
    settings = jsonable(settings)
    path = run_dir / RESULT_FILE
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("settings") == settings:
            print(f"[{label}] reusing the finished run in {run_dir}", file=sys.stderr, flush=True)
            return {**stored["result"], "reused": True}
        raise SystemExit(f"{path} was written with other settings; use another --run-root or delete {run_dir}")
    check_resumable(cfg)
    print(f"[{label}] training {cfg.model} {cfg.model_kwargs or ''} in {run_dir}", file=sys.stderr, flush=True)
    t0 = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # the engine's messages; stdout carries only the JSON
        trainer = Trainer(cfg, command=f"{Path(sys.argv[0]).name} [{label}]")
        try:
            metrics = trainer.fit()
        finally:
            cleanup()
        if not metrics:
            raise SystemExit(f"[{label}] training was stopped (SIGTERM); rerun the same command to resume")
        result = score(trainer, metrics)
    steps = trainer.step
    result.update({"iters": steps, "train_seconds": round(trainer.elapsed, 1),
                   "wall_seconds": round(time.time() - t0, 1),
                   "train_img_s": round(steps * cfg.batch_size / max(trainer.elapsed, 1e-9), 2),
                   "num_params": trainer.num_params, "precision": trainer.prec.name,
                   "device": str(trainer.prec.device)})
    atomic_write_text(path, json.dumps(jsonable({"settings": settings, "result": result}), indent=1))
    if prune:  # the final weights (model.safetensors) stay
        for name in ("last.pt", "best.safetensors"):
            (run_dir / "checkpoints" / name).unlink(missing_ok=True)
    print(f"[{label}] done: {trainer.elapsed:.0f} s training, {time.time() - t0:.0f} s wall", file=sys.stderr,
          flush=True)
    return {**result, "reused": False}


def scale_variant_model(variant: str, base: str, scales: tuple) -> tuple[str, dict]:
    """(model, model_kwargs) of a scale-sweep variant: ``single`` = the base itself, else
    ``attention_to_scale`` over it with that fusion (``FUSION_VARIANTS``)."""
    if variant == "single":
        return base, {}
    fusion, esupv = FUSION_VARIANTS[variant]
    return "attention_to_scale", {"base": base, "scales": list(scales), "fusion": fusion,
                                  "extra_supervision": esupv}


def bucket_index(radius: float) -> int:
    for j, (lo, hi) in enumerate(SIZE_BUCKETS.values()):
        if lo <= radius < hi:
            return j
    raise ValueError(f"radius {radius} falls in no bucket")


def find_camvid(path: str) -> Path | None:
    """``path`` relative to the working directory, else to the repository root; for the default path also
    ``shared/data/camvid`` inside the repository (the layout of a copied working tree)."""
    extra = [ROOT / "shared" / "data" / "camvid"] if path == DEFAULT_DATA else []
    for cand in (Path(path), ROOT / path, *extra):
        if (cand / "train.txt").is_file() and (cand / "val").is_dir():
            return cand.resolve()
    return None


def camvid_score(trainer, metrics: dict) -> dict:
    names = trainer.spec.names
    n_val = len(trainer.val_set)
    return {"miou": metrics["mIoU"], "aacc": metrics["aAcc"], "macc": metrics["mAcc"],
            "iou": dict(zip(names, metrics["IoU"])), "val_images": n_val, "eval_seconds": metrics.get("eval_s"),
            "eval_img_s": round(n_val / metrics["eval_s"], 2) if metrics.get("eval_s") else None}


# -- measuring -------------------------------------------------------------------------------------------------------
def rss_peak_bytes() -> int:
    """The process's peak resident set size so far: ``VmHWM`` of /proc/self/status where there is one (Linux), else
    ru_maxrss (KiB on Linux, bytes on macOS). Not ru_maxrss first: a child process's ru_maxrss starts at its
    parent's RSS at the fork, which the clear_refs reset does not lower, so a smaller peak would read as 0."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_rss_peak() -> bool:
    """Lower the peak-RSS counter to the current RSS (Linux >= 4.0); False where that is not possible."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Meter:
    """Wall time of a callable and the memory it adds, per device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.peak_reset = False

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def start_memory(self) -> int:
        """Resets the peak counter where possible and returns the reference to measure the increase from."""
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device)
        self.peak_reset = reset_rss_peak()
        return rss_peak_bytes()

    def peak_increase(self, start: int) -> int:
        if self.cuda:
            self.sync()
            return torch.cuda.max_memory_allocated(self.device) - start
        return rss_peak_bytes() - start

    def median_seconds(self, fn, warmup: int, repeats: int) -> tuple[float, list[float]]:
        times = []
        for i in range(warmup + repeats):
            self.sync()
            t = time.perf_counter()
            fn()
            self.sync()
            if i >= warmup:
                times.append(time.perf_counter() - t)
        return statistics.median(times), times


def run_child(argv: list[str]) -> dict:
    """Run a measuring child process (``argv``) with the repository on its path; its last stdout line is the JSON
    row, or the row is ``{"error": ...}`` when it failed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        return {"error": f"the measuring process exited with {proc.returncode} (its stderr is above)"}
    return json.loads(proc.stdout.strip().splitlines()[-1])
