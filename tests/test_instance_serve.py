"""The web server's JSON API for instance models (FastAPI's TestClient): /api/models names the task, /api/predict
answers ``kind: "instance"`` with the instances, a 16-bit id map (PNG and raw little-endian uint16) equal to the
Python API's, one colour per instance (none for the background), and /api/attention says instance maps do not
depend on a clicked pixel."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

import attnseg  # noqa: E402
from attnseg.api_instances import InstanceResult  # noqa: E402
from attnseg.data.synthetic_instances import nuclei_field  # noqa: E402
from attnseg.serve.app import RequestError, create_app, instance_response  # noqa: E402
from attnseg.viz.instances import instance_colours, rle_decode  # noqa: E402

from .conftest import tiny_checkpoint, train_tiny_instance_run  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def predictors(tmp_path_factory):
    root = tmp_path_factory.mktemp("instance_serve")
    train_tiny_instance_run(root / "w", "nuclei:n=8,val=2,size=64x64,count=3-8")
    return {"m": attnseg.load(root / "w", precision="fp32"),
            "sem": attnseg.load(tiny_checkpoint(root / "sem"), precision="fp32")}


@pytest.fixture(scope="module")
def client(predictors):
    with TestClient(create_app(predictors)) as c:
        yield c


@pytest.fixture(scope="module")
def image(predictors):
    for seed in range(10, 30):
        im = nuclei_field(seed, (64, 64), (5, 8))[0]
        if predictors["m"].predict(im).count >= 2:
            return im
    pytest.fail("the trained model finds fewer than two nuclei on every test field")


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def post(client, image, **fields):
    fields.setdefault("model", "m")
    return client.post("/api/predict", files={"image": ("cells.png", png(image), "image/png")},
                       data={k: str(v) for k, v in fields.items()})


def test_models_name_the_task(client):
    models = {m["name"]: m for m in client.get("/api/models").json()["models"]}
    assert models["m"]["task"] == "instances" and models["m"]["model"] == "unet_watershed_w16"
    assert models["m"]["classes"] == ["background", "nucleus"] and models["m"]["step"] == 60
    assert models["sem"].get("task", "semantic") == "semantic"


def test_predict_answers_what_the_python_api_answers(client, predictors, image):
    r = post(client, image, raw_ids="true")
    assert r.status_code == 200, r.text
    body = r.json()
    expected = predictors["m"].predict(image)
    assert body["kind"] == "instance" and body["model"] == "m" and (body["width"], body["height"]) == (64, 64)
    assert body["count"] == len(body["instances"]) == expected.count >= 2
    with Image.open(io.BytesIO(base64.b64decode(body["ids_png"]))) as im:
        assert im.mode.startswith("I")                                # 16-bit grey
        np.testing.assert_array_equal(np.asarray(im).astype(np.int32), expected.ids)
    raw = np.frombuffer(base64.b64decode(body["ids_raw"]), dtype="<u2")
    assert raw.size == 64 * 64
    np.testing.assert_array_equal(raw.reshape(64, 64).astype(np.int32), expected.ids)
    # the instances, their masks and their colours
    assert body["instances"] == json.loads(json.dumps(expected.to_json()["instances"]))
    for inst in body["instances"]:
        np.testing.assert_array_equal(rle_decode(inst["mask"]), expected.ids == inst["id"])
    n = int(expected.ids.max())
    colours = instance_colours(n).tolist()
    assert body["palette"][0] is None and len(body["palette"]) == n + 1
    assert body["palette"][1:] == colours[1:]
    assert body["classes"][0] == "background"
    assert all(body["classes"][s["id"]] == s["name"] == f"nucleus {s['id']}" for s in body["stats"])
    assert [s["id"] for s in body["stats"]] == [i["id"] for i in body["instances"]]
    for s, inst in zip(body["stats"], body["instances"]):
        assert s["pixels"] == inst["area"] and s["share"] == pytest.approx(inst["area"] / 64 ** 2)
        assert s["color"] == colours[s["id"]] and s["confidence"] == pytest.approx(inst["score"])
    assert body["instance_classes"] == ["nucleus"]
    assert "ids_raw" not in post(client, image).json()


def test_predict_draws_the_maps_and_attention_answers_with_a_note(client, image):
    body = post(client, image).json()
    att = body["attention"]
    assert att["needs_query"] is False
    assert [p["name"] for p in att["pictures"]] == ["attn_fg", "attn_boundary", "instance_colours"]
    for p in att["pictures"]:
        assert Image.open(io.BytesIO(base64.b64decode(p["png"]))).size == (64, 64)
    click = client.post("/api/attention", json={"token": body["token"], "y": 10, "x": 20})
    assert click.status_code == 200, click.text
    answer = click.json()
    assert answer["pictures"] == [] and answer["query"] == [10, 20] and answer["model"] == "m"
    assert answer["notes"] == ["instance models have no per-pixel attention; their maps do not depend on a query "
                               "pixel"]
    outside = client.post("/api/attention", json={"token": body["token"], "y": 64, "x": 0})
    assert outside.status_code == 400 and "outside the 64x64 image" in outside.json()["error"]


def test_without_attention_no_maps_are_kept_for_clicks(client, image):
    body = post(client, image, attention="false").json()
    assert body["kind"] == "instance" and body["attention"]["pictures"] == []
    assert body["attention"]["notes"] == ["attention was not asked for"]
    r = client.post("/api/attention", json={"token": body["token"], "y": 1, "x": 1})
    assert r.status_code == 400 and "returned no attention maps" in r.json()["error"]


def test_an_empty_prediction(client):
    black = np.zeros((40, 24, 3), np.uint8)
    body = post(client, black, raw_ids="true").json()
    if body["count"]:
        pytest.skip("the model finds something in a black image")
    assert body["instances"] == [] and body["stats"] == [] and body["palette"] == [None]
    assert body["classes"] == ["background"]
    assert not np.frombuffer(base64.b64decode(body["ids_raw"]), "<u2").any()


def test_more_ids_than_the_page_holds_is_a_422():
    ids = np.zeros((3, 3), np.int32)
    ids[1, 1] = 65536
    result = InstanceResult(image=np.zeros((3, 3, 3), np.uint8), ids=ids, scores={})
    with pytest.raises(RequestError, match="65536 instances do not fit the page's 16-bit id map") as e:
        instance_response(result, "m", raw_ids=False)
    assert e.value.status == 422
