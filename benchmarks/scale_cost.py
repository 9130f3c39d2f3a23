"""Cost of attention to scale: 3-scale (attention / max / avg fusion) vs the single-scale base, forward time and
peak memory at 360x480, batch 1, fp32, measured in one run; optionally the training step (forward + backward).

    python benchmarks/scale_cost.py [--bases fcn8s_resnet18,deeplab_largefov_vgg16] [--repeats 5] [--train]
    python benchmarks/scale_cost.py --device cuda --repeats 20 --train

What is measured, for every base and every configuration (``single`` = the base itself, built with
``create_model(base, K)``; ``attention``/``max``/``avg`` = ``create_model("attention_to_scale", K, base=base,
fusion=..., scales=--scales)``; ``attention_h128`` = attention with a 128-filter head), each in a fresh Python
process (so that no allocator cache, oneDNN primitive cache or peak counter of another configuration interferes):

- forward time: eval mode, ``torch.no_grad()``, fp32 (no autocast), channels_last (as the engine runs on CPU and
  CUDA; ``--no-channels-last`` to turn off), the median over ``--repeats`` forwards after ``--warmup`` forwards;
  on CUDA each forward is synchronised.
- peak memory of the forward:
  - CUDA: ``torch.cuda.max_memory_allocated()`` over the forwards minus ``torch.cuda.memory_allocated()`` before
    them (weights and input excluded: the activations and workspaces the forward needs);
  - CPU: the increase of the process's peak resident set size (``VmHWM`` of /proc/self/status, else ru_maxrss)
    read after the forwards minus the same read after model construction (with the input allocated). It is
    a high-water mark, and construction peaks above its steady state (initialisation temporaries, the attention
    model's dry run), which would hide part of the forward's memory; so on Linux the high-water mark is first
    reset to the current RSS (``echo 5 > /proc/self/clear_refs``) and the figure is the forward's peak over the
    steady RSS after construction. Where the reset is refused (``peak_reset: false`` in the row) the figure is
    over the construction peak, an under-estimate.
- training step (``--train``): train mode, batch ``--train-batch`` (2), forward + loss (the engine's
  ``segmentation_loss``; the multi-scale models with E-Supv, as in the paper's recipe) + backward, no optimiser
  step, median after warm-up; its peak memory the same way, over the memory in use before the first step
  (weights and batch; gradients and activations count).

Ratios are taken against the single-scale base of the same run; the target is <= 2.0x (3 scales of 1, 0.75,
0.5 cost about 1 + 0.56 + 0.25 = 1.81x the pixels). Prints one JSON document (``--out`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Meter, machine_info, rss_peak_bytes, run_child  # noqa: E402

from attnseg.engine.precision import Precision, resolve_device  # noqa: E402
from attnseg.losses import segmentation_loss  # noqa: E402
from attnseg.models import create_model  # noqa: E402

FUSIONS = ("single", "avg", "max", "attention")
TARGET = 2.0
MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated() during the forwards minus memory_allocated() before them",
    "cpu": "peak RSS (VmHWM, else ru_maxrss) after the forwards minus the same after model construction, with the "
           "peak reset to the current RSS after construction (/proc/self/clear_refs) where Linux allows; fresh "
           "process per configuration",
}


def build(base: str, fusion: str, num_classes: int, scales: tuple) -> torch.nn.Module:
    if fusion == "single":
        return create_model(base, num_classes)
    kwargs = {}
    if fusion.startswith("attention_h"):  # attention_h128: the attention head with 128 filters instead of 512
        fusion, kwargs["head_channels"] = "attention", int(fusion[len("attention_h"):])
    return create_model("attention_to_scale", num_classes, base=base, fusion=fusion, scales=scales,
                        extra_supervision=True, **kwargs)


def measure(args, base: str, fusion: str) -> dict:
    """One configuration, in this process."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    prec = Precision.resolve(device, "fp32", args.channels_last)
    torch.manual_seed(0)
    model = prec.model(build(base, fusion, args.num_classes, args.scales)).eval()
    H, W = args.size
    x = prec.images(torch.randn(1, 3, H, W))
    meter = Meter(device)
    row = {"params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)}
    start = meter.start_memory()
    if not meter.cuda:
        row.update(rss_after_construction_MiB=round(start / 2**20, 1), peak_reset=meter.peak_reset)

    def forward():
        with torch.no_grad():
            model(x)["logits"]

    t, times = meter.median_seconds(forward, args.warmup, args.repeats)
    row.update(forward_ms=round(1000 * t, 2), forward_runs_ms=[round(1000 * s, 2) for s in times],
               forward_peak_MiB=round(meter.peak_increase(start) / 2**20, 1))
    if not meter.cuda:
        row["rss_peak_after_forward_MiB"] = round(rss_peak_bytes() / 2**20, 1)
    if args.train:
        model.train()
        xb = prec.images(torch.randn(args.train_batch, 3, H, W))
        y = torch.randint(0, args.num_classes, (args.train_batch, H, W), device=device)
        train_start = meter.start_memory() if meter.cuda or meter.peak_reset else start

        def step():
            loss, _ = segmentation_loss(model(xb), y)
            loss.backward()
            model.zero_grad(set_to_none=True)

        t, times = meter.median_seconds(step, args.train_warmup, args.train_repeats)
        row.update(train_step_ms=round(1000 * t, 2), train_runs_ms=[round(1000 * s, 2) for s in times],
                   train_peak_MiB=round(meter.peak_increase(train_start) / 2**20, 1))
    return row


def child_argv(args, base: str, fusion: str) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", f"{base}:{fusion}", "--device", args.device,
            "--size", f"{args.size[0]}x{args.size[1]}", "--warmup", str(args.warmup), "--repeats", str(args.repeats),
            "--num-classes", str(args.num_classes), "--scales", ",".join(f"{s:g}" for s in args.scales),
            "--train-batch", str(args.train_batch), "--train-warmup", str(args.train_warmup),
            "--train-repeats", str(args.train_repeats)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.train:
        argv.append("--train")
    if not args.channels_last:
        argv.append("--no-channels-last")
    return argv


def run_config(args, base: str, fusion: str) -> dict:
    if args.in_process:
        return measure(args, base, fusion)
    return run_child(child_argv(args, base, fusion))


def ratios(rows: dict) -> dict:
    single = rows.get("single", {})
    out = {}
    for fusion, row in rows.items():
        if fusion == "single" or "error" in row or "error" in single:
            continue
        r = {}
        for key, name in (("forward_ms", "forward_time"), ("forward_peak_MiB", "forward_peak_memory"),
                          ("train_step_ms", "train_step_time"), ("train_peak_MiB", "train_peak_memory")):
            if key in row and single.get(key):
                r[name] = round(row[key] / single[key], 3)
        r["within_target"] = {k: v <= TARGET for k, v in r.items()}
        out[fusion] = r
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bases", default="fcn8s_resnet18,deeplab_largefov_vgg16")
    p.add_argument("--fusions", default=",".join(FUSIONS), help="single is always measured (the reference)")
    p.add_argument("--scales", default="1,0.75,0.5", type=lambda s: tuple(float(v) for v in s.split(",")))
    p.add_argument("--size", default="360x480", type=lambda s: tuple(int(v) for v in s.lower().split("x")))
    p.add_argument("--num-classes", type=int, default=11)
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train", action="store_true", help="also time forward+backward in train mode")
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--train-warmup", type=int, default=1)
    p.add_argument("--train-repeats", type=int, default=3)
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--in-process", action="store_true",
                   help="measure every configuration in this process (memory figures then interfere)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        base, _, fusion = args.child.partition(":")
        print(json.dumps(measure(args, base, fusion)), flush=True)
        return
    bases = [b for b in args.bases.split(",") if b]
    fusions = ["single"] + [f for f in args.fusions.split(",") if f and f != "single"]
    unknown = sorted(f for f in set(fusions) - set(FUSIONS) if not f.removeprefix("attention_h").isdigit())
    if unknown:
        raise SystemExit(f"unknown fusions {unknown}; choose from {', '.join(FUSIONS)}")
    t0 = time.time()
    results, ratio = {}, {}
    for base in bases:
        results[base] = {}
        for fusion in fusions:
            row = run_config(args, base, fusion)
            results[base][fusion] = row
            print(f"{base} {fusion}: " + ", ".join(f"{k} {v}" for k, v in row.items() if not k.endswith("runs_ms")),
                  file=sys.stderr, flush=True)
        ratio[base] = ratios(results[base])
    device = resolve_device(args.device)
    machine = {**machine_info(device.type), "torch_threads": args.threads or torch.get_num_threads()}
    doc = {"benchmark": "scale_cost", "input": list(args.size), "batch": 1, "precision": "fp32",
           "channels_last": args.channels_last, "device": str(device), "scales": list(args.scales),
           "num_classes": args.num_classes, "warmup": args.warmup, "repeats": args.repeats,
           "train": {"batch": args.train_batch, "warmup": args.train_warmup, "repeats": args.train_repeats,
                     "loss": "segmentation_loss, E-Supv on for the multi-scale models"} if args.train else None,
           "statistic": "median", "memory_method": MEMORY_METHOD[device.type],
           "isolation": "in-process" if args.in_process else "fresh process per configuration",
           "target": f"<= {TARGET:g}x single scale", "results": results, "ratios_vs_single": ratio,
           "wall_seconds": round(time.time() - t0, 1), "machine": machine}
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
