"""The ``attnseg`` command: demo, train, eval, predict, models, data check.

    attnseg demo [--out DIR] [--iters N]
    attnseg train CONFIG [key=value ...]          (also: torchrun --nproc_per_node=N -m attnseg train CONFIG)
    attnseg eval CHECKPOINT --data camvid:PATH [--split val] [--mode whole|slide] [--tta scales=0.75,1,1.25 flip=true]
    attnseg predict CHECKPOINT|FILE.onnx IMAGE... --out DIR [--attention [--query Y,X ...]] [--backend onnx]
    attnseg export RUN --format onnx [--out FILE.onnx] [--opset N] [--ids] [--check-size HxW ...] [--no-check]
    attnseg serve RUN [RUN ...] [--host 127.0.0.1] [--port 8000]
    attnseg models
    attnseg info MODEL [--size HxW] [--num-classes K] [--batch B] [--json] [--set key=value ...]
    attnseg card RUN [--out FILE]
    attnseg data check SPEC [--splits train,val]
    attnseg data coco-shapes OUT [--train N] [--val N] [--seed S] [--size HxW]
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


def _size(s: str) -> tuple[int, int]:
    """``--size HxW`` (or one number for both) of integers >= 32, for generated images."""
    h, _, w = s.lower().partition("x")
    try:
        size = (int(h), int(w or h))
        if min(size) < 32:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes HxW, the image height and width in px, each at least 32, such as "
                                         f"192x192; not {s!r}") from None
    return size


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
    words = ([args.config] if args.config is not None else []) + list(args.overrides)
    # several YAML files are stages trained one after another (a curriculum: a later stage's init_from names an
    # earlier stage's weights); the key=value overrides apply to every stage
    configs = [w for w in words if "=" not in w and w.endswith((".yaml", ".yml"))]
    overrides = [w for w in words if w not in configs]
    if len(configs) > 1 and any(o.split("=", 1)[0].strip() == "run_dir" for o in overrides):
        raise ValueError("run_dir= cannot be given for several stages (each config names its own run_dir); train "
                         "the stages one by one to move them")
    command = "attnseg train " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    stages = []
    for config in configs or [None]:
        notes = []
        stages.append((load_config(config, overrides, notes), notes))  # every stage checked before any trains
    for i, (cfg, notes) in enumerate(stages):
        print(f"run directory: {cfg.run_dir}" + (f" (stage {i + 1} of {len(stages)})" if len(stages) > 1 else ""),
              flush=True)
        for note in notes:
            print(note, flush=True)
        train(cfg, command=command)
    return 0


def _inference_overrides(args) -> dict:
    """The inference settings given on the command line (None: keep the checkpoint's)."""
    tta = _parse_tta(getattr(args, "tta", None))
    return {"mode": getattr(args, "mode", None), "crop": getattr(args, "crop", None),
            "stride": getattr(args, "stride", None), "test_scale": getattr(args, "test_scale", None),
            "scales": tta.get("scales"), "flip": tta.get("flip")}


def _memory_limit(args) -> float:
    """--max-memory (GiB), else $ATTNSEG_MAX_MEMORY_GB, else 8 GiB."""
    from .api import memory_limit_bytes
    return memory_limit_bytes(getattr(args, "max_memory", None))


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
    if meta.get("task") == "instances":
        return eval_instances(args, model, meta, prec)
    if meta.get("task") == "classification":
        return eval_classification(args, model, meta, prec)
    ds = build_dataset(args.data, args.split, transform=Compose([_normalize_from(meta)]))
    if getattr(ds, "task", "semantic") != "semantic":
        raise ValueError(f"{args.data} holds instances but {meta['model']} is a semantic model; evaluate it on a "
                         "semantic dataset")
    if ds.spec.names != meta["classes"]["names"]:
        raise ValueError(f"the checkpoint's classes {meta['classes']['names']} differ from the dataset's "
                         f"{ds.spec.names}")
    from .api import fallback_crop, inference_config
    from .engine.inference import MemoryPlanner
    icfg = inference_config(meta, _inference_overrides(args))
    planner = MemoryPlanner(model, icfg, ds.spec.num_classes, _memory_limit(args), fallback_crop(meta))

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


def _tile_overrides(args) -> dict:
    return {"test_scale": getattr(args, "test_scale", None), "tile": getattr(args, "tile", None),
            "overlap": getattr(args, "tile_overlap", None), "max_side": getattr(args, "max_side", None),
            "post": getattr(args, "post", None)}


def _post_settings(text: str) -> dict:
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"takes key=value[,key=value], e.g. seed_threshold=0.6; not {item!r}")
        out[key.strip()] = value.strip()
    return out


