"""Inference images/s of every registered model at 360x480, whole image, batch 1, fp32 and bf16 autocast
(both with channels_last), measured in one run.

    python benchmarks/inference_speed.py [--repeats 3] [--models fcn8s_resnet18,deconvnet_vgg16]

Prints one JSON object. bf16 is slow on CPUs without native bf16 (the JSON says whether this one has it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnseg.engine.precision import Precision, cpu_has_native_bf16  # noqa: E402
from attnseg.models import MODELS, create_model  # noqa: E402


def rate(model, prec: Precision, x: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        with prec.autocast():
            model(prec.images(x))  # warm-up
        t = time.perf_counter()
        for _ in range(repeats):
            with prec.autocast():
                model(prec.images(x))["logits"].float()
    return repeats / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bf16-repeats", type=int, default=None,
                   help="repeats for bf16 (default: --repeats, or 1 where bf16 is emulated)")
    p.add_argument("--models", default=",".join(sorted(MODELS)))
    p.add_argument("--num-classes", type=int, default=11)
    p.add_argument("--precisions", default="fp32,bf16")
    args = p.parse_args()
    x = torch.randn(1, 3, 360, 480)
    dev = torch.device("cpu")
    results = {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = create_model(name, num_classes=args.num_classes).eval()
        params = sum(q.numel() for q in model.parameters())
        row = {"params_M": round(params / 1e6, 2)}
        for precision in args.precisions.split(","):
            prec = Precision.resolve(dev, precision, channels_last=True)
            m = prec.model(model)
            repeats = args.repeats
            if precision == "bf16":
                repeats = args.bf16_repeats or (args.repeats if cpu_has_native_bf16() else 1)
            row[f"{precision}_img_s"] = round(rate(m, prec, x, repeats), 3)
        results[name] = row
        print(name, row, file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "inference_speed", "input": [360, 480], "batch": 1, "mode": "whole",
                      "channels_last": True, "repeats": args.repeats, "cpu_native_bf16": cpu_has_native_bf16(),
                      "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                  "torch": torch.__version__, "python": platform.python_version()},
                      "models": results}, indent=1))


if __name__ == "__main__":
    main()
