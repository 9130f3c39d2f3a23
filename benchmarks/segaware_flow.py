"""Segmentation-aware bilateral filtering of FlowNetS flow on synthetic two-frame scenes: EPE near motion boundaries.

Harley, Derpanis, Kokkinos, "Segmentation-Aware Convolutional Networks Using Local Attention Masks", ICCV 2017,
https://arxiv.org/abs/1708.04607 (official code https://github.com/aharley/segaware has no flow code). Claim
tested: filtering a FlowNet-Simple-style network's flow with segmentation-aware bilateral filters gives clearly
sharper flow at motion boundaries (lower EPE near them).

    python benchmarks/segaware_flow.py --threads 1 --out runs/bench/segaware_flow.json     # ~9 min, 1 thread
    python benchmarks/segaware_flow.py --correlation ...      # the FlowNetC-style network instead of FlowNetS
    python benchmarks/segaware_flow.py --reuse ...            # evaluation only, with the saved weights
    python benchmarks/segaware_flow.py --proxy --iters 0 ...  # filter a proxy flow (below) instead of FlowNetS's
    python benchmarks/segaware_flow.py --iters 2 --emb-iters 2 --size 32x48 --train-pairs 8 --val-pairs 2 \\
        --test-pairs 2 --run-dir /tmp/sf                      # smoke test

Steps (data: ``attnseg.data.flow_synthetic``; the train, val and test splits draw from disjoint seed streams):

 1. FlowNetS-small (``flownet_simple(width=0.25, levels=5)``: no BatchNorm, pair-normalised inputs; with
    ``--correlation`` the FlowNetC-style variant) trained on a pool of ``--train-pairs`` generated pairs (random
    h/v flips and RGB permutations), batch 8, Adam (0.9, 0.999) 1e-3 with 50 warm-up steps and cosine decay,
    multi-scale EPE with weights 1, 0.5, 0.25, 0.125 from flow2 (1/4 res) to flow5 (FlowNet's Caffe weights put
    most weight on the coarsest scale, which suits 10⁶ iterations, not a few thousand). Its val / test EPE is
    reported next to the zero flow's. (Before the inputs were normalised and the textures given contrast, this
    network stayed at the zero-flow loss for 2500 steps; see ``attnseg.models.flownet_simple``.) FlowNetS is the
    default because it now learns (600 steps: val EPE 1.02 px against 2.61 for zero flow); the correlation
    variant got 0.86 px in the same 600 steps, at ~0.14 s instead of ~0.11 s a step (measured at 96x128,
    batch 8, one thread, on a shared machine).
 2. An ``EmbeddingHead(dim=16, width=0.125)`` trained on the same pool's frame-1 layer segmentation with
    ``embedding_loss`` (α 0.5, β 2, dilations 1, 2, 5), random 64x64 crops, batch 8, Adam 1e-3 with cosine decay.
 3. Filter hyper-parameters chosen on the val split (never the test split), with two objectives, each giving
    its own choice: overall EPE over valid pixels (``selection``, the main ``test`` table) and EPE near motion
    boundaries (``selection_by_near``, the ``test_by_near`` table; it favours strong smoothing across edges that
    the overall EPE would punish away from them). Grids: window 5 x dilation {1, 2, (4, 2, 1)} x iterations
    {1, 2, 4, 8}, and seg-aware λ {0.5, 1, 2, 4, 8} (L1 masks, as the embedding loss) / bilateral
    s_c {5, 10, 20, 40} x s_p {0.05, 0.2, 0.5} (σ_c = 1/s_c on [0, 1] colours, σ_p = 1/s_p px).
    ``segaware_oracle`` filters with the ground-truth segmentation one-hot as the embedding (λ = 10): an upper
    bound on what the embedding can give.
 4. Test split: EPE overall / near / away (``attnseg.metrics.flow``: band of 3 px around pixels whose ground-truth
    flow differs from a 4-neighbour's by more than 0.5 px; valid = visible in frame 2; ``test_all_pixels`` also
    counts occluded pixels) for the unfiltered flow, each filter and the zero flow (``test_zero_flow``), and the
    time per image (batch 1, median) of each filter (masks included) and of the two networks.

``--proxy`` replaces the FlowNetS flow by the ground truth averaged over 4x4 cells and upsampled bilinearly: the
output of a perfect 1/4-resolution FlowNetS, whose only error is the boundary blur the filters are meant to undo
(a check of the filters independent of how well FlowNetS trained).

Weights and their settings go to ``--run-dir`` (runs/bench/segaware_flow/weights.pt); ``--reuse`` loads them
instead of training when the settings match. Prints one JSON document on stdout (``--out`` also writes it);
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, machine_info, parse_size, set_threads  # noqa: E402

from attnseg.data.flow_synthetic import FlowSceneConfig, FlowScenes, stack_items  # noqa: E402
from attnseg.flow import bilateral_embedding, bilateral_flow_filter, segaware_flow_filter  # noqa: E402
from attnseg.metrics.flow import FlowMetrics  # noqa: E402
from attnseg.models.flownet_simple import flownet_simple, multiscale_epe  # noqa: E402
from attnseg.nn.embedding_head import EmbeddingHead  # noqa: E402
from attnseg.nn.embedding_loss import embedding_loss  # noqa: E402
from attnseg.nn.local_attention_mask import LocalAttentionMask  # noqa: E402
from attnseg.nn.segaware_filter import segaware_filter  # noqa: E402

FLOWNET = {"width": 0.25, "levels": 5, "batch_norm": False, "normalize": "pair"}
EMBEDDING = {"dim": 16, "width": 0.125}   # defaults of --emb-dim / --emb-width (the paper's D is 64)


def embedding_config(args) -> dict:
    return {"dim": getattr(args, "emb_dim", EMBEDDING["dim"]), "width": getattr(args, "emb_width", EMBEDDING["width"])}
FLOW_LOSS_WEIGHTS = {2: 1.0, 3: 0.5, 4: 0.25, 5: 0.125, 6: 0.0625}
GRID = {"kernels": (5,), "dilations": (1, 2, (4, 2, 1)), "iterations": (1, 2, 4, 8),
        "lambdas": (0.5, 1.0, 2.0, 4.0, 8.0), "colour_scales": (5.0, 10.0, 20.0, 40.0),
        "position_scales": (0.05, 0.2, 0.5)}
QUICK_GRID = {"kernels": (5,), "dilations": (1,), "iterations": (1, 2), "lambdas": (1.0,), "colour_scales": (10.0,),
              "position_scales": (0.2,)}               # --quick-grid: smoke tests only
ORACLE_LAMBDA = 10.0
BAND_WIDTH, THRESHOLD = 3.0, 0.5
SETTING_KEYS = ("size", "iters", "emb_iters", "seed", "train_pairs", "batch", "emb_crop", "correlation")
OBJECTIVES = {"epe": "overall EPE, valid pixels", "epe_near": "EPE near motion boundaries, valid pixels"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ data

def load_split(split: str, n: int, cfg: FlowSceneConfig, seed: int) -> dict:
    """Every pair of a split stacked: image1, image2 (N, 3, H, W), flow (N, 2, H, W), segmentation, valid."""
    ds = FlowScenes(split, n, cfg, seed=seed)
    return stack_items([ds[i] for i in range(n)])


def augment(batch: dict, g: torch.Generator) -> dict:
    """Per pair: horizontal / vertical flips (the flow component negated) and one RGB permutation of both frames."""
    out = {k: v.clone() for k, v in batch.items()}
    for i in range(out["flow"].shape[0]):
        for dim, comp in ((-1, 0), (-2, 1)):                              # flip x: dx -> -dx; flip y: dy -> -dy
            if torch.rand((), generator=g) < 0.5:
                for k in out:
                    out[k][i] = out[k][i].flip(dim)
                out["flow"][i, comp] *= -1
        perm = torch.randperm(3, generator=g)
        out["image1"][i], out["image2"][i] = out["image1"][i, perm], out["image2"][i, perm]
    return out


def sample(pool: dict, batch: int, g: torch.Generator) -> dict:
    idx = torch.randint(pool["flow"].shape[0], (batch,), generator=g)
    return {k: v[idx] for k, v in pool.items()}


def cosine_lr(opt, step: int, total: int, base: float, warmup: int = 50) -> None:
    lr = base * min(1.0, (step + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / total)).item())
    for group in opt.param_groups:
        group["lr"] = lr


# ---------------------------------------------------------------------------------------------- training

def flownet_config(args) -> dict:
    return {**FLOWNET, "correlation": bool(args.correlation)}


def train_flownet(pool: dict, args, g: torch.Generator) -> tuple[torch.nn.Module, dict]:
    net = flownet_simple(**flownet_config(args))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    t0, losses = time.perf_counter(), []
    net.train()
    for step in range(args.iters):
        cosine_lr(opt, step, args.iters, 1e-3)
        b = augment(sample(pool, args.batch, g), g)
        out = net(b["image1"], b["image2"])
        loss = multiscale_epe(out, b["flow"], weights=FLOW_LOSS_WEIGHTS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 200 == 0 or step == args.iters - 1:
            log(f"flownet {step + 1}/{args.iters} loss {statistics.fmean(losses[-50:]):.4f} "
                f"{time.perf_counter() - t0:.0f}s")
    return net.eval(), {"iters": args.iters, "seconds": round(time.perf_counter() - t0, 1),
                        "final_loss": round(statistics.fmean(losses[-50:]), 4) if losses else None,
                        "params": sum(p.numel() for p in net.parameters()), **flownet_config(args),
                        "loss_weights": FLOW_LOSS_WEIGHTS}


def random_crops(pool: dict, batch: int, crop: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, c, c) frame-1 crops and their (B, c, c) segmentation (c clipped to the image)."""
    b = sample(pool, batch, g)
    H, W = b["flow"].shape[-2:]
    ch, cw = min(crop, H), min(crop, W)
    ims, segs = [], []
    for i in range(batch):
        y = int(torch.randint(H - ch + 1, (), generator=g))
        x = int(torch.randint(W - cw + 1, (), generator=g))
        ims.append(b["image1"][i, :, y:y + ch, x:x + cw])
        segs.append(b["segmentation"][i, y:y + ch, x:x + cw])
    return torch.stack(ims), torch.stack(segs)


