"""The web page with an instance model (Debian's chromium driven by Playwright): the answer's kind is "instance",
the overlay tints each instance in its own colour and leaves the background as it is, the legend lists instances
with their scores, the cursor names the instance under it, and the downloads are the 16-bit id map and the JSON.

    make test-browser

``ATTNSEG_BROWSER_INSTANCE_RUN`` / ``ATTNSEG_BROWSER_INSTANCE_IMAGE`` point it at a trained instance run and an
image, ``ATTNSEG_INSTANCE_SCREENSHOT`` says where the screenshot goes (default: the test's tmp folder)."""

import base64
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .test_page import canvas_pixel, example_image, open_page, running_server, trained_run

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")

DATA = "nuclei:train=8,val=2,size=96x96,count=5-15"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser_instances")
    run = trained_run("ATTNSEG_BROWSER_INSTANCE_RUN", root, "ws", [
        "model=unet_watershed_w16", "model_kwargs={width: 8, depth: 2}", f"data={DATA}", "crop=[96,96]",
        "batch_size=4", "iters=60", "lr=0.005", "warmup_iters=5"])
    image = example_image("ATTNSEG_BROWSER_INSTANCE_IMAGE", root, DATA, "nuclei.png")
    with running_server(run) as base:
        yield base, image, root


def test_instance_overlay_legend_hover_and_downloads(served):
    base, image_path, root = served
    with open_page(base) as page:
        assert "instances of nucleus" in page.inner_text("#model-info")
        page.set_input_files("#file", str(image_path))
        page.wait_for_selector("#result:not([hidden])")
        assert page.evaluate("state.result.kind") == "instance"
        count = page.evaluate("state.result.count")
        assert count >= 1, "the tiny run found no nucleus: the page checks below would be vacuous"
        assert f"{count} instances found." in page.inner_text("#notes")
        assert page.locator("#legend thead").inner_text().split() == ["instance", "share", "score"]
        assert page.locator("#legend tbody tr").count() == count

        image = np.asarray(Image.open(image_path).convert("RGB"))
        H, W = image.shape[:2]
        ids = np.frombuffer(base64.b64decode(page.evaluate("state.result.ids_raw")), "<u2").reshape(H, W)
        palette = page.evaluate("state.result.palette")
        ys, xs = np.nonzero(ids)
        fy, fx = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])             # an instance pixel
        by, bx = map(int, np.argwhere(ids == 0)[0])                       # a background pixel
        page.fill("#opacity", "1")
        page.dispatch_event("#opacity", "input")
        assert canvas_pixel(page, fy, fx) == palette[ids[fy, fx]]
        np.testing.assert_allclose(canvas_pixel(page, by, bx), image[by, bx], atol=2)   # background untinted

        box = page.locator("#canvas").bounding_box()
        border = page.evaluate("document.getElementById('canvas').clientLeft")
        sx, sy = (box["width"] - 2 * border) / W, (box["height"] - 2 * border) / H
        page.mouse.move(box["x"] + border + (fx + 0.5) * sx, box["y"] + border + (fy + 0.5) * sy)
        assert page.inner_text("#hover") == f"({fy}, {fx}): nucleus {ids[fy, fx]}"
        assert page.get_attribute("#dl-ids", "download").endswith("_instances.png")
        png = base64.b64decode(page.get_attribute("#dl-ids", "href").split(",", 1)[1])
        from io import BytesIO
        assert (np.asarray(Image.open(BytesIO(png))) == ids).all()      # the 16-bit map, as attnseg predict writes
        page.fill("#opacity", "0.5")
        page.dispatch_event("#opacity", "input")
        shot = Path(os.environ.get("ATTNSEG_INSTANCE_SCREENSHOT") or root / "page.png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
