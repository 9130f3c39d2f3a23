"""The classification task end to end: metrics against hand counts, the trainer (fp32 and bf16, resume, the keys
it refuses), ``attnseg eval`` (accuracy and the confusion matrix), ``attnseg predict`` (class JSON and glimpse
pictures), ``attnseg.load`` and the web page's JSON API."""

import json

import numpy as np
import pytest
from PIL import Image

from attnseg.cli import main
from attnseg.engine.config import TrainConfig
from attnseg.engine.trainer import train
from attnseg.metrics.classification import confusion, format_classification, save_classification, summary

pytest.importorskip("sklearn")
DATA = "digits:task=translated,train=256,val=64,test=64"


def test_confusion_and_summary_against_hand_counts():
    pred, target = [0, 1, 1, 2, 2, 2, 0], [0, 1, 2, 2, 2, 0, 0]
    cm = confusion(pred, target, 3)
    assert cm.tolist() == [[2, 0, 1], [0, 1, 0], [0, 1, 2]]              # rows: true class
    s = summary(cm, ["a", "b", "c"])
    assert s["correct"] == 5 and s["samples"] == 7 and abs(s["accuracy"] - 5 / 7) < 1e-12
    assert abs(s["error"] - 2 / 7) < 1e-12
    assert s["per_class"] == {"a": 2 / 3, "b": 1.0, "c": 2 / 3} and abs(s["mAcc"] - (2 / 3 + 1 + 2 / 3) / 3) < 1e-12
    text = format_classification(s, ["a", "b", "c"])
    assert "accuracy 71.43 %" in text and "error 28.57 %" in text and "66.7" in text
    empty = summary(np.zeros((2, 2), int), ["a", "b"])
    assert np.isnan(empty["accuracy"]) and np.isnan(empty["per_class"]["a"])


def test_confusion_refuses_bad_ids():
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="2 predictions for 3 targets"):
        confusion([0, 1], [0, 1, 2], 3)


def test_saved_files(tmp_path):
    s = summary(confusion([0, 1, 1], [0, 1, 0], 2), ["x", "y"])
    save_classification(tmp_path, s, ["x", "y"], extra={"split": "test"})
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["task"] == "classification" and doc["confusion"] == [[1, 1], [0, 1]] and doc["split"] == "test"
    assert (tmp_path / "confusion.csv").read_text().splitlines() == ["true \\ pred,x,y", "x,1,1", "y,0,1"]


def config(run_dir, **kw) -> TrainConfig:
    base = dict(model="cnn_classifier", model_kwargs={"widths": [8, 16], "hidden": 32}, data=DATA,
                batch_size=32, iters=12, lr=3e-3, warmup_iters=2, val_interval=6, ckpt_interval=6, workers=0,
                progress=False, precision="fp32", run_dir=str(run_dir))
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cls") / "cnn"
    metrics = train(config(run))
    return run, metrics