def eval_instances(args, model, meta: dict, prec) -> int:
    """``attnseg eval`` of an instance checkpoint: the instance table (SBD, |DiC|, DSB, AP, ...)."""
    from tqdm import tqdm

    from .api_instances import InstancePredictor
    from .data import build_dataset, task_of
    from .engine.instance_inference import evaluate_instances
    from .metrics.report import format_instance_table, save_instance_metrics
    semantic_flags = [f for f in ("mode", "crop", "stride", "tta") if getattr(args, f, None) is not None]
    if semantic_flags:
        flags = ", ".join(f"--{f}" for f in semantic_flags)
        raise ValueError(f"{meta['model']} is an instance model: {flags} "
                         f"{'does' if len(semantic_flags) == 1 else 'do'} not apply (it takes --test-scale, and "
                         "--tile, --tile-overlap and --max-side for large images)")
    ds = build_dataset(args.data, args.split, transform=_normalize_from(meta))
    if task_of(ds) != "instances":
        raise ValueError(f"{meta['model']} is an instance model but {args.data} is a semantic dataset; give an "
                         "instance dataset (dsb2018:, cvppp:, coco:, instances:, nuclei:, rosettes:, shapes:)")
    predictor = InstancePredictor(model, meta, device=prec.device, precision=prec, **_tile_overrides(args))
    icfg = predictor.inference
    n = len(ds) if args.max_images is None else min(len(ds), args.max_images)
    t = time.time()
    with tqdm(total=n, unit="img", desc="eval", dynamic_ncols=True, disable=args.no_progress,
              mininterval=1.0 if sys.stderr.isatty() else 15.0) as bar:
        summary, rows = evaluate_instances(model, ds, icfg, prec, args.max_images, progress=bar.update)
    dt = time.time() - t
    print(f"{args.data} [{args.split}], {n} images, inference {icfg.describe()}, {prec.name}, {dt:.1f} s "
          f"({summary['s_per_image']:.3f} s per image); post-processing "
          + ", ".join(f"{k}={v}" for k, v in predictor.post.items()))
    print(format_instance_table(summary))
    if args.out:
        save_instance_metrics(args.out, summary, rows, extra={
            "checkpoint": str(args.checkpoint), "data": args.data, "split": args.split,
            "inference": icfg.describe(), "precision": prec.name, "seconds": round(dt, 2), "post": predictor.post})
        print(f"metrics written to {args.out} (metrics.json, per_image.csv)")
    return 0


def _refuse_segmentation_flags(args, meta: dict) -> None:
    flags = [f for f in ("mode", "crop", "stride", "tta", "test_scale", "tile", "tile_overlap", "max_side", "post",
                         "max_memory") if getattr(args, f, None) is not None]
    if getattr(args, "query", None):
        flags.append("query")
    if flags:
        given = ", ".join("--" + f.replace("_", "-") for f in flags)
        raise ValueError(f"{meta['model']} is a classifier: {given} apply to segmentation models (a classifier "
                         "resizes each image to its training size and its glimpses need no query pixel)")


