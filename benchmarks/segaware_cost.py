"""Cost of the segmentation-aware convolution against F.conv2d and a naive unfold implementation.

    python benchmarks/segaware_cost.py --threads 2 --out runs/bench/segaware_cost.json
    python benchmarks/segaware_cost.py --channels 64 --size 45x60 --repeats 3

Forward+backward of a 3x3 convolution, ``--channels`` in and out (256), on (B, C, H, W) = (``--batch`` 2, C,
``--size`` 90x120), fp32, in this process:

- ``conv2d``: ``F.conv2d`` (the ceiling: the segmentation-aware form does the same matmuls plus the masking);
- ``segaware``: ``attnseg.nn.segaware_conv.segaware_conv2d`` (taps accumulated, recomputed in the backward);
- ``segaware_normalized``: the same with Eq. 5's normalisation;
- ``unfold``: the naive form (``F.unfold`` of the whole layer, masked, one matmul), for reference.

Time: median of ``--repeats`` after ``--warmup``. Peak memory: the peak of live tensor bytes during one more
forward+backward under torch.profiler (``attention_blocks.allocated_peak_bytes``), inputs and weights excluded.
Target (issue 5): segaware ≤ 1.5x conv2d in time and in memory. Prints one JSON document; a table on stderr.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention_blocks import allocated_peak_bytes  # noqa: E402
from common import emit, machine_info, parse_size, set_threads  # noqa: E402

from attnseg.nn.segaware_conv import segaware_conv2d  # noqa: E402

TARGET = 1.5


def unfold_conv(x, m, weight, bias):
    """The naive form: the whole layer unfolded (B, C·k², H·W), masked, one matmul."""
    B, C, H, W = x.shape
    k = weight.shape[-1]
    cols = F.unfold(x, k, padding=k // 2).view(B, C, k * k, H * W) * m.view(B, 1, k * k, H * W)
    y = weight.view(weight.shape[0], -1) @ cols.view(B, C * k * k, H * W)       # (B, O, H·W)
    return y.view(B, -1, H, W) + bias.view(1, -1, 1, 1)


def cases():
    return {
        "conv2d": lambda x, m, w, b: F.conv2d(x, w, b, padding=1),
        "segaware": lambda x, m, w, b: segaware_conv2d(x, m, w, b),
        "segaware_normalized": lambda x, m, w, b: segaware_conv2d(x, m, w, b, normalize=True),
        "unfold": unfold_conv,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=parse_size, default=(90, 120))
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    B, C, (H, W) = args.batch, args.channels, args.size
    x = torch.randn(B, C, H, W, requires_grad=True)
    m = torch.rand(B, 9, H, W, requires_grad=True)
    w = (torch.randn(C, C, 3, 3) / (3 * C ** 0.5)).requires_grad_(True)
    b = torch.zeros(C, requires_grad=True)
    g = torch.randn(B, C, H, W)
    rows = {}
    for name, fn in cases().items():
        def step(fn=fn):
            (fn(x, m, w, b) * g).sum().backward()
            for t in (x, m, w, b):
                t.grad = None
        for _ in range(args.warmup):
            step()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        peak = allocated_peak_bytes(step)
        rows[name] = {"fwd_bwd_ms": round(1000 * statistics.median(times), 2),
                      "runs_ms": [round(1000 * t, 2) for t in times],
                      "peak_MiB": None if peak is None else round(peak / 2**20, 1)}
    base = rows["conv2d"]
    for r in rows.values():
        r["time_vs_conv2d"] = round(r["fwd_bwd_ms"] / base["fwd_bwd_ms"], 3)
        if r["peak_MiB"] is not None and base["peak_MiB"]:
            r["memory_vs_conv2d"] = round(r["peak_MiB"] / base["peak_MiB"], 3)
    seg = rows["segaware"]
    doc = {"benchmark": "segaware_cost", "batch": B, "channels": C, "size": [H, W], "kernel": 3, "dtype": "fp32",
           "warmup": args.warmup, "repeats": args.repeats, "results": rows,
           "target": {"max_ratio": TARGET, "time_met": seg["time_vs_conv2d"] <= TARGET,
                      "memory_met": seg.get("memory_vs_conv2d") is not None and seg["memory_vs_conv2d"] <= TARGET},
           "machine": machine_info("cpu")}
    lines = ["| op | fwd+bwd ms | x conv2d | peak MiB | x conv2d |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {r['fwd_bwd_ms']} | {r['time_vs_conv2d']} | {r['peak_MiB']} | {r.get('memory_vs_conv2d')} |"
              for n, r in rows.items()]
    print("\n".join(lines), file=sys.stderr)
    emit(doc, args.out)
    return doc


if __name__ == "__main__":
    main()
