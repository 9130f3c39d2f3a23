"""The web server's JSON API through FastAPI's TestClient (and one real uvicorn server): good requests on a tiny
trained model against the Python API's answer, every bad request with its status and message, /healthz while a
model runs."""

import base64
import io
import json
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

import attnseg  # noqa: E402
from attnseg.cli import main  # noqa: E402
from attnseg.serve import ServeSettings, create_app, is_loopback, load_predictors, unique_names  # noqa: E402

from .conftest import tiny_checkpoint  # noqa: E402

DATA = "synthetic:train=8,val=3,size=32x48"
IMAGE = np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)


def png_bytes(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny FCN trained 2 steps through the CLI, and an untrained criss-cross model (query attention)."""
    root = tmp_path_factory.mktemp("serve")
    fcn = root / "fcn"
    assert main(["train", "model=fcn8s_resnet18", f"data={DATA}", "crop=[32,48]", "batch_size=4", "iters=2",
                 "warmup_iters=1", "val_interval=0", "log_interval=1", "workers=0", "progress=false",
                 f"run_dir={fcn}"]) == 0
    cc = tiny_checkpoint(root / "cc", "dilated_resnet18_ccnet", 11, {"channels": 16, "mid_channels": 16})
    return {"fcn": fcn, "cc": cc}


@pytest.fixture(scope="module")
def client(runs):
    predictors = load_predictors([str(runs["fcn"]), str(runs["cc"])], precision="fp32")
    app = create_app(predictors, ServeSettings(max_upload_bytes=200_000, max_pixels=300 * 300, cache_size=2))
    with TestClient(app) as c:
        yield c


def post(client, data: bytes, name="in.png", **fields):
    fields.setdefault("model", "fcn")
    return client.post("/api/predict", files={"image": (name, data, "image/png")},
                       data={k: str(v) for k, v in fields.items()})


def test_healthz_and_models(client, runs):
    assert client.get("/healthz").json() == {"status": "ok", "models": 2, "busy": []}
    models = client.get("/api/models").json()
    names = [m["name"] for m in models["models"]]
    assert names == ["fcn", "cc"]
    fcn = models["models"][0]
    assert fcn["model"] == "fcn8s_resnet18" and len(fcn["classes"]) == len(fcn["palette"]) == 7
    assert fcn["num_params"] > 1e6 and 0 <= fcn["metrics"]["mIoU"] <= 1 and fcn["step"] == 2
    assert models["limits"] == {"max_upload_bytes": 200_000, "max_pixels": 90_000}


def test_predict_answers_what_the_python_api_answers(client, runs):
    r = post(client, png_bytes(IMAGE), raw_ids="true")
    assert r.status_code == 200, r.text
    body = r.json()
    expected = attnseg.load(runs["fcn"], precision="fp32").predict(IMAGE)
    ids = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["ids_png"]))))
    np.testing.assert_array_equal(ids, expected.ids)
    raw = np.frombuffer(base64.b64decode(body["ids_raw"]), np.uint8).reshape(32, 48)
    np.testing.assert_array_equal(raw, expected.ids)
    assert (body["width"], body["height"], body["kind"]) == (48, 32, "semantic")
    assert sum(s["share"] for s in body["stats"]) == pytest.approx(1.0)
    assert body["stats"] == json.loads(json.dumps(expected.class_stats()))
    assert set(body["timing_ms"]) == {"inference", "total", "server"}
    assert body["timing_ms"]["server"] >= body["timing_ms"]["inference"] > 0
    assert body["attention"]["pictures"] == [] and "no attention maps" in body["attention"]["notes"][0]
    assert "ids_raw" not in post(client, png_bytes(IMAGE)).json()
    jpeg = post(client, png_bytes(IMAGE, "JPEG"), name="photo.jpg")
    assert jpeg.status_code == 200


def test_attention_of_a_clicked_pixel_without_a_second_upload(client):
    body = post(client, png_bytes(IMAGE), model="cc", query="5,7").json()
    att = body["attention"]
    assert att["needs_query"] and {"query_5_7", "attn_criss_cross_r1_q5_7"} <= {p["name"] for p in att["pictures"]}
    for p in att["pictures"]:
        assert Image.open(io.BytesIO(base64.b64decode(p["png"]))).mode == "RGB"
    click = client.post("/api/attention", json={"token": body["token"], "y": 31, "x": 47})
    assert click.status_code == 200, click.text
    pictures = click.json()["pictures"]
    assert pictures and all(p["query"] == [31, 47] for p in pictures)
    assert {"query_31_47", "attn_criss_cross_composed_q31_47"} <= {p["name"] for p in pictures}
    outside = client.post("/api/attention", json={"token": body["token"], "y": 32, "x": 0})
    assert outside.status_code == 400 and "outside the 32x48 image" in outside.json()["error"]


def truncated_png() -> bytes:
    data = png_bytes(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return data[: len(data) // 2]


@pytest.mark.parametrize("data, fields, name, status, needle", [
    (b"", {}, "in.png", 400, "is empty (0 bytes)"),
    (b"hello, this is text", {}, "in.png", 415, "not an image this server can read"),
    (truncated_png(), {}, "in.png", 400, "truncated"),
    (png_bytes(np.zeros((301, 300, 3), np.uint8)), {}, "in.png", 413, "over this server's limit of 90,000"),
    (png_bytes(IMAGE), {"model": "nope"}, "in.png", 404, "unknown model 'nope'; this server holds fcn, cc"),
    (png_bytes(IMAGE), {"model": ""}, "in.png", 400, "holds 2 models; name one"),
    (png_bytes(IMAGE), {"query": "40,10"}, "in.png", 400, "query (40, 10) is outside the 32x48 image"),
    (png_bytes(IMAGE), {"query": "5"}, "in.png", 400, "query takes Y,X"),
    (png_bytes(IMAGE), {"attention": "maybe"}, "in.png", 400, "attention takes true or false"),
    (png_bytes(IMAGE), {}, "../../etc/passwd", 400, "has path parts"),
    (png_bytes(IMAGE), {}, "..\\x.png", 400, "has path parts"),
])
def test_bad_uploads_get_a_4xx_and_a_plain_message(client, data, fields, name, status, needle):
    r = post(client, data, name=name, **fields)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    assert "Traceback" not in r.text


def test_bad_requests_of_other_shapes(client):
    big = np.random.default_rng(3).integers(0, 256, (260, 260, 3), dtype=np.uint8)   # ~200 KB as PNG
    r = post(client, png_bytes(big))
    assert r.status_code == 413 and "over this server's limit of 200,000 bytes" in r.json()["error"]

    body = (b'--xx\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + b"x" * 300_000 + b"\r\n--xx--\r\n")

    def chunks():  # no Content-Length: the limit is counted while the body streams in
        for i in range(0, len(body), 10_000):
            yield body[i:i + 10_000]
    r = client.post("/api/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xx"})
    assert r.status_code == 413 and "over this server's limit" in r.json()["error"]
    r = client.post("/api/predict", data={"model": "fcn"})
    assert r.status_code in (400, 415) and "field 'image'" in r.json()["error"]
    r = client.post("/api/predict", json={"image": "x"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]
    r = client.post("/api/attention", json={"token": "nope", "y": 0, "x": 0})
    assert r.status_code == 404 and "no longer kept" in r.json()["error"]
    r = client.post("/api/attention", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and '{"token"' in r.json()["error"]
    assert client.get("/api/nothing").status_code == 404
    assert client.get("/healthz").json()["status"] == "ok"       # still answering after all of the above


def test_kept_predictions_are_bounded(client):
    tokens = [post(client, png_bytes(IMAGE), model="cc").json()["token"] for _ in range(3)]
    assert client.post("/api/attention", json={"token": tokens[0], "y": 1, "x": 1}).status_code == 404  # cache of 2
    assert client.post("/api/attention", json={"token": tokens[-1], "y": 1, "x": 1}).status_code == 200


def test_the_page_and_its_script_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text and "http" not in page.text.split("<body>")[1]
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "/api/predict" in script.text and "/api/attention" in script.text
    assert client.get("/static/style.css").status_code == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthz_answers_while_a_model_runs(runs):
    """A real uvicorn server: a prediction blocked inside the model's forward does not stop /healthz; a second
    prediction of the same model waits for the first (one model call at a time)."""
    import httpx
    import uvicorn
    predictors = load_predictors([str(runs["fcn"])], precision="fp32")
    model = predictors["fcn"].model
    entered, release, calls = threading.Event(), threading.Event(), []
    original = model.forward

    def blocking_forward(*args, **kwargs):
        calls.append(time.perf_counter())
        entered.set()
        release.wait(20)
        return original(*args, **kwargs)

    model.forward = blocking_forward
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(predictors), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        answers = []

        def upload():
            answers.append(httpx.post(f"{base}/api/predict", files={"image": ("a.png", png_bytes(IMAGE))},
                                      timeout=30).status_code)
        workers = [threading.Thread(target=upload) for _ in range(2)]
        for w in workers:
            w.start()
        assert entered.wait(20)
        t = time.perf_counter()
        health = httpx.get(f"{base}/healthz", timeout=5)
        assert health.status_code == 200 and health.json()["busy"] == ["fcn"]
        assert time.perf_counter() - t < 2.0
        time.sleep(0.3)
        assert len(calls) == 1                    # the second request waits for the model
        release.set()
        for w in workers:
            w.join(30)
        assert answers == [200, 200] and len(calls) == 2
        assert httpx.get(f"{base}/healthz", timeout=5).json()["busy"] == []
    finally:
        release.set()
        server.should_exit = True
        thread.join(10)


def test_cli_serve_messages(runs, capsys, monkeypatch):
    assert main(["serve", str(runs["fcn"]), "--port", "70000"]) == 2
    assert "--port 70000 is not a TCP port" in capsys.readouterr().err
    assert main(["serve", str(runs["fcn"] / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    import builtins
    real_import = builtins.__import__

    def no_uvicorn(name, *args, **kwargs):
        if name == "uvicorn":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_uvicorn)
    assert main(["serve", str(runs["fcn"])]) == 2
    assert "pip install -e '.[serve]'" in capsys.readouterr().err


def test_names_and_hosts(tmp_path):
    a, b = tmp_path / "x" / "run", tmp_path / "y" / "run"
    for p in (a, b):
        (p / "checkpoints").mkdir(parents=True)
        (p / "checkpoints" / "model.safetensors").write_bytes(b"")
    (a / "export").mkdir()
    (a / "export" / "model.onnx").write_bytes(b"")
    assert unique_names([str(a), str(b), str(a / "checkpoints" / "model.safetensors"),
                         str(a / "export" / "model.onnx")]) == ["run", "run-2", "run-3", "run-onnx"]
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
