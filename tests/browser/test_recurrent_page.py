"""The web page with Ren & Zemel's recurrent model (Debian's chromium driven by Playwright): the attention pictures
hold the step strip and, under it, the same steps as an animated GIF that the browser decodes, beside the instances.

    make test-browser

``ATTNSEG_BROWSER_RECURRENT_RUN`` / ``ATTNSEG_BROWSER_RECURRENT_IMAGE`` point it at a trained run and an image,
``ATTNSEG_RECURRENT_SCREENSHOT`` says where the screenshot goes (default: the test's tmp folder)."""

import os
from pathlib import Path

import pytest

from .test_page import example_image, open_page, running_server, trained_run

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")

DATA = "rosettes:train=6,val=2,size=64x64,count=3-5"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser_recurrent")
    run = trained_run("ATTNSEG_BROWSER_RECURRENT_RUN", root, "ra", [
        "model=recurrent_attention", "model_kwargs={image_size: [64, 64], steps: 4, filter_size: 16, pad_min: 4}",
        f"data={DATA}", "crop=[64,64]", "batch_size=2", "iters=3", "optimizer=adam", "warmup_iters=0"])
    image = example_image("ATTNSEG_BROWSER_RECURRENT_IMAGE", root, DATA, "plant.png")
    with running_server(run) as base:
        yield base, image, root


def test_the_sequence_strip_and_its_animation(served):
    base, image_path, root = served
    with open_page(base) as page:
        page.set_input_files("#file", str(image_path))
        page.wait_for_selector("#result:not([hidden])")
        assert page.evaluate("state.result.kind") == "instance"
        fig = page.locator('#attention figure[data-name="steps"]')
        fig.wait_for()
        assert "the sequence" in fig.locator("figcaption").inner_text()
        page.wait_for_function("""() => {
            const imgs = document.querySelectorAll('#attention figure[data-name="steps"] img');
            return imgs.length === 2 && [...imgs].every(i => i.complete && i.naturalWidth > 0);
        }""")
        anim = fig.locator("img.animation")
        assert anim.get_attribute("src").startswith("data:image/gif;base64,")
        # the GIF is four cells wide (box, glimpse, mask, canvas)
        assert page.evaluate("document.querySelector('#attention img.animation').naturalWidth") == 4 * 128
        assert page.locator('#attention figure[data-name="instance_colours"]').count() == 1
        shot = Path(os.environ.get("ATTNSEG_RECURRENT_SCREENSHOT") or root / "page.png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        fig.scroll_into_view_if_needed()
        page.screenshot(path=str(shot), full_page=True)
