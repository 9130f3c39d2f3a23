"""Refinement of one trained network's CamVid val logits: none vs DenseCRF vs a cascade of segmentation-aware filters
vs the segmentation-aware CRF (Harley et al. 2017, issue 5): mIoU, mIoU inside 3-px and 10-px trimap bands around
the ground-truth boundaries, boundary F-score at 3-px and 10-px tolerance, and the time per image of each
refinement (the base network and the embedding excluded; their times are reported apart).

    python benchmarks/segaware_refine.py --base-run runs/cv_c --iters 200 --threads 2 \\
        --out runs/bench/segaware_refine.json

1. The embedding (``EmbeddingHead``, width ``--embedding-width``) is trained on CamVid train with the embedding loss
   alone, the base network frozen (the paper's first step: ``segaware_crf`` with ``train_crf=False``), in
   ``--run-root/embedding`` (reused when finished with the same settings, resumed when interrupted).
2. Every val image is resized by the base run's test scale; the base's logits U and the embedding e are computed
   once. Each refinement works on that grid; its scores are upsampled bilinearly to the 360x480 labels, as the
   engine's inference does.
3. The refinements' few parameters are chosen on the first ``--tune-images`` val images by mIoU (grids below) and
   the table is reported on the other val images (``held_out``), so no figure is measured on the images that
   chose it. DenseCRF: pydensecrf2 (``attnseg[densecrf]``), 10 mean-field iterations, Gaussian 3 px / weight 3,
   bilateral grid over weight, σ_xy and σ_rgb. Filter: ``segaware_filter_cascade`` of 3x3 windows at dilations
   1, 2, 4, 8 on the softmax, one pass (two lost 2-3 points in a first search), λ from a grid. CRF:
   ``SegAwareCRF`` with the released model's windows (spatial 5x5; bilateral 13x13 at dilation 9), and like that
   model at half the network input's resolution (the upsampled pairwise term is added to the full-resolution
   unary); the embedding scale and the message weight (W_s = W_b = w·I; the released model has w = 1) from a
   grid, 2 iterations, compatibility −I.

Prints one JSON document (``--out`` also writes it); a markdown table goes to stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, machine_info, pct, run_or_reuse, set_threads  # noqa: E402

from attnseg.data import build_dataset  # noqa: E402
from attnseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transforms  # noqa: E402
from attnseg.engine.checkpoint import load_model  # noqa: E402
from attnseg.engine.config import load_config  # noqa: E402
from attnseg.engine.inference import rescale  # noqa: E402
from attnseg.metrics.boundary import BoundaryConfusion, BoundaryFScore  # noqa: E402
from attnseg.metrics.segmentation import ConfusionMatrix  # noqa: E402
from attnseg.nn import dense_crf as densecrf  # noqa: E402
from attnseg.nn.segaware_filter import segaware_filter_cascade  # noqa: E402

DENSECRF_GRID = {"bi_w": (3.0, 5.0), "bi_xy_std": (20.0, 50.0), "bi_rgb_std": (3.0, 5.0, 10.0)}
FILTER_GRID = {"lam": (0.5, 1.0, 2.0, 4.0, 8.0, 16.0), "iterations": (1,)}
CRF_GRID = {"emb_scale": (2.0, 4.0, 8.0, 16.0, 32.0), "message_weight": (1.0, 2.0, 4.0), "iterations": (2,)}
FILTER_WINDOWS = ((3, 1), (3, 2), (3, 4), (3, 8))
CRF_SCALE = 0.5   # the released model runs its CRF at half the network input's resolution


def grid(spec: dict) -> list[dict]:
    return [dict(zip(spec, values)) for values in itertools.product(*spec.values())]


def train_embedding(args, base_run: Path):
    base_cfg = load_config(base_run / "config.yaml")
    weights = base_run / "checkpoints" / "model.safetensors"
    if not weights.is_file():
        raise SystemExit(f"{weights} is missing: --base-run must be a finished attnseg run")
    run_dir = Path(args.run_root) / "embedding"
    overrides = {
        "model": "segaware_crf",
        "model_kwargs": {"base": base_cfg.model, "base_kwargs": dict(base_cfg.model_kwargs or {}),
                         "base_weights": str(weights), "train_crf": False,
                         "embedding_width": args.embedding_width},
        "data": base_cfg.data, "run_dir": str(run_dir), "base_scale": base_cfg.base_scale,
        "scale_range": tuple(base_cfg.scale_range), "crop": tuple(args.crop), "batch_size": args.batch_size,
        "iters": args.iters, "time_budget": None, "lr": args.lr, "weight_decay": 1e-4, "warmup_iters": 10,
        "class_weights": None, "val_interval": 0, "val_max_images": 1, "ckpt_interval": 50,
        "workers": args.workers, "seed": args.seed, "progress": False, "test_scale": base_cfg.test_scale,
    }
    cfg = load_config(None, overrides)
    settings = {k: v for k, v in overrides.items() if k not in ("progress", "workers")}

    def score(trainer, metrics):
        log = [r for r in trainer_log(run_dir) if "loss_embedding" in r]
        return {"loss_embedding_first": log[0]["loss_embedding"] if log else None,
                "loss_embedding_last": log[-1]["loss_embedding"] if log else None}

    result = run_or_reuse(cfg, settings, score, "embedding", prune=True)
    return run_dir, base_cfg, result


def trainer_log(run_dir: Path) -> list[dict]:
    path = run_dir / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def raw_image(x: torch.Tensor) -> np.ndarray:
    """(1, 3, h, w) normalised image -> (h, w, 3) uint8 RGB."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    img = (x[0] * std + mean).clamp(0, 1).mul(255).round().byte()
    return np.ascontiguousarray(img.permute(1, 2, 0).numpy())