def eval_classification(args, model, meta: dict, prec) -> int:
    """``attnseg eval`` of a classifier: accuracy, error and the confusion matrix."""
    from tqdm import tqdm

    from .data import build_dataset, task_of
    from .engine.classification import evaluate_classification
    from .metrics.classification import format_classification, save_classification
    _refuse_segmentation_flags(args, meta)
    ds = build_dataset(args.data, args.split)
    if task_of(ds) != "classification":
        raise ValueError(f"{meta['model']} is a classifier but {args.data} is a {task_of(ds)} dataset; give a "
                         "classification dataset (digits:task=...)")
    size = tuple((meta.get("inference") or {}).get("input_size") or ())
    if ds.class_names != meta["classes"]["names"] or (size and tuple(ds.size) != size):
        what = f"{size[0]}x{size[1]} images" if size else "images"
        raise ValueError(f"the checkpoint classifies {what} into {meta['classes']['names']}; "
                         f"{args.data} [{args.split}] holds {ds.size[0]}x{ds.size[1]} images of {ds.class_names}")
    n = len(ds) if args.max_images is None else min(len(ds), args.max_images)
    t = time.time()
    with tqdm(total=n, unit="img", desc="eval", dynamic_ncols=True, disable=args.no_progress,
              mininterval=1.0 if sys.stderr.isatty() else 15.0) as bar:
        s = evaluate_classification(model, ds, prec, args.max_images, progress=bar.update)
    dt = time.time() - t
    print(f"{args.data} [{args.split}], {n} samples, {prec.name}, {dt:.1f} s")
    print(format_classification(s, ds.class_names))
    if args.out:
        save_classification(args.out, s, ds.class_names, extra={
            "checkpoint": str(args.checkpoint), "data": args.data, "split": args.split, "precision": prec.name,
            "seconds": round(dt, 2)})
        print(f"metrics written to {args.out} (metrics.json, confusion.csv)")
    return 0


def predict_classification(args, predictor, images: list[Path], stems: list[str], out: Path) -> int:
    """``attnseg predict`` of a classifier: ``<stem>_class.json`` per image, a line with the top classes, and
    with ``--attention`` the glimpses step by step (``<stem>_glimpses.png``, ``<stem>_glimpse_<t>.png``)."""
    _refuse_segmentation_flags(args, predictor.meta)
    out.mkdir(parents=True, exist_ok=True)
    for path, stem in zip(images, stems):
        result = predictor.predict(path, attention=args.attention)
        written = result.save(out / stem)
        top = ", ".join(f"{n} {100 * p:.1f} %" for n, p in result.top(3))
        print(f"{path}: {result.name} ({top}), {result.timing_ms['total']:.0f} ms -> "
              + ", ".join(str(w) for w in written))
        for note in result.notes:
            print(f"  {note}")
        if result.attention is not None:
            save_pictures(result.attention, None, out, stem, "glimpses")
    return 0


def save_pictures(attention, queries, out: Path, stem: str, label: str) -> list[Path]:
    """Write a result's attention pictures as ``<stem>_<name>.png`` into ``out`` and say so (and their notes)."""
    pictures, notes = attention.pictures(queries)
    for note in notes:
        print(f"  {note}")
    written = []
    for pic in pictures:
        dest = out / f"{stem}_{pic.name}.png"
        pic.to_pil().save(dest)
        written.append(dest)
        if pic.animation is not None:
            written.append(out / f"{stem}_{pic.name}.gif")
            written[-1].write_bytes(pic.animation)
    if written:
        print(f"  {label}: " + ", ".join(str(p) for p in written))
    return written


