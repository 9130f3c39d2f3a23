"""Engine overhead: training images/s of FCN-8s-ResNet-18 at 360x480 through attnseg's Trainer vs a bare PyTorch loop
over the same model, batches and precision, measured in one run; plus loader-only images/s.

    python benchmarks/engine_overhead.py [--data camvid:../shared/data/camvid] [--steps 20] [--batch 4]

Prints one JSON object. The target is engine/bare >= 0.9, and loader images/s well above the training images/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attnseg.engine.config import TrainConfig  # noqa: E402
from attnseg.engine.trainer import Trainer  # noqa: E402


def default_data() -> str:
    camvid = ROOT.parent / "shared" / "data" / "camvid"
    return f"camvid:{camvid}" if camvid.is_dir() else "synthetic:train=64,val=4,size=360x480"


def make_trainer(args, run_dir: Path, steps: int) -> Trainer:
    cfg = TrainConfig(model="fcn8s_resnet18", data=args.data, run_dir=str(run_dir), crop=(360, 480),
                      scale_range=(0.5, 2.0), batch_size=args.batch, iters=steps, warmup_iters=0, val_interval=0,
                      ckpt_interval=0, log_interval=10**9, workers=args.workers, progress=False, resume=False,
                      precision=args.precision, seed=0)
    return Trainer(cfg)


def engine_rate(args, run_dir: Path) -> float:
    tr = make_trainer(args, run_dir, args.warmup + args.steps)
    tr.validate = lambda final=False: ({}, None)   # time training only: no validation, report or final save
    tr.write_report = lambda *a, **k: None
    tr.save = lambda: None
    # warm up (first steps allocate), then time the rest of the loop as a user would see it
    times = []
    original = tr.train_step

    def timed(batch):
        out = original(batch)
        times.append(time.perf_counter())
        return out

    tr.train_step = timed
    tr.fit()
    n = args.steps
    return n * args.batch / (times[-1] - times[args.warmup - 1])


def bare_rate(args, run_dir: Path) -> tuple[float, float]:
    tr = make_trainer(args, run_dir, 1)
    loader = tr.loader()
    t0 = time.perf_counter()
    batches = []
    for batch in loader:
        batches.append((batch["image"], batch["label"]))
        if len(batches) == args.warmup + args.steps:
            break
    loader_rate = len(batches) * args.batch / (time.perf_counter() - t0)
    model, opt, prec = tr.model, tr.optimizer, tr.prec
    model.train()
    for i, (x, y) in enumerate(batches):
        if i == args.warmup:
            t0 = time.perf_counter()
        x = prec.images(x)
        with prec.autocast():
            logits = model(x)["logits"]
        loss = F.cross_entropy(logits.float(), y, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return args.steps * args.batch / (time.perf_counter() - t0), loader_rate


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=default_data())
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--precision", default="auto")
    p.add_argument("--tmp", default="/tmp/attnseg_bench_engine")
    args = p.parse_args()
    tmp = Path(args.tmp)
    with contextlib.redirect_stdout(sys.stderr):  # the trainer's messages; stdout carries only the JSON
        bare1, loader = bare_rate(args, tmp / "bare")
        engine = engine_rate(args, tmp / "engine")
        bare2, _ = bare_rate(args, tmp / "bare2")
        tr = make_trainer(args, tmp / "probe", 1)
    bare = (bare1 + bare2) / 2
    print(json.dumps({
        "benchmark": "engine_overhead", "model": "fcn8s_resnet18", "input": [360, 480], "batch": args.batch,
        "steps": args.steps, "precision": tr.prec.name, "workers": args.workers, "data": args.data,
        "engine_img_s": round(engine, 3), "bare_img_s": round(bare, 3),
        "bare_runs_img_s": [round(bare1, 3), round(bare2, 3)],
        "ratio_engine_over_bare": round(engine / bare, 3), "loader_only_img_s": round(loader, 2),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine()},
    }, indent=1))


if __name__ == "__main__":
    main()
