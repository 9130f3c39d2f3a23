"""MNC through the engine and everything on top of it: training on COCO-format multi-class data (written by
``attnseg data coco-shapes``, read by the coco reader) in fp32 and bf16, the class-aware validation (mAP beside the
class-agnostic AP), the Python API's classes, ``attnseg predict --attention`` (proposals and kept boxes), the web
page's answer, and the ONNX refusal."""

import json

import numpy as np
import pytest

import attnseg
from attnseg.cli import main
from attnseg.data.synthetic_instances import write_coco_shapes
from attnseg.engine.config import TrainConfig
from attnseg.engine.trainer import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KW = dict(channels=32, hidden=64, mask_hidden=32, mask_size=14, rpn_pre_nms=300, rpn_post_nms=30, roi_batch=16,
          rpn_batch=64, anchor_sizes=[12, 24, 48], score_threshold=0.05)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    paths = write_coco_shapes(tmp_path_factory.mktemp("coco_shapes"), n_train=6, n_val=2, size=(96, 96),
                              count=(2, 4))
    return f"coco:{paths['train']},{paths['images']}", f"coco:{paths['val']},{paths['images']}"


@pytest.fixture(scope="module")
def runs(coco, tmp_path_factory):
    root = tmp_path_factory.mktemp("mnc_runs")
    out = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(model="mnc_resnet18_fpn", model_kwargs=KW, data=coco[0], val_data=coco[1], crop=(96, 96),
                          batch_size=2, iters=4, val_interval=4, workers=0, progress=False,
                          run_dir=str(root / precision), precision=precision, val_metric="mAP")
        out[precision] = (root / precision, train(cfg))
    return out


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_run_trains_and_validates_with_class_aware_ap(runs, precision):
    run, metrics = runs[precision]
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["step"] == 4 and saved["precision"].startswith(precision)
    for k in ("AP", "AP50", "mAP", "mAP50", "mAP75", "DSB", "SBD"):
        assert k in saved and np.isfinite(saved[k]), k
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    train_rec = [r for r in log if r.get("kind") == "train"]
    assert train_rec and all(np.isfinite(r["loss"]) for r in train_rec)
    assert {"rpn_cls", "rpn_box", "mask", "cls", "box"} <= set(train_rec[-1])


def test_the_api_names_the_classes_and_draws_the_regions(runs, coco):
    run, _ = runs["fp32"]
    p = attnseg.load(run, precision="fp32")
    assert p.class_names == ["disc", "square", "triangle"]
    from attnseg.data import build_dataset
    ds = build_dataset(coco[1], "val")
    image = ds.load(0)[0]
    res = p.predict(image, attention=True)
    names = {r["class"] for r in res.instances}
    assert names <= set(p.class_names)
    labels = {r["id"]: r["label"] for r in res.instances}
    assert labels == {k: res.classes.get(k, 1) for k in labels}
    tv = res.to_torchvision()
    assert sorted(tv["labels"].tolist()) == sorted(labels.values())
    pics, _ = res.attention.pictures()
    by_name = {q.name: q for q in pics}
    assert {"attn_objectness", "proposals", "detections", "instance_colours"} <= set(by_name)
    assert by_name["proposals"].image.ndim == 3 and by_name["proposals"].image.shape[2] == 3
    js = res.to_json()
    assert js["classes"] == p.class_names and all(r["class"] in p.class_names for r in js["instances"])


def test_predict_with_attention_writes_the_region_pictures(runs, coco, tmp_path):
    run, _ = runs["fp32"]
    from PIL import Image

    from attnseg.data import build_dataset
    img = tmp_path / "shapes.png"
    Image.fromarray(build_dataset(coco[1], "val").load(1)[0]).save(img)
    main(["predict", str(run), str(img), "--out", str(tmp_path / "out"), "--attention"])
    written = {f.name for f in (tmp_path / "out").iterdir()}
    assert {"shapes_proposals.png", "shapes_detections.png", "shapes_instances.json"} <= written


def test_the_web_page_answer_lists_classes_and_region_pictures(runs, coco):
    pytest.importorskip("fastapi")
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from attnseg.data import build_dataset
    from attnseg.serve.app import create_app
    run, _ = runs["fp32"]
    buf = io.BytesIO()
    Image.fromarray(build_dataset(coco[1], "val").load(0)[0]).save(buf, format="PNG")
    with TestClient(create_app({"m": attnseg.load(run, precision="fp32")})) as c:
        body = c.post("/api/predict", files={"image": ("s.png", buf.getvalue(), "image/png")},
                      data={"model": "m"}).json()
    assert body["kind"] == "instance" and body["instance_classes"] == ["disc", "square", "triangle"]
    for row, stat in zip(body["instances"], body["stats"]):      # the legend names each instance by its class
        assert row["class"] in body["instance_classes"] and stat["name"] == f"{row['class']} {row['id']}"
    names = {p["name"] for p in body["attention"]["pictures"]}
    assert {"proposals", "detections"} <= names


def test_export_is_refused_with_the_reason(runs, tmp_path, capsys):
    run, _ = runs["fp32"]
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) != 0
    assert not (tmp_path / "m.onnx").exists()
    assert "cannot be exported to ONNX" in capsys.readouterr().err
