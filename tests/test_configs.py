"""configs/: every registered model is trained by some config, and every config loads and builds its model."""

from pathlib import Path

import pytest
import torch
import yaml

from attnseg.engine.checkpoint import INIT_WEIGHT_KWARGS
from attnseg.engine.config import load_config
from attnseg.models import MODELS, create_model, model_task

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_every_registered_model_has_a_config():
    named = {(yaml.safe_load(p.read_text()) or {}).get("model") for p in CONFIGS}
    missing = sorted(set(MODELS) - named)
    assert not missing, f"registered models without a config in configs/: {missing}"
    unknown = sorted(n for n in named - set(MODELS) if n)
    assert not unknown, f"configs name unregistered models: {unknown}"


def test_run_directories_are_distinct():
    """Two configs training into one run directory would resume each other's runs (the engine refuses)."""
    runs = [(yaml.safe_load(p.read_text()) or {}).get("run_dir") for p in CONFIGS]
    assert len(runs) == len(set(runs)) and all(r and r.startswith("runs/") for r in runs)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_loads_and_builds_on_meta(path):
    """load_config accepts the file; its model builds on the meta device with its options (initial-weight files,
    ``pretrained`` / ``base_weights``, are paths to runs that need not exist here, as in load_model)."""
    cfg = load_config(path)
    assert cfg.model in MODELS
    text = path.read_text()
    assert text.startswith("#"), "a config says in a comment what it trains"
    kwargs = {k: v for k, v in cfg.model_kwargs.items() if k not in INIT_WEIGHT_KWARGS}
    with torch.device("meta"):
        model = create_model(cfg.model, num_classes=1 if model_task(cfg.model) == "instances" else 11, **kwargs)
    assert sum(p.numel() for p in model.parameters()) > 0