@torch.no_grad()
def precompute(model, dataset, test_scale: float, max_images: int | None):
    items, t_base, t_emb = [], [], []
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    for i in range(n):
        item = dataset[i]
        x = rescale(item["image"][None], test_scale)                      # (1, 3, h, w)
        t0 = time.perf_counter()
        unary = model.base(x)["logits"].float()                          # (1, K, h, w)
        t1 = time.perf_counter()
        e = model.embedding(x).float()                                    # (1, D, h, w)
        t2 = time.perf_counter()
        t_base.append(t1 - t0)
        t_emb.append(t2 - t1)
        items.append({"unary": unary, "e": e.half(), "image": raw_image(x), "label": item["label"]})
    return items, statistics.median(t_base), statistics.median(t_emb)


@torch.no_grad()
def refine(kind: str, params: dict, item: dict, crf) -> torch.Tensor:
    """(1, K, h, w) scores of one refinement (log-probabilities or logits; only their argmax is used)."""
    unary = item["unary"]
    if kind == "none":
        return unary
    if kind == "densecrf":
        q = densecrf.dense_crf(unary.softmax(1)[0].numpy(), item["image"], densecrf.DenseCRFParams(**params))
        return torch.from_numpy(q)[None]
    e = item["e"].float()
    if kind == "filter":
        return segaware_filter_cascade(unary.softmax(1), e, FILTER_WINDOWS, params["lam"], "l1",
                                       params["iterations"])
    if kind == "crf":
        crf.emb_scale, crf.iterations, crf.scale = params["emb_scale"], params["iterations"], CRF_SCALE
        eye = params.get("message_weight", 1.0) * torch.eye(unary.shape[1])[:, :, None, None]
        crf.w_spatial.weight.copy_(eye)       # W_s = W_b = w·I (the released model's I, scaled like DenseCRF's w)
        crf.w_bilateral.weight.copy_(eye)
        return crf(unary, e)
    raise ValueError(kind)


def evaluate(kind: str, params: dict, items: list[dict], crf, num_classes: int, ignore_index: int,
             full: bool) -> dict:
    cm = ConfusionMatrix(num_classes, ignore_index)
    bands = {w: BoundaryConfusion(num_classes, ignore_index, width=w) for w in (3, 10)} if full else {}
    bfs = {w: BoundaryFScore(num_classes, ignore_index, width=w) for w in (3, 10)} if full else {}
    times = []
    for item in items:
        t0 = time.perf_counter()
        scores = refine(kind, params, item, crf)
        times.append(time.perf_counter() - t0)
        label = item["label"]
        pred = F.interpolate(scores, size=tuple(label.shape), mode="bilinear", align_corners=False).argmax(1)[0]
        cm.update(pred, label)
        for w in bands:
            bands[w].update(pred, label)
            bfs[w].update(pred, label)
    out = {"miou": cm.compute()["mIoU"], "seconds_per_image": statistics.median(times)}
    for w in bands:
        out[f"trimap{w}_miou"] = bands[w].compute()["mIoU"]
        out[f"bf{w}"] = bfs[w].compute()["mBF"]
    return out


def interleaved_times(rows: dict, items: list[dict], crf) -> dict:
    """Median seconds per image of each chosen refinement, timed round-robin image by image, so that any other
    load on the machine weighs on all of them alike (the tables' times; the search's are indicative)."""
    times = {kind: [] for kind in rows}
    for item in items:
        for kind, r in rows.items():
            t0 = time.perf_counter()
            refine(kind, r["params"], item, crf)
            times[kind].append(time.perf_counter() - t0)
    return {kind: statistics.median(ts) for kind, ts in times.items()}


