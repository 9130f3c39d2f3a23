"""attnseg.model_card / `attnseg card`: the sections of a tiny trained run's card, the card of a checkpoint file
alone, the validation protocols and data terms, the papers of every registered model, and bad input."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from attnseg.cli import main as cli
from attnseg.data.labels import LabelSpec
from attnseg.engine.checkpoint import save_weights
from attnseg.engine.config import TrainConfig, config_to_dict
from attnseg.engine.trainer import train
from attnseg.model_card import (
    DATA_TERMS,
    build_card,
    describe_data,
    model_papers,
    paper_from_doc,
    write_model_card,
)
from attnseg.models import MODELS, create_model

SECTIONS = ("## Model", "## Data", "## Validation protocol", "## Recipe and budget", "## Results",
            "## Learning curve", "## How it was made", "## Use", "## Data terms")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """4 steps of FCN-8s on 32x40 synthetic scenes, validated at steps 2 and 4: a real run directory."""
    run = tmp_path_factory.mktemp("card") / "tiny"
    cfg = TrainConfig(model="fcn8s_resnet18", data="synthetic:train=8,val=2,size=32x40", run_dir=str(run),
                      crop=(32, 40), scale_range=(1.0, 1.0), batch_size=4, iters=4, warmup_iters=1, val_interval=2,
                      ckpt_interval=0, log_interval=1, workers=0, progress=False, precision="fp32", lr=1e-3)
    train(cfg, command="attnseg train tiny iters=4")
    return run


def test_card_of_a_run_has_every_section(tiny_run, capsys):
    assert cli(["card", str(tiny_run)]) == 0
    card_path = tiny_run / "MODEL_CARD.md"
    assert f"model card written to {card_path}" in capsys.readouterr().out
    text = card_path.read_text()
    for section in SECTIONS:
        assert section in text, section
    assert "## Missing" not in text  # a finished run has everything
    assert "*Fully Convolutional Networks for Semantic Segmentation*" in text
    assert "https://arxiv.org/abs/1411.4038" in text
    n_params = sum(p.numel() for p in create_model("fcn8s_resnet18", num_classes=7).parameters())
    assert f"({n_params:,})" in text
    assert "GFLOPs of one forward at the training crop 32x40" in text and "2 FLOPs" in text
    assert "`synthetic:train=8,val=2,size=32x40`" in text and "images: 8 for training, 2 for validation" in text
    assert "synthetic val split" in text and "Generated data: no third-party images" in text
    assert "budget: 4 steps (iters)" in text and "adamw lr 0.001" in text and "seed 0" in text
    assert "precision: fp32" in text
    # the per-class table: every class of the synthetic scenes, from the checkpoint's metrics
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for name in metrics["classes"]:
        assert f"| {name} |" in text
    assert f"**mIoU {100 * metrics['mIoU']:.2f} %**" in text
    # the learning curve: the picture and one row per validation
    assert "![learning curve](learning_curve.png)" in text
    assert "| 2 | " in text and "| 4 | " in text
    assert "attnseg train tiny iters=4" in text
    assert f"torch {torch.__version__}" in text
    assert "attnseg eval " in text and "attnseg.load(" in text


def test_card_of_a_checkpoint_alone(tiny_run, tmp_path):
    """Copied out of its run directory, the checkpoint still gives a card, with what is missing said."""
    alone = tmp_path / "model.safetensors"
    shutil.copy(tiny_run / "checkpoints" / "model.safetensors", alone)
    path = write_model_card(alone)
    assert path == tmp_path / "model.MODEL_CARD.md"
    text = path.read_text()
    for section in ("## Model", "## Data", "## Validation protocol", "## Recipe and budget", "## Results",
                    "## Missing"):
        assert section in text
    assert "| background |" in text  # the per-class table comes from the metadata
    assert "learning-curve picture: a checkpoint file alone has none" in text
    assert "validation curve: a checkpoint file alone has no log.jsonl" in text
    assert "run directory: not found" in text
    # --out elsewhere
    out = tmp_path / "cards" / "card.md"
    assert cli(["card", str(alone), "--out", str(out)]) == 0 and out.is_file()


def test_card_of_checkpoint_inside_run_uses_the_run(tiny_run, tmp_path):
    text, default = build_card(tiny_run / "checkpoints" / "best.safetensors", out=tmp_path / "c.md")
    assert default == tmp_path / "c.md"
    assert "best validation so far" in text and "| 2 | " in text  # the run's log is found


def test_validation_protocols():
    hold = describe_data("camvid:../shared/data/camvid,holdout=0006R0", None, "train", "val")
    assert hold["kind"] == "camvid" and hold["holdout"] == ("0006R0",)
    assert "cross-sequence hold-out" in hold["protocol_name"] and "0006R0" in hold["protocol"]
    std = describe_data("camvid:../shared/data/camvid", None, "train", "val")
    assert std["protocol_name"] == "standard val" and "0016E5" in std["protocol"]
    sep = describe_data("folder:/a", "folder:/b", "train", "val")
    assert "separate" in sep["protocol_name"]
    assert "camvid" in DATA_TERMS and "research use only" in DATA_TERMS["camvid"]["terms"]


def test_camvid_holdout_card_from_metadata(tmp_path):
    """A CamVid checkpoint (no run directory): the hold-out protocol and CamVid's terms are in the card."""
    torch.manual_seed(0)
    net = create_model("fcn8s_resnet18", num_classes=3).eval()
    spec = LabelSpec(["a", "b", "c"])
    meta = {"model": "fcn8s_resnet18", "model_kwargs": {}, "classes": spec.to_dict(),
            "config": config_to_dict(TrainConfig(data="camvid:../shared/data/camvid,holdout=0006R0", crop=(32, 48),
                                                 time_budget=30)),
            "metrics": {"mIoU": 0.4, "aAcc": 0.8, "mAcc": 0.5, "IoU": [0.1, float("nan"), 0.7], "Acc": [0.2, 0.3, 0.9]},
            "step": 12, "command": "attnseg train x", "num_params": sum(p.numel() for p in net.parameters())}
    ckpt = save_weights(tmp_path / "w.safetensors", net, meta)
    text, _ = build_card(ckpt)
    assert "**cross-sequence hold-out** (`holdout=0006R0`)" in text
    assert "time budget 30 min" in text
    assert "| b | - |" in text  # NaN (class absent) is a dash
    assert "research or personal use only" in text and "Brostow" in text


def test_every_registered_model_has_a_paper():
    for name in sorted(MODELS):
        papers = model_papers(name)
        assert papers and papers[0]["role"] == "method", name
        assert papers[0]["title"] and papers[0]["url"].startswith("http"), name
    with torch.device("meta"):
        m = create_model("dilated_resnet18_nonlocal", num_classes=3)
    titles = [p["title"] for p in model_papers("dilated_resnet18_nonlocal", m)]
    assert titles == ["Fully Attentional Network for Semantic Segmentation", "Non-local Neural Networks"]
    assert paper_from_doc("no citation here") is None


def test_card_bad_inputs(tmp_path, capsys):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(foreign))
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    cases = [(text_file, "is not a PyTorch checkpoint"),
             (foreign, "carries no attnseg metadata"),
             (tmp_path / "missing.pt", "does not exist"),
             (empty_run, "holds no checkpoint")]
    for path, message in cases:
        assert cli(["card", str(path)]) == 2, path
        err = capsys.readouterr().err
        assert err.startswith("attnseg: error: ") and message in err and str(Path(path).name) in err
        assert "Traceback" not in err
    assert not list(tmp_path.glob("*MODEL_CARD.md"))
