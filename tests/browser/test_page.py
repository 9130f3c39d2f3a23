"""The web page in a real browser (Debian's chromium driven by Playwright): start ``attnseg serve`` on a free
loopback port, upload an image (file picker, then drag-and-drop), wait for the overlay, move the opacity slider
and check the canvas pixels against the palette, hover for the class under the cursor, click a pixel and wait
for its attention pictures, a bad upload's message, and save a screenshot.

    make test-browser          (pip installs playwright; apt-get install chromium where it is missing)

``ATTNSEG_BROWSER_RUN`` / ``ATTNSEG_BROWSER_IMAGE`` point it at a trained run and a real image, and
``ATTNSEG_SCREENSHOT`` says where the screenshot goes (default: the test's tmp folder)."""

import base64
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

DATA = "synthetic:train=8,val=3,size=96x128"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(run):
    """``attnseg serve RUN`` on a free loopback port, fp32; yields its base URL once /healthz answers."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "attnseg", "serve", str(run), "--port", str(port),
                               "--precision", "fp32"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if urllib.request.urlopen(f"{base}/healthz", timeout=1).status == 200:
                    break
            except OSError:
                if server.poll() is not None:
                    pytest.fail("attnseg serve stopped:\n" + server.stdout.read())
                time.sleep(0.1)
        yield base
    finally:
        server.terminate()
        server.wait(10)


def trained_run(env: str, root: Path, name: str, train_args: list[str]):
    """The run named by ``$env``, else a tiny one trained into ``root / name`` with ``attnseg train train_args``."""
    run = os.environ.get(env)
    if run:
        return run
    from attnseg.cli import main
    run = root / name
    assert main(["train", *train_args, "val_interval=0", "workers=0", "progress=false", f"run_dir={run}"]) == 0
    return run


@contextlib.contextmanager
def open_page(base: str):
    """Chromium on the page at ``base``, once its model list has loaded."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(base)
        page.wait_for_function("document.querySelectorAll('#model option').length > 0")
        try:
            yield page
        finally:
            browser.close()


def example_image(env: str, root: Path, data: str, name: str) -> Path:
    """The image named by ``$env``, else the first val image of ``data`` saved as ``root / name``."""
    image = os.environ.get(env)
    if image:
        return Path(image)
    from attnseg.data import build_dataset
    Image.fromarray(build_dataset(data, "val").load(0)[0]).save(root / name)
    return root / name


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    run = trained_run("ATTNSEG_BROWSER_RUN", root, "ccnet", [
        "model=dilated_resnet18_ccnet", "model_kwargs.channels=16", "model_kwargs.mid_channels=16", f"data={DATA}",
        "crop=[96,128]", "batch_size=4", "iters=2", "warmup_iters=1"])
    image = os.environ.get("ATTNSEG_BROWSER_IMAGE")
    if not image:
        from attnseg.data import build_dataset
        image = root / "scene.png"
        Image.fromarray(build_dataset(DATA, "val").load(0)[0]).save(image)
    with running_server(run) as base:
        yield base, Path(image), root


@pytest.fixture(scope="module")
def page(served):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.goto(served[0])
        pg.wait_for_function("document.querySelectorAll('#model option').length > 0")
        yield pg
        browser.close()


def canvas_pixel(page, y: int, x: int) -> list[int]:
    return page.evaluate(f"Array.from(document.getElementById('canvas').getContext('2d')"
                         f".getImageData({x}, {y}, 1, 1).data.slice(0, 3))")


def test_upload_overlay_slider_hover_click_and_screenshot(page, served):
    base, image_path, root = served
    assert "classes" in page.inner_text("#model-info")
    page.set_input_files("#file", str(image_path))
    page.wait_for_selector("#result:not([hidden])")
    page.wait_for_function("document.getElementById('timing').textContent.includes('model')")
    assert "round trip" in page.inner_text("#timing")
    legend_rows = page.locator("#legend tbody tr")
    assert legend_rows.count() >= 1
    shares = [float(t.split()[0]) for t in page.locator("#legend tbody tr td:nth-child(3)").all_inner_texts()]
    assert sum(shares) == pytest.approx(100, abs=0.6)

    image = np.asarray(Image.open(image_path).convert("RGB"))
    H, W = image.shape[:2]
    y, x = H // 3, W // 3
    ids = np.frombuffer(base64.b64decode(page.evaluate("state.result.ids_raw")), np.uint8).reshape(H, W)
    palette = page.evaluate("state.result.palette")
    page.fill("#opacity", "0")           # the slider: opacity 0 shows the image, 1 the class colour
    page.dispatch_event("#opacity", "input")
    np.testing.assert_allclose(canvas_pixel(page, y, x), image[y, x], atol=2)
    page.fill("#opacity", "1")
    page.dispatch_event("#opacity", "input")
    assert canvas_pixel(page, y, x) == palette[ids[y, x]]
    page.fill("#opacity", "0.6")
    page.dispatch_event("#opacity", "input")
    assert page.inner_text("#opacity-value") == "0.60"

    box = page.locator("#canvas").bounding_box()
    border = page.evaluate("document.getElementById('canvas').clientLeft")
    box = {"x": box["x"] + border, "y": box["y"] + border, "width": box["width"] - 2 * border,
           "height": box["height"] - 2 * border}
    sx, sy = box["width"] / W, box["height"] / H
    page.mouse.move(box["x"] + (x + 0.5) * sx, box["y"] + (y + 0.5) * sy)
    name = page.evaluate("state.result.classes")[ids[y, x]]
    assert page.inner_text("#hover") == f"({y}, {x}): {ids[y, x]} {name}"

    page.mouse.click(box["x"] + (x + 0.5) * sx, box["y"] + (y + 0.5) * sy)
    page.wait_for_selector(f"#attention figure[data-query='{y},{x}']")
    captions = page.locator(f"#attention figure[data-query='{y},{x}'] figcaption").all_inner_texts()
    assert any(f"({y}, {x})" in c for c in captions)
    page.wait_for_function("Array.from(document.querySelectorAll('#attention img')).every(i => i.complete && "
                           "i.naturalWidth > 0)")
    assert page.get_attribute("#dl-ids", "href").startswith("data:image/png;base64,")
    shot = Path(os.environ.get("ATTNSEG_SCREENSHOT") or root / "page.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).width >= 1000


def test_drag_and_drop_and_a_bad_upload(page, served):
    _, image_path, _ = served
    b64 = base64.b64encode(image_path.read_bytes()).decode()
    page.evaluate("""b64 => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
        state.result = null;
    }""", b64)
    page.wait_for_function("state.result && state.result.width > 0")
    assert page.get_attribute("#dl-ids", "download") == "dropped_ids.png"
    page.set_input_files("#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not a picture"}])
    page.wait_for_selector("#error:not([hidden])")
    assert "not an image this server can read" in page.inner_text("#error")