def cmd_predict(args) -> int:
    from .api import load
    queries = getattr(args, "query", None) or []
    if queries and not args.attention:
        raise ValueError("--query picks the pixel whose attention is drawn; add --attention")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the predictions (it is created if needed)")
    is_onnx = Path(args.checkpoint).suffix.lower() == ".onnx"
    backend = args.backend or ("onnx" if is_onnx else "torch")
    if (backend == "onnx") != is_onnx:
        raise ValueError(f"--backend {backend} runs " + ("an .onnx file written by attnseg export"
                                                         if backend == "onnx" else "a run directory or checkpoint")
                         + f", not {args.checkpoint}")
    if backend == "onnx" and args.attention:
        raise ValueError("--attention needs the PyTorch checkpoint (an ONNX file holds only the logits); give the "
                         "run directory")
    images = collect_images(args.images)
    tiles = {k: v for k, v in _tile_overrides(args).items() if k != "test_scale" and v is not None}
    predictor = load(args.checkpoint, device=args.device, precision=args.precision, max_memory_gb=args.max_memory,
                     **_inference_overrides(args), **tiles)
    stems = output_stems(images)
    if len(set(p.stem for p in images)) < len(images):
        print("some inputs share a file name: outputs are named after their folders too ("
              + ", ".join(f"{p} -> {s}" for p, s in zip(images, stems) if s != p.stem) + ")")
    if getattr(predictor, "task", "") == "classification":
        return predict_classification(args, predictor, images, stems, out)
    out.mkdir(parents=True, exist_ok=True)
    for path, stem in zip(images, stems):
        result = predictor.predict(path, attention=args.attention, query=queries)
        for note in result.notes:
            if note.startswith("attention maps"):
                print(f"  {note} ({path})")
            else:
                print(f"{path}: {note} (and for every later {result.ids.shape[1]}x{result.ids.shape[0]} image)",
                      flush=True)
        written = result.save(out / stem)
        found = f", {result.count} instances" if getattr(result, "kind", "") == "instance" else ""
        print(f"{path}: {result.ids.shape[1]}x{result.ids.shape[0]}{found}, {result.timing_ms['total']:.0f} ms -> "
              + ", ".join(str(w) for w in written))
        if result.attention is not None:
            save_pictures(result.attention, queries, out, stem, "attention")
    return 0


def cmd_serve(args) -> int:
    from .serve import ServeSettings, require_serve_extra, serve
    require_serve_extra()
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port} is not a TCP port (1..65535)")
    settings = ServeSettings(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels)
    serve(args.runs, args.host, args.port, settings, device=args.device, precision=args.precision,
          max_memory_gb=args.max_memory)
    return 0


def cmd_models(args) -> int:
    import torch

    from .models import MODELS, create_model, model_task
    print(f"{'model':32s} {'parameters (K=' + str(args.num_classes) + ')':>22s}")
    for name in sorted(MODELS):
        task = model_task(name)
        instances = task == "instances"
        with torch.device("meta"):
            m = create_model(name, num_classes=1 if instances else 10 if task == "classification" else args.num_classes)
        print(f"{name:32s} {sum(p.numel() for p in m.parameters()) / 1e6:20.2f} M"
              + ("   instances (one class)" if instances else "")
              + ("   classification (10 digits)" if task == "classification" else ""))
    return 0


def cmd_data(args) -> int:
    from .data.check import check_dataset
    report = check_dataset(args.spec, tuple(args.splits.split(",")))
    print(report.format())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1))
    return 1 if report.problems else 0


def cmd_coco_shapes(args) -> int:
    """``attnseg data coco-shapes OUT``: the synthetic three-class shapes set as COCO json + PNGs, and the two data
    strings that read it."""
    from .data.io import DataError
    from .data.synthetic_instances import SHAPE_CLASSES, write_coco_shapes
    if "," in args.out:
        raise DataError(f"{args.out} holds a comma, which a coco:ANNOTATIONS.json,IMAGE_DIR data string cannot; "
                        "choose a folder name without commas")
    paths = write_coco_shapes(args.out, n_train=args.train, n_val=args.val, seed=args.seed, size=args.size)
    n_train, n_val = (len(json.loads(paths[s].read_text())["annotations"]) for s in ("train", "val"))
    classes = ", ".join(f"{k} {name}" for k, name in enumerate(SHAPE_CLASSES, start=1))
    print(f"wrote {args.train} train scenes ({n_train} instances) and {args.val} val scenes ({n_val} instances) of "
          f"{args.size[0]}x{args.size[1]} px, classes {classes}, to {paths['root']}")
    print("train and evaluate on it with:")
    print(f"  {shlex.quote('data=coco:' + str(paths['train']) + ',' + str(paths['images']))} "
          f"{shlex.quote('val_data=coco:' + str(paths['val']) + ',' + str(paths['images']))}")
    return 0


