"""FlowNet-Simple (FlowNetS): optical flow from the two frames stacked, a strided encoder and a refinement decoder.

Dosovitskiy, Fischer, Ilg, Häusser, Hazırbaş, Golkov, van der Smagt, Cremers, Brox, "FlowNet: Learning Optical
Flow with Convolutional Networks", ICCV 2015, https://arxiv.org/abs/1504.06852. Official code (Caffe):
https://lmb.informatik.uni-freiburg.de/resources/software.php (``flownet-release``, model ``FlowNetS``).
Used here as the flow network whose output Harley, Derpanis, Kokkinos, "Segmentation-Aware Convolutional
Networks Using Local Attention Masks", ICCV 2017, https://arxiv.org/abs/1708.04607, filter with
segmentation-aware bilateral filters (``attnseg.flow``).

Encoder (Fig. 2 of FlowNet; channels times ``width``; every conv followed by LeakyReLU(0.1)):

    x = cat[frame1, frame2], normalised per pair   (B, 6, H, W); see "Inputs" below
    conv1 7x7/2 64, conv2 5x5/2 128, conv3 5x5/2 256, conv3_1 3x3 256, conv4 3x3/2 512, conv4_1 512,
    conv5 3x3/2 512, conv5_1 512, conv6 3x3/2 1024, conv6_1 1024          (``levels`` = 6 strided stages)

Refinement (Fig. 3), from the deepest level L down to level 2 (1/4 resolution):

    flow_L = predict(conv_L)                              3x3 conv to 2 channels
    for l = L-1 .. 2:
        deconv_l = upconv(features_{l+1})                 4x4/2 transposed conv, LeakyReLU
        features_l = cat[conv_l (skip), deconv_l, upconv(flow_{l+1})]
        flow_l = predict(features_l)
    flow = bilinear x4 upsampling of flow_2               (full resolution)

FlowNetC-style variant (``correlation=True``, Fig. 2 bottom of FlowNet, reduced): conv1 and conv2 run on each
frame alone (shared weights); the 1/4-resolution features are correlated (``correlation``: a 1x1-patch cost volume
over integer displacements in [-m, m]² cells, m = ``max_displacement`` = 2, i.e. ±8 px, enough for this
project's ≤ 6 px motions; FlowNetC correlates at 1/8 over ±20 px) and the cost volume with a 1x1 "redirect" of
frame 1's features replaces conv2's output as the input of conv3 and the level-2 skip.

Inputs: ``normalize="pair"`` (default) subtracts the pair's per-channel mean and divides by the resulting RMS,
so the network sees zero-mean, unit-std inputs whatever the scene's brightness and contrast; FlowNet subtracts a
dataset mean, and ``"centre"`` (x - 0.5) is this module's former input, with which low-contrast scenes reach the
first layer with a std of about 0.1-0.2 and the network did not leave the zero-flow plateau in a few thousand
steps.

Units: flows are predicted in units of px / ``div_flow`` (20, as the code) and returned in pixels of the
full-resolution image at every scale, and the ground truth of a coarse scale is the area-downsampled full-resolution
flow, *not* divided by the downsampling factor (as the Caffe code, which downsamples and scales the flow by 1/20
only); a constant 3 px flow is 3 at every level. The multi-scale loss (``multiscale_epe``)
is the mean EPE at each scale against the area-downsampled ground truth, weighted 0.005, 0.01, 0.02, 0.08, 0.32
from flow2 to flow6 (the Caffe training prototxt). Deviations: ``levels`` < 6 drops the deepest stages (CPU-sized
versions), ``batch_norm`` adds BatchNorm after each encoder conv (as in the FlowNetS-BN of later
reimplementations), and inputs of any size are padded (replicate) to a multiple of 2^levels and the output
cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (name, kernel, stride, channels at width 1) of the encoder; a "stage" ends at each stride-2 conv's block
ENCODER = (("conv1", 7, 2, 64), ("conv2", 5, 2, 128), ("conv3", 5, 2, 256), ("conv3_1", 3, 1, 256),
           ("conv4", 3, 2, 512), ("conv4_1", 3, 1, 512), ("conv5", 3, 2, 512), ("conv5_1", 3, 1, 512),
           ("conv6", 3, 2, 1024), ("conv6_1", 3, 1, 1024))
DECONV = {5: 512, 4: 256, 3: 128, 2: 64}          # channels of deconv_l at width 1
LOSS_WEIGHTS = {2: 0.005, 3: 0.01, 4: 0.02, 5: 0.08, 6: 0.32}   # flow_l weights of the Caffe prototxt


def conv(cin: int, cout: int, kernel: int, stride: int = 1, batch_norm: bool = False) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    return nn.Sequential(*layers, nn.LeakyReLU(0.1, inplace=True))


def upconv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.1, inplace=True))


def correlation(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int) -> torch.Tensor:
    """FlowNetC's correlation layer (Eq. 1 of FlowNet with a 1x1 patch, stride 1): c(x, d) = <f1(x), f2(x + d)> / C
    for every integer displacement d = (dx, dy) in [-m, m]², m = ``max_displacement``; f2 is zero outside the image.

    f1, f2 (B, C, H, W) -> (B, (2m + 1)², H, W), channel (dy + m) · (2m + 1) + (dx + m) (dy outer, dx inner).
    """
    m = max_displacement
    H, W = f1.shape[-2:]
    f2 = F.pad(f2, (m, m, m, m))                                               # (B, C, H + 2m, W + 2m)
    out = [(f1 * f2[..., m + dy:m + dy + H, m + dx:m + dx + W]).mean(1)         # (B, H, W) each
           for dy in range(-m, m + 1) for dx in range(-m, m + 1)]
    return torch.stack(out, 1)                                                 # (B, (2m + 1)², H, W)


class FlowNetS(nn.Module):
    """``forward(image1, image2)`` (B, 3, H, W) each, in [0, 1] -> {"flow": (B, 2, H, W), "flows": [flow_2 at
    H/4, flow_3 at H/8, ..., flow_L]}: (dx, dy) in full-resolution pixels, finest first.

    Args:
        width: channel multiplier (1 = the paper's).
        levels: number of strided stages L (6 = the paper's; 3-6).
        batch_norm: BatchNorm after each encoder conv.
        div_flow: the network predicts flow / div_flow.
        normalize: "pair" (default): each pair's frames minus their joint per-channel mean, divided by the root mean
            square of the result (contrast-invariant inputs of zero mean, unit std); "centre": minus 0.5 only (the
            former input).
        correlation: FlowNetC-style (Fig. 2, bottom, of FlowNet): conv1 and conv2 run on each frame separately
            (shared weights), the 1/4-resolution features are correlated over displacements within
            ``max_displacement`` (in 1/4-resolution cells, i.e. ±4·m full-resolution px), and the cost volume,
            with a 1x1 "redirect" of frame 1's features (32 channels at width 1), feeds conv3 on; the level-2 skip
            is that concatenation. False (default): FlowNetS, the frames stacked at the input.
        max_displacement: m of the correlation (2: ±8 px).
    """

    def __init__(self, width: float = 1.0, levels: int = 6, batch_norm: bool = False, div_flow: float = 20.0,
                 normalize: str = "pair", correlation: bool = False, max_displacement: int = 2):
        super().__init__()
        if not 3 <= levels <= 6:
            raise ValueError(f"levels must be 3-6 (strided stages; flow is predicted from level 2 up), not {levels}")
        if normalize not in ("pair", "centre"):
            raise ValueError(f"normalize must be 'pair' or 'centre', not {normalize!r}")
        if correlation and max_displacement < 1:
            raise ValueError(f"max_displacement must be >= 1 cell for the correlation, not {max_displacement}")
        self.levels, self.div_flow, self.normalize = levels, div_flow, normalize
        self.correlation, self.max_displacement = correlation, max_displacement

        def ch(c: int) -> int:
            return max(2, round(c * width))

        self.encoder = nn.ModuleDict()
        cin, self.channels = 6, {}
        for name, k, s, c in ENCODER:
            level = int(name[4])
            if level > levels:
                break
            if correlation and name == "conv1":
                cin = 3                                                         # one frame at a time
            if correlation and name == "conv3":                                 # after the cost volume
                self.redirect = conv(self.channels[2], ch(32), 1, 1, batch_norm)
                cin = self.channels[2] = (2 * max_displacement + 1) ** 2 + ch(32)
            self.encoder[name] = conv(cin, ch(c), k, s, batch_norm)
            cin = self.channels[level] = ch(c)                                # the level's last conv
        self.predict, self.deconv, self.upflow = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        feat = self.channels[levels]
        self.predict[str(levels)] = nn.Conv2d(feat, 2, 3, 1, 1)
        for level in range(levels - 1, 1, -1):
            self.deconv[str(level)] = upconv(feat, ch(DECONV[level]))
            self.upflow[str(level)] = nn.ConvTranspose2d(2, 2, 4, 2, 1)
            feat = self.channels[level] + ch(DECONV[level]) + 2
            self.predict[str(level)] = nn.Conv2d(feat, 2, 3, 1, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, 0.1)                          # the LeakyReLU slope
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.predict.values():
            m.weight.data.mul_(0.1)                # small first flows: the outputs are scaled by div_flow

    def _inputs(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        """(B, 6, H, W): the normalised frames stacked (see ``normalize``)."""
        x = torch.cat([image1, image2], 1)                                      # (B, 6, H, W)
        if self.normalize == "centre":
            return x - 0.5
        both = torch.stack([image1, image2], 1)                                 # (B, 2, C, H, W)
        centred = both - both.mean((1, 3, 4), keepdim=True)                     # minus (B, 1, C, 1, 1) means
        rms = centred.pow(2).mean((1, 2, 3, 4), keepdim=True).sqrt().clamp_min(1e-3)   # (B, 1, 1, 1, 1)
        return (centred / rms).flatten(1, 2)                                    # (B, 2, C, H, W) -> (B, 2C, H, W)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> dict:
        if image1.shape != image2.shape or image1.dim() != 4:
            raise ValueError(f"the frames must be two (B, C, H, W) tensors of one shape, not {tuple(image1.shape)} "
                             f"and {tuple(image2.shape)}")
        B, C, H, W = image1.shape
        step = 2 ** self.levels
        ph, pw = -H % step, -W % step                                          # pad to a multiple of 2^L
        x = self._inputs(image1, image2)                                        # (B, 6, H, W)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")                     # (B, 6, H + ph, W + pw)
        if self.correlation:
            x = torch.cat([x[:, :C], x[:, C:]], 0)                              # (2B, 3, H', W'): both frames
        skips = {}
        for name, layer in self.encoder.items():
            if self.correlation and name == "conv3":
                f1, f2 = x[:B], x[B:]                                           # (B, c2, H'/4, W'/4) each
                corr = F.leaky_relu(correlation(f1, f2, self.max_displacement), 0.1)   # (B, (2m + 1)², ., .)
                x = skips[2] = torch.cat([corr, self.redirect(f1)], 1)           # (B, (2m + 1)² + c_r, ., .)
            x = layer(x)
            skips[int(name[4])] = x                                             # the level's last conv wins
        feat = skips[self.levels]
        flow = self.predict[str(self.levels)](feat)                             # (B, 2, H'/2^L, W'/2^L)
        flows = [flow]
        for level in range(self.levels - 1, 1, -1):
            feat = torch.cat([skips[level], self.deconv[str(level)](feat), self.upflow[str(level)](flow)], 1)
            flow = self.predict[str(level)](feat)                               # (B, 2, H'/2^l, W'/2^l)
            flows.append(flow)
        full = F.interpolate(flow, scale_factor=4, mode="bilinear", align_corners=False)[..., :H, :W]
        crops = []                                                              # finest (level 2) first
        for level, f in zip(range(2, self.levels + 1), flows[::-1]):
            h, w = -(-H // 2 ** level), -(-W // 2 ** level)                     # ceil(H / 2^l), ceil(W / 2^l)
            crops.append(f[..., :h, :w] * self.div_flow)                        # (B, 2, h, w)
        return {"flow": full * self.div_flow, "flows": crops}


def multiscale_epe(outputs: dict, gt: torch.Tensor, valid: torch.Tensor | None = None,
                   weights: dict | None = None, full_weight: float = 0.0) -> torch.Tensor:
    """FlowNet's multi-scale loss: Σ_l w_l · mean EPE(flow_l, area-downsampled gt) + full_weight · mean EPE of
    the full-resolution flow (over ``valid`` pixels only when given; 0 by default, as FlowNet).

    Args:
        outputs: ``FlowNetS`` outputs; ``flows`` finest (level 2) first.
        gt: (B, 2, H, W) ground-truth flow in pixels.
        valid: (B, H, W) bool, for the full-resolution term.
        weights: {level: weight}; default ``LOSS_WEIGHTS`` (0.005 at level 2 ... 0.32 at level 6).
    """
    weights = LOSS_WEIGHTS if weights is None else weights
    H, W = gt.shape[-2:]
    loss = gt.new_zeros(())
    for level, flow in enumerate(outputs["flows"], 2):
        target = F.adaptive_avg_pool2d(gt, flow.shape[-2:]) if flow.shape[-2:] != (H, W) else gt  # (B, 2, h, w)
        loss = loss + weights.get(level, 0.0) * (flow - target).pow(2).sum(1).add(1e-9).sqrt().mean()
    if full_weight:
        epe = (outputs["flow"] - gt).pow(2).sum(1).add(1e-9).sqrt()           # (B, H, W)
        loss = loss + full_weight * (epe[valid].mean() if valid is not None else epe.mean())
    return loss


def flownet_simple(width: float = 1.0, levels: int = 6, batch_norm: bool = False, correlation: bool = False,
                   max_displacement: int = 2, normalize: str = "pair") -> FlowNetS:
    """FlowNetS (``correlation=True``: the FlowNetC-style variant); ``flownet_simple(width=0.25, levels=5)`` trains
    on one CPU thread in minutes (about 0.11 s per batch of 8 at 96x128)."""
    return FlowNetS(width=width, levels=levels, batch_norm=batch_norm, normalize=normalize,
                    correlation=correlation, max_displacement=max_displacement)


__all__ = ["FlowNetS", "flownet_simple", "correlation", "multiscale_epe", "LOSS_WEIGHTS"]
