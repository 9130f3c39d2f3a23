"""Inference speed of an exported ONNX model under onnxruntime against eager PyTorch, in one process.

    python benchmarks/onnx_speed.py [--threads 2] [--repeats 20] [--model fcn8s_resnet18] [--size 360x480]
                                    [--out runs/bench/onnx_speed.json]

FCN-8s ResNet-18 (``fcn8s_resnet18``, K = 11, random weights: speed does not depend on them) at 360x480, batch 1,
fp32 on the CPU. Eager: ``model.eval()`` under ``torch.no_grad()``, in channels_last when that measured faster in
the warm-up (the JSON says which). ONNX: the file ``attnseg.export.export_onnx`` writes (parity checked), in an
onnxruntime CPU session with ``--threads`` intra-op threads (torch gets the same number). The two are interleaved
(eager, ONNX, eager, ONNX, ...; the order alternates per repeat) so that a change in machine load hits both alike;
the rate of each is repeats / total time, and the median per-image times are reported too.

Target: onnxruntime at least 1.5x the eager rate (``ratio`` = onnx / eager images/s). Prints one JSON object
(rates, ratio, the per-repeat times, threads, machine info). Measure on an idle machine: figures from a busy one
say nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, machine_info, parse_size  # noqa: E402

from attnseg.export import _session, export_onnx  # noqa: E402
from attnseg.models import create_model  # noqa: E402

TARGET_RATIO = 1.5


def eager_step(model, x):
    with torch.no_grad():
        return model(x)["logits"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="fcn8s_resnet18")
    p.add_argument("--num-classes", type=int, default=11)
    p.add_argument("--size", default="360x480", help="HxW")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    H, W = parse_size(args.size)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=args.num_classes).eval()
    x = torch.randn(1, 3, H, W)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        meta = {"model": args.model, "classes": {"names": [str(i) for i in range(args.num_classes)]}}
        report = export_onnx(model, meta, path, check_sizes=[(H, W)], threads=args.threads)
        session = _session(path, args.threads)
        feed = {"images": x.numpy()}

        # eager layout: channels_last when faster in the warm-up (measured, not assumed)
        cl_model = create_model(args.model, num_classes=args.num_classes).eval()
        cl_model.load_state_dict(model.state_dict())
        cl_model = cl_model.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        layout_s = {}
        for name, (m, inp) in {"contiguous": (model, x), "channels_last": (cl_model, x_cl)}.items():
            eager_step(m, inp)
            t = time.perf_counter()
            for _ in range(max(1, args.warmup)):
                eager_step(m, inp)
            layout_s[name] = (time.perf_counter() - t) / max(1, args.warmup)
        layout = min(layout_s, key=layout_s.get)
        m, inp = (model, x) if layout == "contiguous" else (cl_model, x_cl)
        for _ in range(args.warmup):
            session.run(None, feed)

        times = {"eager": [], "onnx": []}
        for i in range(args.repeats):
            order = ("eager", "onnx") if i % 2 == 0 else ("onnx", "eager")
            for kind in order:
                t = time.perf_counter()
                if kind == "eager":
                    eager_step(m, inp)
                else:
                    session.run(None, feed)
                times[kind].append(time.perf_counter() - t)
    rate = {k: len(v) / sum(v) for k, v in times.items()}
    doc = {
        "benchmark": "onnx_speed", "model": args.model, "num_classes": args.num_classes, "size": [H, W], "batch": 1,
        "precision": "fp32", "threads": args.threads, "repeats": args.repeats,
        "eager_images_per_s": round(rate["eager"], 3), "onnx_images_per_s": round(rate["onnx"], 3),
        "ratio": round(rate["onnx"] / rate["eager"], 3), "target_ratio": TARGET_RATIO,
        "meets_target": rate["onnx"] / rate["eager"] >= TARGET_RATIO,
        "eager_layout": layout, "eager_layout_warmup_s": {k: round(v, 4) for k, v in layout_s.items()},
        "median_ms": {k: round(1000 * statistics.median(v), 2) for k, v in times.items()},
        "times_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "export": {k: report[k] for k in ("opset", "bytes", "export_s", "parity_ok")},
        "parity": report["checks"],
        "onnxruntime": __import__("onnxruntime").__version__,
        "machine": machine_info("cpu"),
    }
    emit(doc, args.out)
    return doc


if __name__ == "__main__":
    main()
