"""Where does a trained attention-to-scale model look? The mean scale weight w^s over the pixels of each region
of the validation images the run was evaluated on: on synthetic scenes the regions are the objects of each size
bucket (small r < 8 px, medium 8-16, large >= 16; ``common.SIZE_BUCKETS``) and the background; on any
other dataset (CamVid) they are the ground-truth classes.

    python benchmarks/scale_weights.py runs/bench/scale_synthetic/attention_esupv/seed0 [--out FILE]
    python benchmarks/scale_weights.py runs/bench/scale_camvid/attention_esupv --data camvid:../shared/data/camvid

The paper's claim (Chen et al. 2016, Fig. 5): small objects take their scores from the large input (scale 1),
large objects and background from the small ones. Prints one JSON document: for every region, the mean weight of
each scale and the pixel count. The model sees each image at its native size (no test-time resize).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SIZE_BUCKETS, bucket_index, emit  # noqa: E402

from attnseg.data import build_dataset  # noqa: E402
from attnseg.data.transforms import eval_transforms  # noqa: E402
from attnseg.engine.checkpoint import load_model  # noqa: E402


@torch.no_grad()
def scale_weights_by_region(run: str, split: str = "val", data: str | None = None) -> dict:
    model, meta = load_model(run, torch.device("cpu"))
    model.eval()
    scales = getattr(model, "scales", None)
    if scales is None:
        raise SystemExit(f"{run} holds a {meta['model']} model, which has no scale weights")
    data = data or meta["config"]["data"]
    dataset = build_dataset(data, split, transform=eval_transforms())
    by_size = hasattr(dataset, "instances")
    regions = ["background", *SIZE_BUCKETS] if by_size else list(dataset.spec.names)
    sums = np.zeros((len(regions), len(scales)))
    counts = np.zeros(len(regions), np.int64)
    for i in range(len(dataset)):
        item = dataset[i]
        w = model(item["image"][None], return_attention=True)["attention"]["scale_weights"][0].numpy()  # (S, H, W)
        if by_size:
            instances, instance_map = dataset.instances(i)
            region_of = np.zeros(len(instances) + 1, np.int64)                       # id 0 = background -> 0
            for inst in instances:
                region_of[inst["id"]] = 1 + bucket_index(inst["radius"])
            region = region_of[instance_map]                                         # (H, W)
        else:
            region = item["label"].numpy()                                           # (H, W) class ids, 255 void
        for r in range(len(regions)):
            mask = region == r
            sums[r] += w[:, mask].sum(1)
            counts[r] += int(mask.sum())
    return {"run": str(run), "model": meta["model"], "scales": list(scales), "data": data, "split": split,
            "images": len(dataset), "regions": "size buckets" if by_size else "ground-truth classes",
            "buckets_px": {k: list(v) for k, v in SIZE_BUCKETS.items()} if by_size else None,
            "mean_weight": {reg: {f"{s:g}": float(sums[r, j] / max(counts[r], 1)) for j, s in enumerate(scales)}
                            for r, reg in enumerate(regions)},
            "pixels": {reg: int(counts[r]) for r, reg in enumerate(regions)}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a trained attention_to_scale run directory (or checkpoint)")
    p.add_argument("--split", default="val")
    p.add_argument("--data", default=None, help="dataset spec (default: the run's own)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    doc = scale_weights_by_region(args.run, args.split, args.data)
    for reg, w in doc["mean_weight"].items():
        print(f"{reg:>12s}: " + "  ".join(f"w[{s}] {v:.3f}" for s, v in w.items()) + f"  ({doc['pixels'][reg]} px)",
              file=sys.stderr)
    emit(doc, args.out)


if __name__ == "__main__":
    main()