def demo_instances(args) -> int:
    """``attnseg demo --task instances``: the foreground + boundary U-Net with watershed on synthetic nuclei."""
    from .engine.config import TrainConfig
    from .engine.trainer import train
    out = Path(args.out if args.out != "runs/demo" else "runs/demo_instances")
    cfg = TrainConfig(model="unet_watershed_w16", data="nuclei:val=30", run_dir=str(out), crop=(128, 128),
                      scale_range=(0.8, 1.25), batch_size=8, iters=args.iters, lr=3e-3, weight_decay=1e-4,
                      warmup_iters=30, val_interval=max(args.iters // 3, 1), ckpt_interval=200, log_interval=20,
                      workers=0, resume=not args.fresh, seed=args.seed)
    t = time.time()
    print(f"attnseg demo --task instances: foreground + boundary U-Net with watershed on synthetic nuclei fields, "
          f"{args.iters} steps on {cfg.device}; run directory {out}", flush=True)
    metrics = train(cfg, command="attnseg demo " + " ".join(sys.argv[2:]))
    print(f"\ndemo finished in {(time.time() - t) / 60:.1f} min: val DSB score {metrics.get('DSB', float('nan')):.3f}, "
          f"SBD {100 * metrics.get('SBD', float('nan')):.1f}, |DiC| {metrics.get('|DiC|', float('nan')):.2f}")
    print(f"run directory: {out.resolve()}")
    print(f"  metrics:     {out / 'metrics.txt'} ({out / 'metrics.json'}, {out / 'per_image.csv'})\n"
          f"  pictures:    {out / 'pictures'} (image | ground truth | prediction)\n"
          f"  checkpoint:  {out / 'checkpoints/model.safetensors'}\n"
          f"  try:         attnseg predict {out} IMAGE.png --out preds --attention")
    return 0


def cmd_demo(args) -> int:
    if args.task == "instances":
        return demo_instances(args)
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
    d.add_argument("--task", choices=("semantic", "instances"), default="semantic",
                   help="semantic: FCN-8s on synthetic scenes; instances: a U-Net with watershed on synthetic "
                        "nuclei (run directory runs/demo_instances)")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train from a YAML config with key=value overrides")
    t.add_argument("config", nargs="?", help="YAML file under configs/ (optional); several are stages trained in "
                   "order (e.g. configs/cvppp_recattend_box.yaml configs/cvppp_recattend.yaml)")
    t.add_argument("overrides", nargs="*", help="key=value, e.g. lr=0.01 iters=4000 run_dir=runs/x (every stage)")
    t.set_defaults(func=cmd_train)

    def add_infer_args(q):
        q.add_argument("--mode", choices=("whole", "slide"))
        q.add_argument("--crop", type=_pair, help="slide window H,W")
        q.add_argument("--stride", type=_pair, help="slide stride H,W (default 2/3 of the crop)")
        q.add_argument("--test-scale", type=_positive(float),
                       help="resize factor before inference (default: the checkpoint's)")
        q.add_argument("--max-memory", type=_positive(float), metavar="GIB",
                       help="memory limit of one inference in GiB (default $ATTNSEG_MAX_MEMORY_GB or "
                            "8); a whole-image inference estimated above it runs in sliding "
                            "windows of the training crop, or stops with the estimate")
        q.add_argument("--tta", nargs="*", help="scales=0.75,1,1.25 flip=true")
        q.add_argument("--tile", type=_positive(int), metavar="PX",
                       help="instance models: tile side for images above --max-side (default: the checkpoint's)")
        q.add_argument("--tile-overlap", type=int, metavar="PX",
                       help="instance models: tile overlap, more than the largest object (default: the checkpoint's)")
        q.add_argument("--max-side", type=_positive(int), metavar="PX",
                       help="instance models: images with a longer side are tiled (default: the checkpoint's)")
        q.add_argument("--post", type=_post_settings, metavar="K=V[,K=V]",
                       help="instance models: post-processing settings, e.g. seed_threshold=0.6,boundary_threshold=0.4")
        q.add_argument("--device", default="auto")
        q.add_argument("--precision", default="auto")

    e = sub.add_parser("eval", help="evaluate a checkpoint on a dataset split")
    e.add_argument("checkpoint")
    e.add_argument("--data", required=True, help="dataset spec, e.g. camvid:../shared/data/camvid")
    e.add_argument("--split", default="val")
    e.add_argument("--out", help="folder for metrics.json, per_class.csv, confusion.csv (instances: metrics.json, "
                                 "per_image.csv)")
    e.add_argument("--max-images", type=_positive(int))
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_infer_args(e)
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="class-id PNGs and colour overlays for images")
    pr.add_argument("checkpoint", help="run directory, checkpoint file, or .onnx file (attnseg export)")
    pr.add_argument("images", nargs="+", help="image files or folders of images")
    pr.add_argument("--out", required=True)
    pr.add_argument("--attention", action="store_true", help="also write the model's attention maps")
    pr.add_argument("--query", type=_query, action="append", metavar="Y,X",
                    help="with --attention, for FLANet-family and segmentation-aware models: the pixel (row, column of "
                         "the full-resolution image) whose attention is drawn, <stem>_query_<Y>_<X>.png or "
                         "<stem>_masks_<Y>_<X>.png; repeatable (default: the centre)")
    pr.add_argument("--backend", choices=("torch", "onnx"),
                    help="torch (a run directory or checkpoint) or onnx (an .onnx file, run by onnxruntime); "
                         "default: by the file")
    add_infer_args(pr)
    pr.set_defaults(func=cmd_predict)

    sv = sub.add_parser("serve", help="a web page over trained models: upload, overlay, attention per clicked pixel")
    sv.add_argument("runs", nargs="+", help="run directories, checkpoint files or .onnx files")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-upload-mb", type=_positive(float), default=20.0, help="largest request body (MiB)")
    sv.add_argument("--max-pixels", type=_positive(int), default=16_000_000, help="largest image (width x height)")
    sv.add_argument("--max-memory", type=_positive(float), metavar="GIB",
                    help="memory limit of one inference in GiB (as for predict)")
    sv.add_argument("--device", default="auto")
    sv.add_argument("--precision", default="auto")
    sv.set_defaults(func=cmd_serve)

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
    cs = dsub.add_parser("coco-shapes", help="write synthetic discs, squares and triangles (three instance classes) "
                                             "as a COCO instance set: OUT/images, OUT/train.json, OUT/val.json")
    cs.add_argument("out", help="folder to write (created if needed; rewritten if it holds an earlier set)")
    cs.add_argument("--train", type=_positive(int), default=200, metavar="N", help="training scenes (default 200)")
    cs.add_argument("--val", type=_positive(int), default=50, metavar="N", help="validation scenes (default 50)")
    cs.add_argument("--seed", type=int, default=0, metavar="S",
                    help="scene seed (default 0); train and val never share a scene")
    cs.add_argument("--size", type=_size, default=(192, 192), metavar="HxW", help="image size (default 192x192)")
    cs.set_defaults(func=cmd_coco_shapes)
    from .model_info import add_parser as add_info_parser
    add_info_parser(sub)
    from .model_card import add_parser as add_card_parser
    add_card_parser(sub)
    from .export import add_parser as add_export_parser
    add_export_parser(sub)
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