def embed(net: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    return net(image - 0.5)                                                    # centred [0, 1] colours


def train_embedding(pool: dict, val: dict, args, g: torch.Generator) -> tuple[torch.nn.Module, dict]:
    net = EmbeddingHead(**embedding_config(args))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    t0, losses = time.perf_counter(), []
    net.train()
    for step in range(args.emb_iters):
        cosine_lr(opt, step, args.emb_iters, 1e-3)
        im, seg = random_crops(pool, args.batch, args.emb_crop, g)
        if torch.rand((), generator=g) < 0.5:
            im, seg = im.flip(-1), seg.flip(-1)
        loss = embedding_loss(embed(net, im), seg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == args.emb_iters - 1:
            log(f"embedding {step + 1}/{args.emb_iters} loss {statistics.fmean(losses[-50:]):.4f} "
                f"{time.perf_counter() - t0:.0f}s")
    net.eval()
    with torch.no_grad():
        val_loss = float(embedding_loss(embed(net, val["image1"]), val["segmentation"]))
    return net, {"iters": args.emb_iters, "seconds": round(time.perf_counter() - t0, 1),
                 "final_loss": round(statistics.fmean(losses[-50:]), 4) if losses else None,
                 "val_loss": round(val_loss, 4),
                 "params": sum(p.numel() for p in net.parameters()), **embedding_config(args), "crop": args.emb_crop}


# -------------------------------------------------------------------------------------------- evaluation

def epe(flow: torch.Tensor, split: dict, all_pixels: bool = False) -> dict:
    m = FlowMetrics(BAND_WIDTH, THRESHOLD)
    m.update(flow, split["flow"], None if all_pixels else split["valid"])
    r = m.compute()
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}


def cascade_search(flow: torch.Tensor, split: dict, embedding: torch.Tensor, lam: float, distance: str,
                   kernel: int, dilation, iterations: tuple[int, ...]) -> dict:
    """{iterations: val ``epe`` result dict} of the cascade for every count in ``iterations``, built from the same
    blocks as ``attnseg.nn.segaware_filter.segaware_filter_cascade`` (the same masks, computed once; the cascade
    run once up to the largest count)."""
    dils = (dilation,) if isinstance(dilation, int) else tuple(dilation)
    masks = {d: LocalAttentionMask(kernel, d, distance, init_lambda=lam, learn_lambda=False,
                                   remove_bounds=True)(embedding) for d in set(dils)}   # (B, k², H, W) each
    out, f = {}, flow
    for it in range(1, max(iterations) + 1):
        for d in dils:
            f = segaware_filter(f, masks[d], kernel, d)
        if it in iterations:
            out[it] = epe(f, split)
    return out


def search(name: str, flow: torch.Tensor, split: dict, embeddings: dict, distance: str, grid: dict) -> dict:
    """{objective: best setting of the grid on val} for each key of ``OBJECTIVES`` (lowest val overall EPE, lowest
    val EPE near boundaries); ``embeddings`` maps a parameter dict (as a tuple of items) to the (embedding, λ) it
    uses."""
    t0, best, tried = time.perf_counter(), dict.fromkeys(OBJECTIVES), 0
    for (params, (e, lam)), kernel, dilation in itertools.product(embeddings.items(), grid["kernels"],
                                                                   grid["dilations"]):
        for it, r in cascade_search(flow, split, e, lam, distance, kernel, dilation, grid["iterations"]).items():
            tried += 1
            for key in OBJECTIVES:
                if best[key] is None or r[key] < best[key][f"val_{key}"]:
                    best[key] = {**dict(params), "kernel_size": kernel, "dilation": dilation, "iterations": it,
                                 "val_epe": r["epe"], "val_epe_near": r["epe_near"], "val_epe_away": r["epe_away"]}
    log(f"{name}: best of {tried} on val by {best} ({time.perf_counter() - t0:.0f}s)")
    return {key: {**b, "grid_size": tried} for key, b in best.items()}


def apply(name: str, params: dict, flow: torch.Tensor, image: torch.Tensor, e: torch.Tensor | None):
    common = {k: params[k] for k in ("kernel_size", "dilation", "iterations")}
    if name == "bilateral":
        return bilateral_flow_filter(flow, image, colour_scale=params["colour_scale"],
                                     position_scale=params["position_scale"], **common)
    return segaware_flow_filter(flow, e, lam=params["lam"], distance="l1", **common)


def proxy_flow(gt: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) ground truth -> its 4x4 cell means upsampled bilinearly: a perfect FlowNetS flow2, upsampled."""
    low = F.adaptive_avg_pool2d(gt, (-(-gt.shape[-2] // 4), -(-gt.shape[-1] // 4)))    # (N, 2, H/4, W/4)
    return F.interpolate(low, size=gt.shape[-2:], mode="bilinear", align_corners=False)


def one_hot(seg: torch.Tensor) -> torch.Tensor:
    return F.one_hot(seg, int(seg.max()) + 1).permute(0, 3, 1, 2).float()       # (B, H, W, K) -> (B, K, H, W)


def median_ms(fn, n: int) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 2)


# ------------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=2500, help="flow network optimiser steps (~0.11 s each, 1 thread; "
                   "~0.14 s with --correlation)")
    p.add_argument("--emb-iters", type=int, default=1200, help="embedding optimiser steps (~0.11 s each)")
    p.add_argument("--emb-dim", type=int, default=EMBEDDING["dim"], help="embedding dimensions D")
    p.add_argument("--emb-width", type=float, default=EMBEDDING["width"], help="embedding head channel multiplier")
    p.add_argument("--correlation", action="store_true",
                   help="train the FlowNetC-style network (cost volume at 1/4 resolution, ±8 px) instead of FlowNetS")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--emb-crop", type=int, default=64, help="square crop size of the embedding training")
    p.add_argument("--size", type=parse_size, default=(96, 128), help="scene size HxW")
    p.add_argument("--train-pairs", type=int, default=600, help="generated training pairs (~65 ms each)")
    p.add_argument("--val-pairs", type=int, default=32)
    p.add_argument("--test-pairs", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="data seed and training seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timing-images", type=int, default=10)
    p.add_argument("--run-dir", default=str(ROOT / "runs" / "bench" / "segaware_flow"))
    p.add_argument("--reuse", action="store_true", help="load the saved weights instead of training")
    p.add_argument("--quick-grid", action="store_true", help="a one-point filter grid (smoke tests)")
    p.add_argument("--proxy", action="store_true",
                   help="filter a proxy flow instead of FlowNetS's: the ground truth averaged over 4x4 cells and "
                        "upsampled bilinearly (what a perfect 1/4-resolution FlowNetS output looks like)")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def trained_models(args, cfg: FlowSceneConfig, val: dict) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items() if k in SETTING_KEYS}
    settings.update(flownet=flownet_config(args), embedding=embedding_config(args))
    path = Path(args.run_dir) / "weights.pt"
    if args.reuse:
        if not path.is_file():
            raise SystemExit(f"--reuse: no weights at {path}; run once without --reuse to train them")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if ckpt["settings"] != settings:
            raise SystemExit(f"--reuse: {path} was trained with {ckpt['settings']}, not {settings}; run without "
                             "--reuse (or use another --run-dir)")
        flownet, embedder = flownet_simple(**flownet_config(args)), EmbeddingHead(**embedding_config(args))
        flownet.load_state_dict(ckpt["flownet"])
        embedder.load_state_dict(ckpt["embedding"])
        log(f"reusing {path}")
        return flownet.eval(), embedder.eval(), {**ckpt["train"], "reused": str(path)}
    t0 = time.perf_counter()
    pool = load_split("train", args.train_pairs, cfg, args.seed)
    gen_s = round(time.perf_counter() - t0, 1)
    log(f"generated {args.train_pairs} training pairs in {gen_s}s")
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    flownet, flow_info = train_flownet(pool, args, g)
    embedder, emb_info = train_embedding(pool, val, args, g)
    train = {"generate_seconds": gen_s, "flownet": flow_info, "embedding": emb_info}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"settings": settings, "flownet": flownet.state_dict(), "embedding": embedder.state_dict(),
                "train": train}, path)
    return flownet, embedder, {**train, "weights": str(path)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    cfg = FlowSceneConfig(size=tuple(args.size))
    val = load_split("val", args.val_pairs, cfg, args.seed)
    test = load_split("test", args.test_pairs, cfg, args.seed)
    flownet, embedder, train = trained_models(args, cfg, val)

    with torch.no_grad():
        outs = {}
        for name, split in (("val", val), ("test", test)):
            flow = proxy_flow(split["flow"]) if args.proxy else torch.cat(
                [flownet(split["image1"][i:i + 8], split["image2"][i:i + 8])["flow"]
                 for i in range(0, len(split["flow"]), 8)])                              # (N, 2, H, W)
            e = torch.cat([embed(embedder, split["image1"][i:i + 8]) for i in range(0, len(split["flow"]), 8)])
            outs[name] = (flow, e)
        vflow, ve = outs["val"]
        train["flow_val"] = {"network": epe(vflow, val), "zero_flow": epe(torch.zeros_like(vflow), val)}
        log(f"val EPE of the flow: {train['flow_val']['network']['epe']} (zero flow "
            f"{train['flow_val']['zero_flow']['epe']})")
        grid = QUICK_GRID if args.quick_grid else GRID
        found = {
            "segaware": search("segaware", vflow, val, {(("lam", lam),): (ve, lam) for lam in grid["lambdas"]},
                               "l1", grid),
            "bilateral": search("bilateral", vflow, val, {
                (("colour_scale", sc), ("position_scale", sp)): (bilateral_embedding(val["image1"], sc, sp), 1.0)
                for sc, sp in itertools.product(grid["colour_scales"], grid["position_scales"])}, "l2", grid),
            "segaware_oracle": search("segaware_oracle", vflow, val,
                                      {(("lam", ORACLE_LAMBDA),): (one_hot(val["segmentation"]), ORACLE_LAMBDA)},
                                      "l1", grid),
        }
        chosen = {name: f["epe"] for name, f in found.items()}                  # by overall EPE (main table)
        chosen_near = {name: f["epe_near"] for name, f in found.items()}        # by EPE near boundaries
        # the search's own cascade must agree with the library's filters on val
        check = {name: round(epe(apply(name, p, vflow, val["image1"], one_hot(val["segmentation"])
                                       if name == "segaware_oracle" else ve), val)["epe"], 4)
                 for name, p in chosen.items()}
        consistent = all(abs(check[n] - chosen[n]["val_epe"]) < 1e-3 for n in chosen)

        tflow, te = outs["test"]
        tables = {}
        for key, picks in (("test", chosen), ("test_by_near", chosen_near)):
            filtered = {"unfiltered": tflow}
            for name, p in picks.items():
                e = one_hot(test["segmentation"]) if name == "segaware_oracle" else te
                filtered[name] = apply(name, p, tflow, test["image1"], e)
            tables[key] = {name: epe(f, test) for name, f in filtered.items()}
            if key == "test":
                results_all = {name: epe(f, test, all_pixels=True) for name, f in filtered.items()}
        zero_flow = {"valid": epe(torch.zeros_like(tflow), test),
                     "all_pixels": epe(torch.zeros_like(tflow), test, all_pixels=True)}

        n = min(args.timing_images, len(test["flow"]))
        im1, im2 = test["image1"], test["image2"]
        times = {
            "flownet": median_ms(lambda i: flownet(im1[i:i + 1], im2[i:i + 1]), n),
            "embedding": median_ms(lambda i: embed(embedder, im1[i:i + 1]), n),
            "segaware_filter": median_ms(lambda i: apply("segaware", chosen["segaware"], tflow[i:i + 1], None,
                                                         te[i:i + 1]), n),
            "bilateral_filter": median_ms(lambda i: apply("bilateral", chosen["bilateral"], tflow[i:i + 1],
                                                          im1[i:i + 1], None), n),
            "segaware_filter_by_near": median_ms(lambda i: apply("segaware", chosen_near["segaware"], tflow[i:i + 1],
                                                                 None, te[i:i + 1]), n),
            "bilateral_filter_by_near": median_ms(lambda i: apply("bilateral", chosen_near["bilateral"],
                                                                  tflow[i:i + 1], im1[i:i + 1], None), n),
        }
    for table in tables.values():
        base = table["unfiltered"]
        for r in table.values():
            for k in ("epe", "epe_near", "epe_away"):
                r[f"{k}_vs_unfiltered"] = round(r[k] / base[k], 4) if base[k] else None
    source = ("proxy (gt 4x4 means, bilinear up)" if args.proxy else
              "FlowNetC-style (correlation)" if args.correlation else "FlowNetS")
    doc = {"benchmark": "segaware_flow", "settings": {**{k: v for k, v in vars(args).items() if k != "out"},
                                                      "size": list(args.size)},
           "flow_source": source,
           "data": {"generator": "attnseg.data.flow_synthetic", "train": args.train_pairs, "val": args.val_pairs,
                    "test": args.test_pairs, "seed": args.seed},
           "metric": {"band_width_px": BAND_WIDTH, "boundary_threshold_px": THRESHOLD,
                      "definition": "EPE over valid pixels (visible in frame 2); near = within 3 px (Euclidean) of a "
                                    "pixel whose gt flow differs from a 4-neighbour's by > 0.5 px; away = the rest"},
           "train": train,
           "selection": {"split": "val", "objective": OBJECTIVES["epe"], "grid": grid, **chosen,
                         "library_check_val_epe": check, "library_check_ok": consistent},
           "selection_by_near": {"split": "val", "objective": OBJECTIVES["epe_near"], **chosen_near},
           "test": tables["test"], "test_by_near": tables["test_by_near"], "test_all_pixels": results_all,
           "test_zero_flow": zero_flow, "time_ms_per_image": times, "machine": machine_info("cpu")}
    for key, table in tables.items():
        lines = [f"{key} ({doc['selection' if key == 'test' else 'selection_by_near']['objective']} on val)",
                 "| variant | EPE | near | away |", "|---|---|---|---|"]
        lines += [f"| {n} | {r['epe']:.3f} | {r['epe_near']:.3f} | {r['epe_away']:.3f} |" for n, r in table.items()]
        zf = zero_flow["valid"]
        lines.append(f"| zero flow | {zf['epe']:.3f} | {zf['epe_near']:.3f} | {zf['epe_away']:.3f} |")
        log("\n".join(lines))
    emit(doc, args.out)
    return doc


if __name__ == "__main__":
    main()
