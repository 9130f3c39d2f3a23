"""How the quality and the time of instance models grow with the number of objects per image (issue 13).

    python benchmarks/instance_counts.py RUN [RUN ...] [--kind nuclei|rosettes] [--counts 1,5,10,25,50,100,150]
        [--images 10] [--size 256] [--threads 2] [--out runs/bench/instance_counts.json]

For each count c, ``--images`` synthetic nuclei fields (``nuclei:count=c-c``; with ``--kind rosettes`` leaf
rosettes of c leaves, ``--size 224``; scene seed 1000 c + i: never a training scene) are drawn; fewer than c objects
can remain visible (one under 12 visible pixels is dropped),
so each row also gives the mean ground-truth count. Every run is evaluated on the same images through
``engine.instance_inference`` (the path of ``attnseg eval``), the runs interleaved image by image so that the
machine's state is shared. Per (run, count): DSB score, SBD, |DiC|, fgDice, AP50 and the mean milliseconds of
the network (``forward``) and of the post-processing (``group``: watershed or mean shift) per image. JSON on
stdout (and in ``--out``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine_info, set_threads  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories of instance models")
    p.add_argument("--kind", choices=("nuclei", "rosettes"), default="nuclei")
    p.add_argument("--counts", default=None, help="default: 1,5,10,25,50,100,150 (nuclei), 5,8,11,14,17,20 (rosettes)")
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", default="auto")
    p.add_argument("--post", action="append", default=[], metavar="RUN:K=V[,K=V]",
                   help="post-processing settings of one run (repeatable), e.g. runs/x:bandwidth=1.0,min_size=80")
    p.add_argument("--out")
    args = p.parse_args(argv)
    set_threads(args.threads)
    import attnseg
    from attnseg.data.synthetic_instances import leaf_rosette, nuclei_field
    from attnseg.engine.instance_inference import infer_instances
    from attnseg.metrics.instance import InstanceMetrics, coco_mask_ap
    post = {}
    for item in args.post:
        run, _, settings = item.rpartition(":")
        post[run] = dict(kv.split("=", 1) for kv in settings.split(","))
    unknown = sorted(set(post) - set(args.runs))
    if unknown:
        p.error(f"--post names runs not given: {unknown}")
    predictors = {r: attnseg.load(r, precision=args.precision, post=post.get(r)) for r in args.runs}
    counts = [int(c) for c in (args.counts or ("1,5,10,25,50,100,150" if args.kind == "nuclei"
                                                else "5,8,11,14,17,20")).split(",")]
    make = nuclei_field if args.kind == "nuclei" else leaf_rosette
    rows = []
    for c in counts:
        images = [make(1000 * c + i, (args.size, args.size), (c, c)) for i in range(args.images)]
        per_run = {r: {"metrics": InstanceMetrics(), "forward": [], "group": [], "ap": []} for r in args.runs}
        for i, (image, gt) in enumerate(images):
            for r, pred in predictors.items():
                x = pred.normalize(image)
                res = infer_instances(pred.model, x, pred.inference, pred.precision)
                acc = per_run[r]
                acc["metrics"].update(res["ids"], gt, str(i))
                acc["forward"].append(res["timing_ms"]["forward"])
                acc["group"].append(res["timing_ms"]["group"])
                acc["ap"].append((res["ids"], res["scores"], gt))
        gt_counts = [len(np.unique(gt)) - 1 for _, gt in images]
        for r, acc in per_run.items():
            m = acc["metrics"].compute()
            ap = coco_mask_ap(acc["ap"])
            rows.append({"run": r, "model": predictors[r].name, "post": predictors[r].post, "count_drawn": c,
                         "count_visible": float(np.mean(gt_counts)), "images": len(images),
                         "DSB": m["DSB"], "SBD": m["SBD"], "|DiC|": m["|DiC|"], "fgDice": m["fgDice"],
                         "AP50": ap["AP50"], "forward_ms": float(np.mean(acc["forward"][1:] or acc["forward"])),
                         "group_ms": float(np.mean(acc["group"]))})
            print(f"{predictors[r].name:28s} c={c:4d} (visible {rows[-1]['count_visible']:.1f}): DSB "
                  f"{m['DSB']:.3f} SBD {100 * m['SBD']:.1f} |DiC| {m['|DiC|']:.2f} AP50 {ap['AP50']:.3f} "
                  f"forward {rows[-1]['forward_ms']:.0f} ms group {rows[-1]['group_ms']:.0f} ms",
                  file=sys.stderr, flush=True)
    doc = {"benchmark": "instance_counts", "kind": args.kind, "when": time.strftime("%Y-%m-%d %H:%M"),
           "size": args.size,
           "images_per_count": args.images, "precision": args.precision, "machine": machine_info("cpu"),
           "rows": rows}
    emit(doc, args.out)
    return doc


if __name__ == "__main__":
    main()
