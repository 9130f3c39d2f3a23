"""Speed of the proposal operators of MNC / Faster R-CNN: NMS (``attnseg.nn.boxes``) and RoI warping
(``attnseg.nn.roi_warp``), against a pure-Python loop of the warp formula.

    python benchmarks/proposal_ops.py --threads 2 [--repeats 5] [--warmup 1] [--device cpu]
        [--out runs/bench/proposal_ops.json]

Cases (median wall time over ``--repeats`` runs after ``--warmup`` runs):

- ``nms_1000``, ``nms_10000``: :func:`nms` at IoU 0.7 of N random proposal-like boxes in a 1024 x 1024 image (centres
  uniform, sides log-uniform in [16, 400] px, aspect up to 2:1, clipped to the image), random scores;
- ``batched_nms_10000_20cls``: :func:`batched_nms` at IoU 0.5 of 10,000 such boxes in 20 random classes;
- ``roi_warp_s1`` / ``roi_warp_s2``, forward and forward + backward (w.r.t. the features and the boxes): 512 RoIs
  (such boxes, random images) x 256 channels at 14 x 14 from a (2, 256, 64, 64) map of stride 16, sampling ratio 1
  (MNC's warp) and 2 (RoIAlign);
- ``python_loop_reference``: the warp written as Python loops over RoIs, bins and samples (numpy bilinear over the
  256 channels), sampling ratio 1, timed on ``--loop-rois`` RoIs and scaled by 512 / loop-rois to the same work
  (its cost is per RoI, bin and sample), with its ratio to ``roi_warp_s1`` forward.

NMS runs on the host whatever ``--device`` is; the RoI cases run on ``--device``. JSON on stdout (and in ``--out``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Meter, emit, machine_info, set_threads  # noqa: E402


def proposal_boxes(n: int, seed: int, size: int = 1024):
    import numpy as np
    import torch
    g = np.random.default_rng(seed)
    c = g.uniform(0, size, (n, 2))
    side = np.exp(g.uniform(math.log(16), math.log(400), n))
    aspect = np.exp(g.uniform(-math.log(2), math.log(2), n))
    wh = np.stack([side / np.sqrt(aspect), side * np.sqrt(aspect)], 1)
    boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).clip(0, size)
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(g.random(n), dtype=torch.float32)


def roi_warp_loop(features, boxes, batch_index, size, scale):
    """The warp of attnseg.nn.roi_warp's docstring, sampling ratio 1, as Python loops (numpy over channels)."""
    import numpy as np
    f = features.numpy()
    _, C, H, W = f.shape
    oh, ow = size
    out = np.zeros((len(boxes), C, oh, ow), f.dtype)
    for r, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        img = f[int(batch_index[r])]
        X0, Y0 = x0 * scale - 0.5, y0 * scale - 0.5
        bw, bh = (x1 - x0) * scale / ow, (y1 - y0) * scale / oh
        for p in range(oh):
            for q in range(ow):
                y, x = Y0 + (p + 0.5) * bh, X0 + (q + 0.5) * bw
                if y < -1 or y > H or x < -1 or x > W:
                    continue
                y, x = min(max(y, 0.0), H - 1.0), min(max(x, 0.0), W - 1.0)
                ya, xa = int(y), int(x)
                yb, xb = min(ya + 1, H - 1), min(xa + 1, W - 1)
                ly, lx = y - ya, x - xa
                out[r, :, p, q] = (img[:, ya, xa] * (1 - ly) * (1 - lx) + img[:, ya, xb] * (1 - ly) * lx
                                   + img[:, yb, xa] * ly * (1 - lx) + img[:, yb, xb] * ly * lx)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rois", type=int, default=512)
    p.add_argument("--loop-rois", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    args = p.parse_args(argv)
    set_threads(args.threads)
    import numpy as np
    import torch

    from attnseg.nn.boxes import batched_nms, nms
    from attnseg.nn.roi_warp import roi_warp
    device = torch.device(args.device)
    host, meter = Meter(torch.device("cpu")), Meter(device)
    results = {}

    def record(name: str, m: Meter, fn, **extra):
        med, times = m.median_seconds(fn, args.warmup, args.repeats)
        results[name] = {"median_ms": round(1000 * med, 2), "times_ms": [round(1000 * t, 2) for t in times], **extra}
        print(f"{name}: {1000 * med:.1f} ms", file=sys.stderr, flush=True)
        return med

    for n in (1000, 10000):
        boxes, scores = proposal_boxes(n, args.seed)
        kept = len(nms(boxes, scores, 0.7))
        record(f"nms_{n}", host, lambda b=boxes, s=scores: nms(b, s, 0.7), boxes=n, iou_threshold=0.7, kept=kept)
    boxes, scores = proposal_boxes(10000, args.seed + 1)
    classes = torch.from_numpy(np.random.default_rng(args.seed).integers(0, 20, 10000))
    kept = len(batched_nms(boxes, scores, classes, 0.5))
    record("batched_nms_10000_20cls", host, lambda: batched_nms(boxes, scores, classes, 0.5), boxes=10000,
           classes=20, iou_threshold=0.5, kept=kept)

    g = torch.Generator().manual_seed(args.seed)
    feats = torch.randn(2, 256, 64, 64, generator=g).to(device)
    rois = proposal_boxes(args.rois, args.seed + 2)[0].to(device)
    index = torch.randint(0, 2, (args.rois,), generator=g).to(device)
    size, scale = (14, 14), 1.0 / 16
    shape = {"rois": args.rois, "channels": 256, "output": list(size), "features": [2, 256, 64, 64],
             "spatial_scale": scale}
    fwd = {}
    for s in (1, 2):
        with torch.no_grad():
            fwd[s] = record(f"roi_warp_s{s}_forward", meter, lambda s=s: roi_warp(feats, rois, index, size, scale, s),
                            sampling_ratio=s, **shape)
        f_req, b_req = feats.clone().requires_grad_(True), rois.clone().requires_grad_(True)
        grad = torch.randn(args.rois, 256, *size, generator=g).to(device)

        def fwd_bwd(s=s, f_req=f_req, b_req=b_req, grad=grad):
            f_req.grad = b_req.grad = None
            roi_warp(f_req, b_req, index, size, scale, s).backward(grad)

        record(f"roi_warp_s{s}_forward_backward", meter, fwd_bwd, sampling_ratio=s, **shape)

    small = args.loop_rois
    f_cpu, r_cpu, i_cpu = feats.cpu(), rois[:small].cpu(), index[:small].cpu()
    err = float(abs(roi_warp_loop(f_cpu, r_cpu, i_cpu, size, scale)
                    - roi_warp(f_cpu, r_cpu, i_cpu, size, scale).numpy()).max())
    t0 = time.perf_counter()
    roi_warp_loop(f_cpu, r_cpu, i_cpu, size, scale)
    loop = time.perf_counter() - t0
    scaled = loop * args.rois / small
    results["python_loop_reference"] = {
        "measured_rois": small, "measured_ms": round(1000 * loop, 2), "scaled_to_rois": args.rois,
        "scaled_ms": round(1000 * scaled, 1), "vs_roi_warp_s1_forward": round(scaled / fwd[1], 1),
        "max_abs_difference": err}
    print(f"python loop: {1000 * scaled:.0f} ms for {args.rois} RoIs (x{scaled / fwd[1]:.0f} roi_warp)",
          file=sys.stderr)
    doc = {"benchmark": "proposal_ops", "when": time.strftime("%Y-%m-%d %H:%M"), "device": str(device),
           "repeats": args.repeats, "warmup": args.warmup, "machine": machine_info(args.device), "results": results}
    emit(doc, args.out)
    return doc


if __name__ == "__main__":
    main()
