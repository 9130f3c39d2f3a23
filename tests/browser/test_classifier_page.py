"""The web page with a classifier (Debian's chromium driven by Playwright): the answer's kind is "classification",
the page shows the class and its probability, the table lists every class's probability (highest first), the
picture is left untinted, the id-map downloads are hidden, and the glimpses appear step by step.

    make test-browser

``ATTNSEG_BROWSER_CLASSIFIER_RUN`` points it at a trained classifier run; ``ATTNSEG_CLASSIFIER_SCREENSHOT`` says
where the screenshot goes (default: the test's tmp folder)."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .test_page import canvas_pixel, open_page, running_server, trained_run

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("sklearn")
DATA = "digits:task=cluttered60,train=128,val=32,test=8"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser_classifier")
    run = trained_run("ATTNSEG_BROWSER_CLASSIFIER_RUN", root, "ram", [
        "model=ram", "model_kwargs={glimpses: 4, glimpse_size: 12, scales: 3}", f"data={DATA}", "batch_size=32",
        "iters=8", "warmup_iters=2", "precision=fp32"])
    from attnseg.data import build_dataset
    image = root / "digit.png"
    Image.fromarray((build_dataset(DATA, "test").get(0)[0] * 255).astype(np.uint8)).save(image)
    with running_server(run) as base:
        yield base, image, root


def test_classifier_class_table_glimpses_and_no_overlay(served):
    base, image_path, root = served
    with open_page(base) as page:
        assert "classifier of 10 classes" in page.inner_text("#model-info")
        page.set_input_files("#file", str(image_path))
        page.wait_for_selector("#result:not([hidden])")
        body = page.evaluate("state.result")
        assert body["kind"] == "classification"
        shown = page.inner_text("#prediction")
        assert shown.startswith(f"{body['class']} ·") and page.is_visible("#prediction")
        assert f"predicted class {body['class']}" in page.inner_text("#notes")
        assert page.locator("#legend thead").inner_text().split() == ["class", "probability"]
        rows = page.locator("#legend tbody tr")
        first = rows.nth(0).inner_text().split()[:2]
        assert rows.count() == 10 and first == [body["class"], f"{100 * body['score']:.1f}"]
        assert not page.is_visible("#opacity")
        assert not page.is_visible("#dl-ids") and not page.is_visible("#dl-overlay")
        names = page.evaluate("Array.from(document.querySelectorAll('#attention figure')).map(f => f.dataset.name)")
        assert names == ["glimpses", "glimpse_1", "glimpse_2", "glimpse_3", "glimpse_4"]
        page.evaluate("document.getElementById('opacity').value = 1")   # hidden for a classifier; set it anyway
        page.dispatch_event("#opacity", "input")
        image = np.asarray(Image.open(image_path).convert("RGB"))
        ys, xs = np.nonzero(image[..., 0] > 128)
        y, x = int(ys[0]), int(xs[0])
        np.testing.assert_allclose(canvas_pixel(page, y, x), image[y, x], atol=2)   # no tint, even at opacity 1
        box = page.locator("#canvas").bounding_box()
        page.mouse.move(box["x"] + 10, box["y"] + 10)
        assert "the whole image is class" in page.inner_text("#hover")
        shot = Path(os.environ.get("ATTNSEG_CLASSIFIER_SCREENSHOT") or root / "page.png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
