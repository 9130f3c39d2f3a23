"""A slide larger than one pass should take: tiled instance inference (overlapping tiles, instances merged across
tiles) against one whole-image pass, on a synthetic 2048x2048 nuclei field with about a thousand nuclei.

    python benchmarks/instance_tiling.py RUN [--size 2048] [--count 1100] [--tile 512] [--overlap 96]
        [--threads 2] [--out runs/bench/instance_tiling.json]

Each mode runs in its own child process (``common.run_child``), so that its peak resident memory (VmHWM after
loading the model, ``Meter``) is its own: ``tiled`` (the predictor with ``max_side`` = ``tile``) and ``whole``
(``max_side`` = the slide). Per mode: seconds, peak memory added by the inference, instances found, and the DSB
score, SBD, |DiC| and AP50 against the slide's ground truth. The slide is ``nuclei_field(seed=7, (size, size),
(count, count))``: never a training scene.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Meter, emit, machine_info, run_child, set_threads  # noqa: E402


def measure(args) -> dict:
    import torch

    import attnseg
    from attnseg.data.synthetic_instances import nuclei_field
    from attnseg.metrics.instance import coco_mask_ap, image_metrics
    set_threads(args.threads)
    image, gt = nuclei_field(7, (args.size, args.size), (args.count, args.count))
    max_side = args.tile if args.mode == "tiled" else args.size
    pred = attnseg.load(args.run, precision=args.precision, max_side=max_side, tile=args.tile, overlap=args.overlap)
    meter = Meter(torch.device("cpu"))
    start = meter.start_memory()
    t = time.perf_counter()
    res = pred.predict(image)
    seconds = time.perf_counter() - t
    added = meter.peak_increase(start)
    m = image_metrics(res.ids, gt)
    ap = coco_mask_ap([(res.ids, res.scores, gt)])
    return {"mode": args.mode, "seconds": seconds, "peak_memory_added_mib": added / 2 ** 20,
            "peak_reset": meter.peak_reset, "n_gt": m["n_gt"], "n_pred": m["n_pred"], "DSB": m["DSB"],
            "SBD": m["SBD"], "|DiC|": m["|DiC|"], "AP50": ap["AP50"], "timing_ms": res.timing_ms,
            "notes": res.notes}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--count", type=int, default=1100)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="auto")
    p.add_argument("--mode", choices=("tiled", "whole"), help=argparse.SUPPRESS)   # the child's job
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.mode:
        print(json.dumps(measure(args)))
        return {}
    common = [args.run, "--size", str(args.size), "--count", str(args.count), "--tile", str(args.tile),
              "--overlap", str(args.overlap), "--threads", str(args.threads), "--precision", args.precision]
    rows = [run_child([sys.executable, __file__, *common, "--mode", mode]) for mode in ("tiled", "whole")]
    for r in rows:
        if "error" not in r:
            print(f"{r['mode']:5s}: {r['seconds']:.1f} s, +{r['peak_memory_added_mib']:.0f} MiB, {r['n_pred']} of "
                  f"{r['n_gt']} nuclei, DSB {r['DSB']:.3f} SBD {100 * r['SBD']:.1f} |DiC| {r['|DiC|']:.0f} AP50 "
                  f"{r['AP50']:.3f}", file=sys.stderr)
    doc = {"benchmark": "instance_tiling", "when": time.strftime("%Y-%m-%d %H:%M"), "run": args.run,
           "size": args.size, "count_drawn": args.count, "tile": args.tile, "overlap": args.overlap,
           "machine": machine_info("cpu"), "rows": rows}
    emit(doc, args.out)
    return doc


if __name__ == "__main__":
    main()
