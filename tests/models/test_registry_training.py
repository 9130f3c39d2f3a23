"""Every registered model trains: two AdamW steps in fp32 and under bf16 autocast on the CPU.

One test over the whole registry (``attnseg.models.MODELS``, so a new model is covered without touching this
file): a tiny batch (2 images, 3 channels, 32x32), ``segmentation_loss`` on the model's output (main, aux and
embedding terms), and at each step a finite loss and a finite fp32 gradient on every parameter that receives one;
after the two steps every parameter whose gradient was non-zero has moved (weight decay is off, so only the
gradient can move it; an exactly-zero gradient is structural, e.g. a conv bias right before BatchNorm, or λ of a
segmentation-aware layer whose dilated window has only its centre inside a 4x4 map). bf16 runs forward and loss
under ``torch.autocast("cpu", dtype=torch.bfloat16)`` with fp32 parameters and optimiser, as the engine's bf16
precision does. The two precisions of a model share one build (restored to its initial state), to save time.
"""

from __future__ import annotations

import copy

import pytest
import torch

from attnseg.losses import segmentation_loss
from attnseg.models import MODELS, create_model, model_task

NUM_CLASSES = 3
SIZE = (32, 32)

# Options that shrink a model, only where its registered size is too heavy for about a second of one CPU core;
# every other model runs exactly as registered.
VGG_FCN = {"width": 0.125}               # 134M parameters: fc6 is a 7x7x4096 conv, conv1 pads by 100 pixels
DECONVNET = {"width": 0.125}             # 252M (16M at w025), and every input is padded to 224x224
HEAD = {"channels": 32, "mid_channels": 32, "aux_mid": 16}   # FLANet's head: 512 wide, 12-30M of its parameters
TINY = {
    "fcn32s_vgg16": VGG_FCN, "fcn16s_vgg16": VGG_FCN, "fcn8s_vgg16": VGG_FCN,
    "deconvnet_vgg16": DECONVNET, "deconvnet_vgg16_w025": DECONVNET,
    "segaware_dilated_resnet18": HEAD, "segaware_dilated_resnet18_crf": HEAD,
    "segaware_dilated_resnet50": HEAD, "segaware_dilated_resnet50_crf": HEAD,
}


def tiny_kwargs(name: str) -> dict:
    if name in TINY:
        return TINY[name]
    if name.startswith(("flanet", "dilated_resnet")):    # FLANet and its peers (the same net, another block)
        return HEAD
    return {}


_built: dict = {}


def build(name: str):
    """The model and its initial state; kept for the next test (the other precision of the same model)."""
    if name not in _built:
        _built.clear()
        torch.manual_seed(0)
        model = create_model(name, NUM_CLASSES, **tiny_kwargs(name))
        _built[name] = model, copy.deepcopy(model.state_dict())
    model, state = _built[name]
    model.load_state_dict(state)
    return model.train()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", [n for n in MODELS if model_task(n) == "semantic"])  # instances: test_instance_models
def test_two_adamw_steps(name, precision):
    model = build(name)
    H, W = SIZE
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, H, W, generator=g)
    target = torch.randint(0, NUM_CLASSES, (2, H, W), generator=g)
    target[:, :H // 2] = 0                                    # a large segment: the embedding loss gets both kinds
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, f"{name} has no trainable parameter"
    before = {n: p.detach().clone() for n, p in trainable.items()}
    opt = torch.optim.AdamW(trainable.values(), lr=1e-3, weight_decay=0.0, fused=True)   # fused: faster on CPU
    moved_by_grad = set()
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(images)
            loss, _ = segmentation_loss(out, target)
        assert out["logits"].shape == (2, NUM_CLASSES, H, W)
        assert torch.isfinite(loss), f"{name} ({precision}) step {step}: loss {loss.item()}"
        loss.backward()
        grads = {n: p.grad for n, p in trainable.items() if p.grad is not None}
        assert grads, f"{name} ({precision}): no parameter received a gradient"
        bad = [n for n, gr in grads.items() if gr.dtype != torch.float32 or not torch.isfinite(gr).all()]
        assert not bad, f"{name} ({precision}) step {step}: non-finite or non-fp32 gradients: {bad[:6]}"
        moved_by_grad |= {n for n, gr in grads.items() if gr.any()}
        opt.step()
    assert len(moved_by_grad) >= len(trainable) // 2, f"{name} ({precision}): most gradients are exactly zero"
    unchanged = [n for n in moved_by_grad if torch.equal(trainable[n].detach(), before[n])]
    assert not unchanged, f"{name} ({precision}): parameters with non-zero gradients did not change: {unchanged[:6]}"
