"""benchmarks/model_zoo.py: its hand-copied trained figures cite real sections of docs/RESULTS.md, the table
renders every model, and docs/MODEL_ZOO.md lists every registered model."""

import importlib.util
import re
from pathlib import Path

import torch

from attnseg.engine.precision import Precision
from attnseg.models import MODELS

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "model_zoo.py"
_spec = importlib.util.spec_from_file_location("model_zoo_bench", SCRIPT)
zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo)


def test_trained_figures_cite_existing_sections():
    headings = [line.lstrip("#").strip() for line in (REPO / "docs" / "RESULTS.md").read_text().splitlines()
                if re.match(r"#{2,3} ", line)]
    for name, figures in zoo.TRAINED.items():
        assert name in MODELS, name
        for fig in figures:
            for title in zoo.section_titles(fig["section"]):
                assert title in headings, (name, title)
            assert fig["protocol"] and fig["budget"]
            assert float(fig["miou"]) > 0 if "miou" in fig else "**" in fig["figure"]     # instance models: a figure
    assert zoo.slug("CamVid: the shipped FCN-8s recipe under both validations") == \
        "camvid-the-shipped-fcn-8s-recipe-under-both-validations"


def test_render_and_speed_helper(tmp_path):
    rows = {"fcn8s_resnet18": {"params": 11189074, "gflops": 12.77, "config": "camvid_fcn8s_resnet18.yaml",
                               "config_budget": "30 min", "config_options": {}, "other_configs": [],
                               "trained": zoo.TRAINED["fcn8s_resnet18"], "speed": None},
            "farabet": {"params": 860000, "gflops": 29.8, "config": None, "config_budget": None,
                        "config_options": {}, "other_configs": [], "trained": [],
                        "speed": {"fp32_img_s": 3.2, "bf16_img_s": None,
                                  "machine": {"cpu_name": "X", "torch_threads": 2, "repeats": 3}}}}
    md = zoo.render_markdown({"models": rows})
    assert "No weights can be downloaded here" in md and "torch threads: **2**" in md
    assert "| `fcn8s_resnet18` | `camvid_fcn8s_resnet18.yaml` (30 min) | 11.19 | 12.8 | not measured yet |" in md
    assert "`attnseg train configs/camvid_fcn8s_resnet18.yaml`" in md and "**59.45** (standard val" in md
    assert "| `farabet` | none | 0.86 | 29.8 | 3.2 | n/a (no native bf16) | not trained here yet | - |" in md
    prec = Precision.resolve(torch.device("cpu"), "fp32", channels_last=True)
    net = torch.nn.Conv2d(3, 2, 1)
    rate, times = zoo.images_per_second(lambda x: {"logits": net(x)}, prec, torch.zeros(1, 3, 8, 8), 2)
    assert rate > 0 and len(times) == 2


def test_model_zoo_doc_lists_every_registered_model():
    """docs/MODEL_ZOO.md is generated: rerun `python benchmarks/model_zoo.py --skip-speed` after registering a
    model (the speed figures already measured are kept)."""
    text = (REPO / "docs" / "MODEL_ZOO.md").read_text()
    missing = [n for n in MODELS if f"| `{n}` |" not in text]
    assert not missing, f"docs/MODEL_ZOO.md lacks {missing}; run python benchmarks/model_zoo.py --skip-speed"
