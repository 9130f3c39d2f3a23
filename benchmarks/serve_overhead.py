"""What ``attnseg serve`` adds to a model's forward: time per POST /api/predict (over HTTP, a real uvicorn server
on loopback, PNG upload, JSON answer with the ids PNG and per-class statistics) against the model's own forward on
the same image, interleaved in one process (the server runs in a thread of this process; the client waits on its
socket while the server works, so the two never compute at once).

    python benchmarks/serve_overhead.py [--threads 2] [--repeats 20] [--precision fp32,auto] [--run RUN]

Target (issue 12): serving overhead = request - forward <= 15 % of the forward for FCN-8s-ResNet-18 at 360x480.
Without ``--run`` the model is a freshly initialised ``fcn8s_resnet18`` (11 classes, test scale 1: speed does
not depend on the weights); the image is the first CamVid val image where ../shared/data/camvid exists, else
random. ``forward`` is ``model(x)["logits"]`` on the normalised (1, 3, 360, 480) tensor under the predictor's
precision (channels_last, autocast), exactly as the predictor calls it; ``in_predictor`` is the predictor's own
total (normalisation, inference incl. the resize of the logits to the image, statistics).
"""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import emit, find_camvid, machine_info, set_threads  # noqa: E402

from attnseg.api import load  # noqa: E402


def make_checkpoint(folder: Path, model: str, num_classes: int) -> Path:
    from attnseg.data.labels import LabelSpec
    from attnseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from attnseg.engine.checkpoint import save_weights
    from attnseg.models import create_model
    net = create_model(model, num_classes=num_classes)
    meta = {"model": model, "model_kwargs": {}, "classes": LabelSpec([f"c{i}" for i in range(num_classes)]).to_dict(),
            "preprocessing": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "inference": {"mode": "whole", "scales": [1.0], "flip": False, "test_scale": 1.0},
            "config": {"crop": [360, 480]}, "num_params": sum(p.numel() for p in net.parameters())}
    save_weights(folder / "checkpoints" / "model.safetensors", net, meta)
    return folder


def test_image(size) -> np.ndarray:
    from PIL import Image
    root = find_camvid("../shared/data/camvid")
    if root is not None:
        files = sorted((root / "val").iterdir())
        if files:
            im = Image.open(files[0]).convert("RGB")
            return np.asarray(im.resize((size[1], size[0]), Image.BILINEAR) if im.size != (size[1], size[0]) else im)
    return np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)


def serve_in_thread(app):
    import uvicorn
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


def measure(run: Path, precision: str, image: np.ndarray, repeats: int, attention: bool) -> dict:
    import httpx
    from PIL import Image

    from attnseg.engine.inference import rescale
    from attnseg.serve import create_app
    predictor = load(run, precision=precision)
    server, thread, base = serve_in_thread(create_app({"m": predictor}))
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    upload = buf.getvalue()
    x = predictor.normalize(image)[None]
    x = rescale(x, predictor.inference.test_scale)
    prec = predictor.precision
    x = prec.images(x)

    def forward():
        t = time.perf_counter()
        with torch.no_grad(), prec.autocast():
            predictor.model(x)["logits"].float()
        return time.perf_counter() - t

    with httpx.Client(timeout=120) as client:
        def request():
            t = time.perf_counter()
            r = client.post(f"{base}/api/predict", files={"image": ("im.png", upload, "image/png")},
                            data={"model": "m", "attention": str(attention).lower()})
            body = r.json()
            dt = time.perf_counter() - t
            if r.status_code != 200:
                raise SystemExit(f"the server answered {r.status_code}: {body}")
            return dt, body["timing_ms"]

        for _ in range(3):  # warm-up: the memory plan of this size, oneDNN kernels, the HTTP connection
            forward()
            request()
        fwd, req, inner, total = [], [], [], []
        for _ in range(repeats):  # interleaved
            fwd.append(forward())
            dt, timing = request()
            req.append(dt)
            inner.append(timing["inference"] / 1000)
            total.append(timing["total"] / 1000)
    server.should_exit = True
    thread.join(10)
    f, r = statistics.median(fwd), statistics.median(req)
    return {"precision": prec.name, "forward_ms": 1000 * f, "request_ms": 1000 * r,
            "predictor_inference_ms": 1000 * statistics.median(inner),
            "in_predictor_ms": 1000 * statistics.median(total),
            "overhead_ms": 1000 * (r - f), "overhead_vs_forward": (r - f) / f,
            "forward_ms_all": [round(1000 * v, 2) for v in fwd], "request_ms_all": [round(1000 * v, 2) for v in req],
            "upload_bytes": len(upload), "attention": attention}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a trained run (default: a fresh fcn8s_resnet18 checkpoint)")
    p.add_argument("--model", default="fcn8s_resnet18")
    p.add_argument("--size", default="360x480")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--precision", default="fp32,auto")
    p.add_argument("--attention", action="store_true", help="ask for the attention pictures too")
    p.add_argument("--out")
    args = p.parse_args()
    set_threads(args.threads)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    image = test_image(size)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else make_checkpoint(Path(tmp), args.model, 11)
        rows = [measure(run, prec, image, args.repeats, args.attention) for prec in args.precision.split(",")]
    doc = {"benchmark": "serve_overhead", "model": args.model if not args.run else str(args.run),
           "size": list(size), "threads": args.threads, "repeats": args.repeats, "target": "overhead <= 0.15 x forward",
           "rows": rows, "machine": machine_info("cpu")}
    for row in rows:
        row["meets_target"] = row["overhead_vs_forward"] <= 0.15
    emit(doc, args.out)


if __name__ == "__main__":
    main()
