"""How the time of Ren & Zemel's recurrent attention model grows with the number of steps T (issue 15).

    python benchmarks/recurrent_steps.py [--steps 1,3,6,11,21,31] [--sizes 224,128] [--rounds 5] [--threads 1]
        [--precision auto] [--train-batch 5] [--out runs/bench/recurrent_steps.json]

For each input size (the CVPPP layout, K = 48) and each T, an untrained model of that size (time does not depend on
the weights; ``group`` is a few array operations) predicts one synthetic leaf rosette (batch 1, eval), and takes one
training step of ``--train-batch`` rosettes (teacher forcing on, forward + loss + backward). Every (size, T) is
measured once per round, the configurations interleaved within each round so that they share the machine's state;
the reported figure is the median over rounds (the first round is a warm-up and dropped). JSON on stdout (and in
``--out``): per row the size, T, milliseconds per image at inference and per training step, and the ratio to T = 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine_info, set_threads  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default="1,3,6,11,21,31")
    p.add_argument("--sizes", default="224,128")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", default="auto")
    p.add_argument("--train-batch", type=int, default=5)
    p.add_argument("--out")
    args = p.parse_args(argv)
    set_threads(args.threads)
    import torch

    from attnseg.data.synthetic_instances import leaf_rosette
    from attnseg.data.transforms import Normalize
    from attnseg.engine.precision import Precision
    from attnseg.models import create_model
    prec = Precision.resolve(torch.device("cpu"), args.precision)
    steps = [int(s) for s in args.steps.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    normalize = Normalize()                                             # ImageNet mean / std, as the datasets
    setups = {}
    for size in sizes:
        scenes = [leaf_rosette(5000 + i, (size, size), (5, 20)) for i in range(args.train_batch)]
        x = torch.stack([normalize(im, None, None)[0] for im, _ in scenes])
        y = torch.stack([torch.from_numpy(ids).long() for _, ids in scenes])
        for T in steps:
            torch.manual_seed(0)
            model = prec.model(create_model("recurrent_attention", 1, image_size=[size, size], steps=T))
            setups[(size, T)] = (model, prec.images(x), y)
    times = {k: {"infer": [], "train": []} for k in setups}
    for r in range(args.rounds + 1):
        for key, (model, x, y) in setups.items():
            model.eval()
            t0 = time.perf_counter()
            with torch.no_grad(), prec.autocast():
                out = model(x[:1])
            model.group(model.dense(out, 0))
            t1 = time.perf_counter()
            model.train()
            model.set_training_step(10 ** 6)
            with prec.autocast():
                out = model(x, targets=y)
            loss, _ = model.loss(out, y)
            loss.backward()
            model.zero_grad(set_to_none=True)
            t2 = time.perf_counter()
            if r:                                                       # round 0 warms up
                times[key]["infer"].append((t1 - t0) * 1000)
                times[key]["train"].append((t2 - t1) * 1000)
        print(f"round {r}/{args.rounds}", file=sys.stderr, flush=True)
    rows = []
    for (size, T), t in times.items():
        rows.append({"size": size, "steps": T, "infer_ms": statistics.median(t["infer"]),
                     "train_step_ms": statistics.median(t["train"]), "train_batch": args.train_batch})
    for row in rows:
        base = next(r for r in rows if r["size"] == row["size"] and r["steps"] == min(steps))
        row["infer_vs_first"] = row["infer_ms"] / base["infer_ms"]
        row["train_vs_first"] = row["train_step_ms"] / base["train_step_ms"]
        print(f"{row['size']}px T={row['steps']:3d}: inference {row['infer_ms']:.0f} ms/image "
              f"(x{row['infer_vs_first']:.2f}), training step {row['train_step_ms']:.0f} ms "
              f"(x{row['train_vs_first']:.2f})", file=sys.stderr)
    doc = {"benchmark": "recurrent_steps", "when": time.strftime("%Y-%m-%d %H:%M"), "precision": prec.name,
           "rounds": args.rounds, "machine": machine_info("cpu"), "rows": rows}
    emit(doc, args.out)
    return doc


if __name__ == "__main__":
    main()