def test_training_writes_a_classification_run(cnn_run):
    run, metrics = cnn_run
    assert set(metrics) >= {"accuracy", "error", "confusion", "per_class"} and metrics["samples"] == 64
    doc = json.loads((run / "metrics.json").read_text())
    assert doc["task"] == "classification" and doc["step"] == 12 and np.asarray(doc["confusion"]).sum() == 64
    assert "accuracy" in (run / "metrics.txt").read_text() and (run / "confusion.csv").is_file()
    assert len(list((run / "pictures").glob("*.png"))) == 4
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    vals = [r for r in log if r["kind"] == "val"]
    assert [r["step"] for r in vals] == [6, 12] and all(0 <= r["accuracy"] <= 1 for r in vals)
    from safetensors import safe_open
    with safe_open(str(run / "checkpoints" / "model.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["attnseg"])
    assert meta["task"] == "classification" and meta["inference"] == {"input_size": [60, 60], "channels": 1}


def test_training_learns_centred_digits(tmp_path):
    """The CNN trained for 80 steps classifies centred digits far above chance (10 %)."""
    m = train(config(tmp_path / "learn", model_kwargs={}, iters=80, val_interval=0,
                     data="digits:task=centred,train=2560,val=200"))
    assert m["accuracy"] > 0.4, m["accuracy"]


def test_resume_continues_at_the_saved_step(tmp_path):
    run = tmp_path / "resume"
    train(config(run, iters=6, val_interval=0))
    m = train(config(run, iters=12, val_interval=0))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    starts = [r["step"] for r in log if r["kind"] == "start"]
    assert starts == [0, 6] and json.loads((run / "metrics.json").read_text())["step"] == 12 and m["samples"] == 64


@pytest.mark.parametrize("model, kwargs", [("ram", {"glimpses": 2, "glimpse_size": 8, "scales": 2}),
                                           ("draw_read", {"glimpses": 2, "read_size": 6, "image_size": 60}),
                                           ("st_cnn", {"out_size": 24, "widths": [8], "hidden": 16})])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_recurrent_and_transformer_models_train_under_each_precision(tmp_path, model, kwargs, precision):
    """bf16 explicitly (what ``auto`` picks on machines with native bf16) and fp32 (what it picks elsewhere)."""
    m = train(config(tmp_path / "r", model=model, model_kwargs=kwargs, iters=4, val_interval=0, ckpt_interval=0,
                     precision=precision, data="digits:task=translated,train=64,val=32"))
    assert 0 <= m["accuracy"] <= 1
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert log[0]["precision"].startswith(precision) and all(np.isfinite(r["loss"]) for r in log
                                                             if r["kind"] == "train")


@pytest.mark.parametrize("override, message", [
    ({"crop": (28, 28)}, "crop set the segmentation image pipeline"),
    ({"flip": False}, "flip set the segmentation image pipeline"),
    ({"val_metric": "mIoU"}, "not a classification metric; choose one of accuracy, mAcc"),
    ({"model": "fcn8s_resnet18", "model_kwargs": {}}, "predicts semantic but digits"),
    ({"val_data": "digits:task=cluttered100,val=8"}, "validated at its training size"),
    ({"label_smoothing": 0.1}, "label_smoothing set the segmentation image pipeline or loss"),
    ({"model_kwargs": {"flatten_size": [100, 100]}}, r"built for 100x100 images \(flatten_size=\[100, 100\]\) but"),
    ({"model": "draw_read", "model_kwargs": {"image_size": 100}}, "set model_kwargs.image_size to match"),
])
def test_refused_settings(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        train(config(tmp_path / "bad", **override))


def test_a_classifier_on_a_segmentation_dataset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="predicts classification but synthetic:"):
        train(config(tmp_path / "bad2", data="synthetic:train=4,val=2"))


def test_eval_prints_accuracy_and_the_confusion_matrix(cnn_run, tmp_path, capsys):
    run, _ = cnn_run
    assert main(["eval", str(run), "--data", DATA, "--split", "test", "--out", str(tmp_path / "m"),
                 "--no-progress", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "64 samples" in out and "accuracy" in out and "true \\ pred" in out and "recall %" in out
    doc = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert doc["split"] == "test" and np.asarray(doc["confusion"]).shape == (10, 10)
    # the same numbers as evaluating the model directly, sample by sample
    import attnseg
    from attnseg.data import build_dataset
    pred = attnseg.load(run, precision="fp32")
    ds = build_dataset(DATA, "test")
    correct = sum(int(pred.model(ds[i]["image"][None])["logits"].argmax()) == int(ds[i]["label"])
                  for i in range(len(ds)))
    assert doc["correct"] == correct


@pytest.mark.parametrize("argv, message", [
    (["--data", "synthetic:train=2,val=2"], "is a classifier but synthetic"),
    (["--data", "digits:task=cluttered100,val=4"], "classifies 60x60 images"),
    (["--data", DATA, "--mode", "slide"], "--mode apply to segmentation models"),
])
def test_eval_refuses_what_does_not_fit(cnn_run, argv, message, capsys):
    run, _ = cnn_run
    assert main(["eval", str(run), *argv, "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def save_digit(path, split="test", i=0, size=None):
    from attnseg.data import build_dataset
    image, label = build_dataset(DATA, split).get(i)
    im = Image.fromarray((image * 255).astype(np.uint8))
    if size:
        im = im.convert("RGB").resize(size)
    im.save(path)
    return label


def test_predict_writes_the_class_and_the_glimpses(tmp_path, capsys):
    run = tmp_path / "ram"
    train(config(run, model="ram", model_kwargs={"glimpses": 3, "glimpse_size": 8, "scales": 3}, iters=4,
                 val_interval=0))
    save_digit(tmp_path / "a.png")
    save_digit(tmp_path / "b.png", i=1, size=(90, 90))                  # colour, another size: resized
    assert main(["predict", str(run), str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out",
                 str(tmp_path / "out"), "--attention", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "resized to the 60x60" in out and "glimpses:" in out
    doc = json.loads((tmp_path / "out" / "a_class.json").read_text())
    assert abs(sum(doc["probs"].values()) - 1) < 1e-4 and doc["class"] == doc["top"][0]["class"]
    names = sorted(p.name for p in (tmp_path / "out").glob("a_*.png"))
    assert names == ["a_glimpse_1.png", "a_glimpse_2.png", "a_glimpse_3.png", "a_glimpses.png"]
    assert main(["predict", str(run), str(tmp_path / "a.png"), "--out", str(tmp_path / "o2"), "--attention",
                 "--query", "3,4"]) == 2
    assert "--query apply to segmentation models" in capsys.readouterr().err


def test_python_api(cnn_run, tmp_path):
    import attnseg
    from attnseg.api_classification import ClassificationPredictor, ClassificationResult
    run, _ = cnn_run
    p = attnseg.load(run, precision="fp32")
    assert isinstance(p, ClassificationPredictor) and p.input_size == (60, 60) and p.classes == list("0123456789")
    save_digit(tmp_path / "d.png")
    r = p.predict(tmp_path / "d.png")
    assert isinstance(r, ClassificationResult) and r.probs.shape == (10,) and abs(r.probs.sum() - 1) < 1e-5
    assert r.name == r.top(1)[0][0] and r.label == int(np.argmax(r.probs)) and not r.notes
    rgb = np.repeat(np.asarray(Image.open(tmp_path / "d.png"))[..., None], 3, 2)
    assert np.allclose(p.predict(rgb).probs, r.probs, atol=1e-5)         # grey as RGB: the same answer
    many = p.predict([rgb, rgb])
    assert len(many) == 2
    with pytest.raises(ValueError, match="classifier: tile apply"):
        attnseg.load(run, tile=256)
    assert p.describe()["task"] == "classification"


def test_onnx_export_and_predictor(cnn_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import attnseg
    run, _ = cnn_run
    assert main(["export", str(run), "--out", str(tmp_path / "c.onnx")]) == 0
    out = capsys.readouterr().out
    assert "dynamic batch of 60x60 images" in out and "classifier: input (B, 1, 60, 60)" in out
    onnx, torch_p = attnseg.load(tmp_path / "c.onnx"), attnseg.load(run, precision="fp32")
    save_digit(tmp_path / "d.png", i=3)
    assert np.allclose(onnx.predict(tmp_path / "d.png").probs, torch_p.predict(tmp_path / "d.png").probs, atol=1e-5)
    with pytest.raises(ValueError, match="glimpse pictures need the PyTorch checkpoint"):
        onnx.predict(tmp_path / "d.png", attention=True)


def test_serve_answers_with_the_class_and_the_glimpses(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    import attnseg
    from attnseg.serve.app import ModelHub, ServeSettings, create_app  # noqa: F401
    run = tmp_path / "draw"
    train(config(run, model="draw_read", model_kwargs={"glimpses": 2, "read_size": 6, "image_size": 60}, iters=2,
                 val_interval=0))
    client = TestClient(create_app({"draw": attnseg.load(run, precision="fp32")}))
    models = client.get("/api/models").json()["models"]
    assert models[0]["task"] == "classification"
    save_digit(tmp_path / "d.png")
    with open(tmp_path / "d.png", "rb") as f:
        body = client.post("/api/predict", files={"image": ("d.png", f, "image/png")}).json()
    assert body["kind"] == "classification" and abs(sum(body["probs"].values()) - 1) < 1e-4
    assert body["stats"][0]["name"] == body["class"] and body["input_size"] == [60, 60]
    names = [p["name"] for p in body["attention"]["pictures"]]
    assert names == ["glimpses", "glimpse_1", "glimpse_2"] and not body["attention"]["needs_query"]
    r = client.post("/api/attention", json={"token": body["token"], "y": 3, "x": 4})
    assert r.status_code == 400 and "do not depend on a pixel" in r.json()["error"]


def test_model_card_of_a_classifier(cnn_run, tmp_path):
    from attnseg.model_card import build_card
    run, metrics = cnn_run
    text, _ = build_card(run)
    assert f"accuracy **{100 * metrics['accuracy']:.2f} %**" in text and "true \\ pred" in text
    assert "grey images in [0, 1] at 60x60" in text and "label 255 is ignored" not in text
    assert "| step | epoch | train min | val samples | train loss | accuracy % |" in text
