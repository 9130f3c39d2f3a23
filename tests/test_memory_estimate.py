"""The inference memory estimate (engine.memory): counted tensor bytes against hand-computed sizes."""

import torch
from torch import nn

from attnseg.engine.inference import InferenceConfig, plan_memory
from attnseg.engine.memory import estimate_inference_bytes, weight_bytes


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x):
        return {"logits": self.b(self.a(x))}


class SpatialAttention(nn.Module):
    """An (HW x HW) energy map: memory quadratic in the pixel count."""

    def forward(self, x):
        B, C, H, W = x.shape
        f = x.flatten(2)                                            # (B, C, HW)
        energy = torch.bmm(f.transpose(1, 2), f).softmax(-1)        # (B, HW, HW)
        return {"logits": torch.bmm(f, energy).view(B, C, H, W)}


def test_two_convs_peak_is_the_two_live_activations():
    m = TwoConvs()
    H, W = 64, 80
    est = estimate_inference_bytes(m, (1, 3, H, W)) - weight_bytes(m)
    # while b runs, a's output (16 ch) and b's output (4 ch) are alive: 20 x H x W floats
    assert est == 20 * H * W * 4


def test_attention_map_is_counted_quadratically():
    m = SpatialAttention()
    small = estimate_inference_bytes(m, (1, 4, 16, 16))
    big = estimate_inference_bytes(m, (1, 4, 32, 32))
    hw = 32 * 32
    assert big >= 2 * hw * hw * 4  # the energies and their softmax, both (HW, HW)
    assert 12 < big / small <= 16.5


def test_estimate_runs_on_meta_without_touching_real_memory():
    m = TwoConvs()
    est = estimate_inference_bytes(m, (1, 3, 20000, 20000))  # 24 GB of activations: only shapes are computed
    assert est > 20 * 20000 * 20000 * 4
    assert next(m.parameters()).device.type == "cpu"  # the model itself is not moved


def test_plan_switches_to_windows_then_refuses():
    m = TwoConvs()
    cfg = InferenceConfig()
    same, note = plan_memory(m, (256, 256), cfg, 4, 1e12, (64, 64))
    assert same is cfg and note is None
    slid, note = plan_memory(m, (2048, 2048), cfg, 4, 6e8, (64, 64))  # whole: ~0.83 GB, windows: ~0.55
    assert slid.mode == "slide" and slid.crop == (512, 512) and "sliding windows" in note
    try:
        plan_memory(m, (2048, 2048), cfg, 4, 3e8, (64, 64))  # above the fixed overhead, below every plan
    except ValueError as e:
        assert "over the limit of" in str(e) and "--max-memory" in str(e)
    else:
        raise AssertionError("an inference far over the limit was accepted")
