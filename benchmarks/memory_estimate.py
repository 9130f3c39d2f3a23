"""How close the inference memory estimate (``attnseg.engine.memory``, the one predict/eval use to decide between a
whole-image and a sliding-window inference) comes to the real peak, for a spread of models and image sizes.

    python benchmarks/memory_estimate.py --out runs/bench/memory_estimate.json

Each (model, size) runs in its own child process: the model is built, the peak-RSS counter lowered to the current
RSS (``reset_rss_peak``), one no_grad forward of a random image run, and the measured peak is the rise of
``VmHWM`` plus the weights (as the estimate counts them). ``ratio`` = estimate / measured; the planner compares
``MEMORY_SAFETY`` x estimate + ``MEMORY_OVERHEAD`` with the limit, and ``planned_over_measured`` >= 1 means that
planned figure covered the real peak. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, machine_info, reset_rss_peak, rss_peak_bytes, set_threads  # noqa: E402

from attnseg.engine.inference import MEMORY_OVERHEAD, MEMORY_SAFETY  # noqa: E402
from attnseg.engine.memory import estimate_inference_bytes, weight_bytes  # noqa: E402
from attnseg.models import create_model  # noqa: E402

CASES = [("fcn8s_resnet18", 360, 480), ("fcn8s_resnet18", 1024, 1024), ("fcn8s_resnet18", 2048, 2048),
         ("deeplab_largefov_vgg16_w05", 512, 512), ("dilated_resnet18_nonlocal", 256, 256),
         ("dilated_resnet18_nonlocal", 512, 512), ("flanet_resnet18", 512, 512), ("dilated_resnet18_ccnet", 512, 512),
         ("segaware_dilated_resnet18", 256, 256), ("attention_to_scale", 360, 480), ("farabet", 512, 512),
         ("rcnn2_fcn8s_resnet18", 360, 480)]


def child(name: str, h: int, w: int) -> dict:
    model = create_model(name, num_classes=11).eval()
    t = time.time()
    est = estimate_inference_bytes(model, (1, 3, h, w))
    est_s = time.time() - t
    x = torch.randn(1, 3, h, w)
    reset_rss_peak()
    base = rss_peak_bytes()
    with torch.no_grad():
        model(x)
    measured = rss_peak_bytes() - base + weight_bytes(model)
    return {"model": name, "size": f"{h}x{w}", "estimate_MiB": round(est / 2 ** 20, 1),
            "measured_MiB": round(measured / 2 ** 20, 1), "ratio": round(est / measured, 3),
            "planned_over_measured": round((MEMORY_SAFETY * est + MEMORY_OVERHEAD) / measured, 3),
            "estimate_s": round(est_s, 2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--child", nargs=3, metavar=("MODEL", "H", "W"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    set_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), int(args.child[2]))))
        return
    rows = []
    for name, h, w in CASES:
        r = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--child", name, str(h), str(w)],
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            rows.append({"model": name, "size": f"{h}x{w}", "error": r.stderr.strip().splitlines()[-1:]})
            continue
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(rows[-1], file=sys.stderr)
    ratios = [r["ratio"] for r in rows if "ratio" in r]
    planned = [r["planned_over_measured"] for r in rows if "ratio" in r]
    emit({"benchmark": "memory_estimate", "machine": machine_info("cpu"), "safety_factor": MEMORY_SAFETY,
          "overhead_MiB": MEMORY_OVERHEAD / 2 ** 20, "rows": rows, "ratio_min": min(ratios),
          "ratio_max": max(ratios), "planned_covers_every_peak": min(planned) >= 1.0}, args.out)


if __name__ == "__main__":
    main()