def markdown(rows: dict, base_row: dict) -> str:
    lines = ["| refinement | parameters | mIoU | Δ | trimap 3 px | trimap 10 px | BF 3 px | BF 10 px | ms / image |",
             "|---|---|---|---|---|---|---|---|---|"]
    for kind, r in rows.items():
        m = r["held_out"]
        params = ", ".join(f"{k}={v:g}" for k, v in r["params"].items()) or "-"
        lines.append(f"| {kind} | {params} | {pct(m['miou'])} | {100 * (m['miou'] - base_row['miou']):+.2f} | "
                     f"{pct(m['trimap3_miou'])} | {pct(m['trimap10_miou'])} | {pct(m['bf3'])} | {pct(m['bf10'])} | "
                     f"{1000 * m['seconds_per_image']:.0f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-run", default="runs/cv_c", help="a finished attnseg run (its config and final weights)")
    p.add_argument("--run-root", default="runs/bench/segaware_refine")
    p.add_argument("--iters", type=int, default=200, help="embedding training steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", default="144,192", help="embedding training crop H,W")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--embedding-width", type=float, default=0.5)
    p.add_argument("--tune-images", type=int, default=25, help="first val images that choose the parameters")
    p.add_argument("--timing-images", type=int, default=20, help="held-out images timed round-robin")
    p.add_argument("--max-images", type=int, default=None, help="val images used in all (default: all)")
    p.add_argument("--quick-grid", action="store_true", help="one point per grid (smoke tests)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.crop = tuple(int(v) for v in args.crop.split(","))
    return args


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    t_start = time.time()
    run_dir, base_cfg, train_result = train_embedding(args, Path(args.base_run))
    model, meta = load_model(run_dir / "checkpoints" / "model.safetensors")
    test_scale = base_cfg.test_scale or base_cfg.base_scale
    val = build_dataset(base_cfg.data, "val", transform=eval_transforms())
    spec = val.spec
    items, t_base, t_emb = precompute(model, val, test_scale, args.max_images)
    tune, held = items[:args.tune_images], items[args.tune_images:]
    if not held:
        raise SystemExit(f"--tune-images {args.tune_images} leaves no val image to report on")
    grids = {"none": [{}], "densecrf": grid(DENSECRF_GRID), "filter": grid(FILTER_GRID), "crf": grid(CRF_GRID)}
    skipped = {}
    if not densecrf.available():
        del grids["densecrf"]
        skipped["densecrf"] = "pydensecrf2 is not installed: pip install 'attnseg[densecrf]'"
        print(f"[densecrf] skipped: {skipped['densecrf']}", file=sys.stderr, flush=True)
    if args.quick_grid:
        grids = {k: v[:1] for k, v in grids.items()}
    crf = model.crf.eval()
    rows, search = {}, {}
    for kind, points in grids.items():
        scored = []
        for params in points:
            r = evaluate(kind, params, tune, crf, spec.num_classes, spec.ignore_index, full=False)
            scored.append({"params": params, **r})
            print(f"[tune {kind}] {params} mIoU {pct(r['miou'])} {1000 * r['seconds_per_image']:.0f} ms",
                  file=sys.stderr, flush=True)
        best = max(scored, key=lambda r: r["miou"])
        search[kind] = scored
        held_r = evaluate(kind, best["params"], held, crf, spec.num_classes, spec.ignore_index, full=True)
        rows[kind] = {"params": best["params"], "tune_miou": best["miou"], "held_out": held_r}
        print(f"[{kind}] held-out mIoU {pct(held_r['miou'])}", file=sys.stderr, flush=True)
    timing = interleaved_times(rows, held[:args.timing_images], crf)
    for kind, t in timing.items():
        rows[kind]["held_out"]["seconds_per_image"] = t
    base_row = rows["none"]["held_out"]
    crf_row = rows["crf"]["held_out"]
    target = {"crf_gain": crf_row["miou"] - base_row["miou"]}
    if "densecrf" in rows:
        dense = rows["densecrf"]["held_out"]
        target.update(densecrf_gain=dense["miou"] - base_row["miou"],
                      time_ratio_crf_to_densecrf=crf_row["seconds_per_image"] / dense["seconds_per_image"])
        target["met"] = bool(target["crf_gain"] >= target["densecrf_gain"]
                             and target["time_ratio_crf_to_densecrf"] <= 0.1)
    doc = {"benchmark": "segaware_refine", "base_run": args.base_run, "base_model": base_cfg.model,
           "test_scale": test_scale, "grid_size": list(items[0]["unary"].shape[-2:]),
           "val_images": {"tune": len(tune), "held_out": len(held)},
           "embedding": {"run_dir": str(run_dir), "iters": args.iters, "width": args.embedding_width,
                         **train_result},
           "seconds_per_image": {"base_network": t_base, "embedding": t_emb},
           "results": rows, "skipped": skipped, "target": target, "search": search,
           "wall_seconds": round(time.time() - t_start, 1), "machine": machine_info("cpu")}
    print("\n" + markdown(rows, base_row) + "\n", file=sys.stderr, flush=True)
    emit(doc, args.out)
    return doc


if __name__ == "__main__":
    main()
