"""The ``attnseg`` command: demo, train, eval, predict, models, data check.

    attnseg demo [--out DIR] [--iters N]
    attnseg train CONFIG [key=value ...]          (also: torchrun --nproc_per_node=N -m attnseg train CONFIG)
    attnseg eval CHECKPOINT --data camvid:PATH [--split val] [--mode whole|slide] [--tta scales=0.75,1,1.25 flip=true]
    attnseg predict CHECKPOINT IMAGE... --out DIR [--attention [--query Y,X ...]]
    attnseg models
    attnseg data check SPEC [--splits train,val]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path


def _pair(s: str) -> tuple[int, int]:
    """``H,W`` (or ``HxW``, or one number for both) of positive integers, for --crop and --stride."""
    try:
        parts = [int(v) for v in s.replace("x", ",").split(",")]
        if len(parts) not in (1, 2) or min(parts) < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes H,W: two integers >= 1 such as 180,240; not {s!r}") from None
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _positive(kind):
    def parse(s: str):
        try:
            v = kind(s)
            if not v > 0:
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes a number > 0, not {s!r}") from None
        return v
    return parse


DEFAULT_MAX_MEMORY_GB = 8.0


def _query(s: str) -> tuple[int, int]:
    """``--query Y,X``: an image pixel, row then column."""
    parts = s.replace(" ", "").split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return int(parts[0]), int(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"--query takes Y,X: the pixel's row and column in the full-resolution "
                                         f"image, two integers such as 180,240; not {s!r}") from None


def _parse_tta(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        key, _, val = item.partition("=")
        if key == "scales":
            try:
                out["scales"] = tuple(float(v) for v in val.split(","))
            except ValueError:
                out["scales"] = ()
            if not out["scales"] or min(out["scales"]) <= 0:
                raise ValueError(f"--tta {item}: scales must be numbers > 0 separated by commas, e.g. "
                                 "scales=0.75,1,1.25")
        elif key == "flip":
            if val.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(f"--tta {item}: flip takes true or false")
            out["flip"] = val.lower() in ("1", "true", "yes", "on")
        else:
            raise ValueError(f"--tta takes scales=0.75,1,1.25 and flip=true|false, not {item!r}")
    return out


def cmd_train(args) -> int:
    from .engine.config import load_config
    from .engine.trainer import train
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config] + overrides  # only overrides were given
    notes = []
    cfg = load_config(config, overrides, notes)
    print(f"run directory: {cfg.run_dir}", flush=True)
    for note in notes:
        print(note, flush=True)
    train(cfg, command="attnseg train " + " ".join(shlex.quote(a) for a in sys.argv[2:]))
    return 0


def _inference_from(meta: dict, args):
    from .engine.inference import InferenceConfig
    saved = meta.get("inference", {})
    cfg = InferenceConfig(mode=saved.get("mode", "whole"), crop=saved.get("crop"), stride=saved.get("stride"),
                          scales=tuple(saved.get("scales", (1.0,))), flip=saved.get("flip", False),
                          test_scale=saved.get("test_scale", 1.0))
    if getattr(args, "mode", None):
        cfg.mode = args.mode
    if getattr(args, "crop", None):
        cfg.crop = args.crop
    if getattr(args, "stride", None):
        cfg.stride = args.stride
    if getattr(args, "test_scale", None):
        cfg.test_scale = args.test_scale
    tta = _parse_tta(getattr(args, "tta", None))
    cfg.scales = tta.get("scales", cfg.scales)
    cfg.flip = tta.get("flip", cfg.flip)
    if cfg.mode == "slide" and cfg.crop is None:
        raise ValueError("--mode slide needs --crop H,W (the window, at the network's input scale)")
    return cfg


def _memory_limit(args) -> float:
    """--max-memory (GiB), else $ATTNSEG_MAX_MEMORY_GB, else 8 GiB."""
    import os
    if getattr(args, "max_memory", None):
        return args.max_memory * 1024 ** 3
    env = os.environ.get("ATTNSEG_MAX_MEMORY_GB")
    if env:
        try:
            value = float(env)
            if value <= 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"ATTNSEG_MAX_MEMORY_GB={env!r} is not a number of GiB > 0") from None
        return value * 1024 ** 3
    return DEFAULT_MAX_MEMORY_GB * 1024 ** 3


def _fallback_crop(meta: dict):
    crop = (meta.get("config") or {}).get("crop")
    return tuple(crop) if crop else (512, 512)


def collect_images(items: list[str]) -> list[Path]:
    """Image arguments -> files: a folder gives every image directly inside it (sorted)."""
    from .data.io import IMAGE_EXTS, DataError
    paths = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
            if not found:
                raise DataError(f"folder {p} holds no images ({', '.join(IMAGE_EXTS)}); give image files or a "
                                "folder of images")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise DataError(f"image {p} does not exist; give image files or a folder of images")
    first: dict = {}
    for q in paths:
        first.setdefault(q.resolve(), q)
    if len(first) < len(paths):
        print(f"{len(paths) - len(first)} input(s) named twice: each image is predicted once")
    return list(first.values())


def output_stems(paths: list[Path]) -> list[str]:
    """One output name per input, distinct even where file names repeat: ``a/im.png`` and ``b/im.png`` give
    ``a_im`` and ``b_im`` (as many parent folders as it takes; ``im-2`` where even the full paths agree)."""
    from collections import Counter
    parts = [Path(p).resolve().with_suffix("").parts for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["_".join(pp[-d:]).lstrip("_/") for pp, d in zip(parts, depth)]
        counts = Counter(names)
        clash = [i for i, n in enumerate(names) if counts[n] > 1 and depth[i] < len(parts[i])]
        if not clash:
            break
        for i in clash:
            depth[i] += 1
    out, taken = [], set()
    for n in names:
        name, k = n, 1
        while name in taken:  # the same file given twice (or a clash with another input's numbered name)
            k += 1
            name = f"{n}-{k}"
        taken.add(name)
        out.append(name)
    return out


def _normalize_from(meta: dict):
    """The normalisation the checkpoint was trained with."""
    from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalize
    pre = meta.get("preprocessing", {})
    return Normalize(tuple(pre.get("mean", IMAGENET_MEAN)), tuple(pre.get("std", IMAGENET_STD)))


def cmd_eval(args) -> int:
    from .data import build_dataset
    from .data.transforms import Compose
    from .engine.checkpoint import load_model
    from .engine.inference import evaluate
    from .engine.precision import Precision, resolve_device
    from .metrics.report import format_table, save_metrics
    device = resolve_device(args.device)
    prec = Precision.resolve(device, args.precision)
    model, meta = load_model(args.checkpoint, device)
    model = prec.model(model)
    ds = build_dataset(args.data, args.split, transform=Compose([_normalize_from(meta)]))
    if ds.spec.names != meta["classes"]["names"]:
        raise ValueError(f"the checkpoint's classes {meta['classes']['names']} differ from the dataset's "
                         f"{ds.spec.names}")
    icfg = _inference_from(meta, args)
    from .engine.inference import MemoryPlanner
    planner = MemoryPlanner(model, icfg, ds.spec.num_classes, _memory_limit(args), _fallback_crop(meta))

    def plan(hw):  # estimated once per image size, before the first image of that size runs
        cfg, note = planner(hw)
        if note:
            print(f"\n{note} (and for every {hw[1]}x{hw[0]} image)", flush=True)
        return cfg

    plan(ds.load(0)[0].shape[:2])  # the first size before the bar starts: a refusal stops at once
    n = len(ds) if args.max_images is None else min(len(ds), args.max_images)
    from tqdm import tqdm
    t = time.time()
    with tqdm(total=n, unit="img", desc="eval", dynamic_ncols=True, disable=args.no_progress,
              mininterval=1.0 if sys.stderr.isatty() else 15.0) as bar:
        metrics, cm = evaluate(model, ds, icfg, prec, args.max_images, progress=bar.update, plan=plan)
    dt = time.time() - t
    print(f"{args.data} [{args.split}], {n} images, "
          f"inference {icfg.describe()}, {prec.name}, {dt:.1f} s")
    print(format_table(metrics, ds.spec.names))
    if args.out:
        save_metrics(args.out, metrics, ds.spec.names, cm.mat.numpy(),
                     extra={"checkpoint": str(args.checkpoint), "data": args.data, "split": args.split,
                            "inference": icfg.describe(), "seconds": round(dt, 2)})
        print(f"metrics written to {args.out}")
    return 0


def cmd_predict(args) -> int:
    import numpy as np
    import torch

    from .data import LabelSpec, read_image
    from .engine.checkpoint import load_model
    from .engine.inference import infer
    from .engine.precision import Precision, resolve_device
    from .viz.attention_maps import check_query
    from .viz.overlay import overlay, save_label_png
    queries = getattr(args, "query", None) or []
    if queries and not args.attention:
        raise ValueError("--query picks the pixel whose attention is drawn; add --attention")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the predictions (it is created if needed)")
    images = collect_images(args.images)
    device = resolve_device(args.device)
    prec = Precision.resolve(device, args.precision)
    model, meta = load_model(args.checkpoint, device)
    model = prec.model(model)
    spec = LabelSpec.from_dict(meta["classes"])
    norm = _normalize_from(meta)
    base_cfg = _inference_from(meta, args)
    stems = output_stems(images)
    if len(set(p.stem for p in images)) < len(images):
        print("some inputs share a file name: outputs are named after their folders too ("
              + ", ".join(f"{p} -> {s}" for p, s in zip(images, stems) if s != p.stem) + ")")
    out.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    from .engine.inference import MemoryPlanner
    planner = MemoryPlanner(model, base_cfg, spec.num_classes, _memory_limit(args), _fallback_crop(meta))
    for path, stem in zip(images, stems):
        image = read_image(path)
        for q in queries:
            check_query(q, image.shape[:2])  # before the inference: a wrong query fails fast, with the image size
        icfg, note = planner(image.shape[:2])  # estimated once per image size, before anything big is allocated
        if note:
            print(f"{path}: {note} (and for every later {image.shape[1]}x{image.shape[0]} image)", flush=True)
        x, _ = norm(image, None, None)
        t = time.time()
        with torch.no_grad():
            scores = infer(model, x[None].to(device), icfg, spec.num_classes, prec.autocast(), prec.channels_last)
        ids = scores.argmax(1)[0].cpu().numpy().astype(np.uint8)
        save_label_png(out / f"{stem}_ids.png", ids, spec)
        Image.fromarray(overlay(image, ids, spec)).save(out / f"{stem}_overlay.png")
        print(f"{path}: {ids.shape[1]}x{ids.shape[0]}, {1000 * (time.time() - t):.0f} ms -> "
              f"{out / (stem + '_ids.png')}, {out / (stem + '_overlay.png')}")
        if args.attention and icfg.mode != base_cfg.mode:
            print(f"  attention maps are drawn from one whole-image pass, which the memory limit ruled out for "
                  f"{path}; give a smaller image or a larger --max-memory")
        elif args.attention:
            _write_attention(model, meta, prec, x.to(device), image, ids, spec, out / stem, queries,
                             icfg.test_scale)
    return 0


def _write_attention(model, meta, prec, x, image, ids, spec, prefix: Path, queries=(), test_scale: float = 1.0) -> None:
    """Every attention map the model returns, as heat maps over the image; for a multi-scale model also the
    per-scale weights and predictions side by side (``<stem>_scales.png``, Chen et al. 2016, Fig. 1/5 style).

    Models whose maps carry a feature ``grid`` (the FLANet family: (B, H'W', h'w') non-local / position maps,
    criss-cross crosses, C×C channel maps) are drawn per query pixel (y, x): ``<stem>_query_<y>_<x>.png`` (the
    figure of ``query_attention_figure``) and ``<stem>_attn_<name>_q<y>_<x>.png`` per spatial map; without
    ``queries`` the image centre is the query. The input is resized by ``test_scale`` first, as for the prediction
    (a model trained at half resolution attends at half resolution)."""
    import torch
    from PIL import Image

    from .engine.inference import rescale
    from .models.base import resize_to
    from .viz.overlay import blend_heatmap, overlay, scale_attention_figure

    H, W = image.shape[:2]
    with torch.no_grad():
        att = model(prec.images(rescale(x[None], test_scale)), return_attention=True).get("attention", {})
    if not att:
        print(f"  model {meta['model']} returns no attention maps (FCN, DeconvNet and LargeFOV are attention-free "
              "baselines)")
    written = []
    scales = getattr(model, "scales", None)
    if "scale_weights" in att and "scale_logits" in att:
        weights = att.pop("scale_weights")[0].float().cpu().numpy()                    # (S, h, w), resized when drawn
        logits = att.pop("scale_logits")[0].float()                                     # (S, K, h, w)
        scale_ids = resize_to(logits, (H, W)).argmax(1).cpu().numpy().astype("uint8")   # (S, H, W)
        scales = scales or list(range(len(weights)))
        for s, w, p in zip(scales, weights, scale_ids):
            path = Path(f"{prefix}_attn_scale_{s:g}.png")
            Image.fromarray(blend_heatmap(image, w, 0.75, vmin=0.0, vmax=1.0)).save(path)
            path2 = Path(f"{prefix}_pred_scale_{s:g}.png")
            Image.fromarray(overlay(image, p, spec)).save(path2)
            written += [path, path2]
        fig = Path(f"{prefix}_scales.png")
        scale_attention_figure(image, ids, weights, scale_ids, spec, scales).save(fig)
        written.append(fig)
    if "embedding" in att:
        written += _write_local_masks(att, image, prefix, queries)
    if "grid" in att:
        written += _write_query_attention(att, image, prefix, queries, meta["model"])
    elif queries and att:
        print(f"  --query is for models whose attention maps live on a feature grid (the FLANet family); "
              f"{meta['model']}'s maps are drawn over the whole image")
    for name, a in att.items():
        a = a[0].float()
        while a.dim() > 2:
            a = a.mean(0)
        path = Path(f"{prefix}_attn_{name}.png")
        Image.fromarray(blend_heatmap(image, a.cpu().numpy(), 0.6)).save(path)
        written.append(path)
    if written:
        print("  attention: " + ", ".join(str(p) for p in written))


def _write_local_masks(att: dict, image, prefix: Path, queries) -> list[Path]:
    """Segmentation-aware networks (Harley et al. 2017): ``<stem>_embedding.png`` (the embedding's first three
    principal components as colour) and per query ``<stem>_masks_<y>_<x>.png`` (the local attention masks of one
    layer per resolution and window around that pixel). Removes the maps it drew from ``att``."""
    from PIL import Image

    from .viz.local_masks import embedding_pca_colours, local_mask_figure, parse_mask_key

    H, W = image.shape[:2]
    one = {name: a[0] for name, a in att.items() if name == "embedding" or parse_mask_key(name)}
    path = Path(f"{prefix}_embedding.png")
    Image.fromarray(embedding_pca_colours(one["embedding"])).resize((W, H), Image.NEAREST).save(path)
    written = [path]
    if len(one) > 1:
        if not queries:
            queries = [(H // 2, W // 2)]
            print(f"  no --query given: drawing the local attention masks of the image centre {queries[0]}; give "
                  "--query Y,X (image pixels, repeatable) for other pixels")
        for y, x in queries:
            fig = Path(f"{prefix}_masks_{y}_{x}.png")
            local_mask_figure(image, one, (y, x)).save(fig)
            written.append(fig)
    for name in one:
        att.pop(name)
    return written


def _write_query_attention(att: dict, image, prefix: Path, queries, model_name: str) -> list[Path]:
    """The FLANet family's maps for each query (see ``_write_attention``); removes the maps it drew from ``att``
    (and ``grid``), so that the generic per-map loop draws only what is left."""
    from PIL import Image

    from .viz.attention_maps import QUERY_KEYS, map_name, query_attention_figure, query_attention_maps, query_heatmap

    H, W = image.shape[:2]
    if set(att) == {"grid"}:
        att.pop("grid")
        print(f"  model {model_name} returns no attention maps (its head has no attention block)")
        return []
    if not queries:
        queries = [(H // 2, W // 2)]
        print(f"  no --query given: drawing the attention of the image centre {queries[0]}; give --query Y,X "
              "(image pixels, repeatable) for other pixels")
    written = []
    for y, x in queries:
        maps = query_attention_maps(att, (y, x), (H, W))
        fig = Path(f"{prefix}_query_{y}_{x}.png")
        query_attention_figure(image, maps, (y, x)).save(fig)
        written.append(fig)
        for title, kind, values in maps:
            if kind == "spatial":
                path = Path(f"{prefix}_attn_{map_name(title)}_q{y}_{x}.png")
                Image.fromarray(query_heatmap(image, values, (y, x))).save(path)
                written.append(path)
    for name in QUERY_KEYS:
        att.pop(name, None)
    return written


def cmd_models(args) -> int:
    import torch

    from .models import MODELS, create_model
    print(f"{'model':32s} {'parameters (K=' + str(args.num_classes) + ')':>22s}")
    for name in sorted(MODELS):
        with torch.device("meta"):
            m = create_model(name, num_classes=args.num_classes)
        print(f"{name:32s} {sum(p.numel() for p in m.parameters()) / 1e6:20.2f} M")
    return 0


def cmd_data(args) -> int:
    from .data.check import check_dataset
    report = check_dataset(args.spec, tuple(args.splits.split(",")))
    print(report.format())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1))
    return 1 if report.problems else 0


def cmd_demo(args) -> int:
    from .engine.config import TrainConfig
    from .engine.trainer import train
    out = Path(args.out)
    cfg = TrainConfig(model="fcn8s_resnet18", data="synthetic:", run_dir=str(out), crop=(128, 160),
                      scale_range=(0.75, 1.25), batch_size=8, iters=args.iters, lr=3e-3, weight_decay=0.01,
                      warmup_iters=50, val_interval=max(args.iters // 4, 1), val_max_images=30, ckpt_interval=200,
                      log_interval=20, workers=0, resume=not args.fresh, seed=args.seed)
    t = time.time()
    print(f"attnseg demo: FCN-8s ResNet-18 on synthetic scenes, {args.iters} steps on {cfg.device}; "
          f"run directory {out}", flush=True)
    metrics = train(cfg, command="attnseg demo " + " ".join(sys.argv[2:]))
    miou = 100 * metrics.get("mIoU", float("nan"))
    print(f"\ndemo finished in {(time.time() - t) / 60:.1f} min: val mIoU {miou:.2f}")
    print(f"run directory: {out.resolve()}")
    print(f"  per-class table: {out / 'metrics.txt'}\n  pictures:        {out / 'pictures'}\n"
          f"  learning curve:  {out / 'learning_curve.png'}\n"
          f"  checkpoint:      {out / 'checkpoints/model.safetensors'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnseg", description="attention-driven image segmentation")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="train and evaluate on synthetic scenes (a few CPU minutes)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--iters", type=int, default=600)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--fresh", action="store_true", help="ignore an earlier demo run in --out")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train from a YAML config with key=value overrides")
    t.add_argument("config", nargs="?", help="YAML file under configs/ (optional)")
    t.add_argument("overrides", nargs="*", help="key=value, e.g. lr=0.01 iters=4000 run_dir=runs/x")
    t.set_defaults(func=cmd_train)

    def add_infer_args(q):
        q.add_argument("--mode", choices=("whole", "slide"))
        q.add_argument("--crop", type=_pair, help="slide window H,W")
        q.add_argument("--stride", type=_pair, help="slide stride H,W (default 2/3 of the crop)")
        q.add_argument("--test-scale", type=_positive(float),
                       help="resize factor before inference (default: the checkpoint's)")
        q.add_argument("--max-memory", type=_positive(float), metavar="GIB",
                       help="memory limit of one inference in GiB (default $ATTNSEG_MAX_MEMORY_GB or "
                            f"{DEFAULT_MAX_MEMORY_GB:g}); a whole-image inference estimated above it runs in sliding "
                            "windows of the training crop, or stops with the estimate")
        q.add_argument("--tta", nargs="*", help="scales=0.75,1,1.25 flip=true")
        q.add_argument("--device", default="auto")
        q.add_argument("--precision", default="auto")

    e = sub.add_parser("eval", help="evaluate a checkpoint on a dataset split")
    e.add_argument("checkpoint")
    e.add_argument("--data", required=True, help="dataset spec, e.g. camvid:../shared/data/camvid")
    e.add_argument("--split", default="val")
    e.add_argument("--out", help="folder for metrics.json, per_class.csv, confusion.csv")
    e.add_argument("--max-images", type=_positive(int))
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_infer_args(e)
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="class-id PNGs and colour overlays for images")
    pr.add_argument("checkpoint")
    pr.add_argument("images", nargs="+", help="image files or folders of images")
    pr.add_argument("--out", required=True)
    pr.add_argument("--attention", action="store_true", help="also write the model's attention maps")
    pr.add_argument("--query", type=_query, action="append", metavar="Y,X",
                    help="with --attention, for FLANet-family and segmentation-aware models: the pixel (row, column of "
                         "the full-resolution image) whose attention is drawn, <stem>_query_<Y>_<X>.png or "
                         "<stem>_masks_<Y>_<X>.png; repeatable (default: the centre)")
    add_infer_args(pr)
    pr.set_defaults(func=cmd_predict)

    m = sub.add_parser("models", help="list models with parameter counts")
    m.add_argument("--num-classes", type=int, default=21)
    m.set_defaults(func=cmd_models)

    da = sub.add_parser("data", help="dataset tools")
    dsub = da.add_subparsers(dest="data_cmd", required=True)
    c = dsub.add_parser("check", help="scan a dataset and report every problem and the class frequencies")
    c.add_argument("spec", help="e.g. camvid:../shared/data/camvid or folder:/path")
    c.add_argument("--splits", default="train,val")
    c.add_argument("--json", help="also write the report as JSON")
    c.set_defaults(func=cmd_data)
    return p


def _message(e: BaseException) -> str:
    """The user-facing line of an error. An error raised in a DataLoader worker arrives re-raised with the worker's
    traceback as its text: keep its last line, the original message."""
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if "Original Traceback" in msg:
        last = [line for line in msg.strip().splitlines() if line.strip()][-1]
        msg = last.split(": ", 1)[1] if ": " in last else last
    return msg


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 training stopped on NaN/Inf (the message says which checkpoint is kept), 2 bad input
    (the message names the file or key and the fix), 130 interrupted (last.pt saved). ``ATTNSEG_DEBUG=1`` shows
    tracebacks."""
    import os
    args = build_parser().parse_args(argv)
    from .data.io import DataError
    from .engine.trainer import NonFiniteLoss
    try:
        return args.func(args) or 0
    except (DataError, FileNotFoundError, IsADirectoryError, NotADirectoryError, KeyError, ValueError) as e:
        if "ATTNSEG_DEBUG" in os.environ:
            raise
        print(f"attnseg: error: {_message(e)}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        if "ATTNSEG_DEBUG" in os.environ:
            raise
        print(f"attnseg: training stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("attnseg: interrupted" + ("; checkpoints/last.pt holds the last completed step and the same command "
                                        "continues the run" if args.cmd == "train" else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
