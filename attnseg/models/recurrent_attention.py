"""End-to-end instance segmentation with recurrent attention: one object per timestep, found by a box network that
looks at the image and at a canvas of what is already segmented, segmented inside its attention box, and scored
so that the sequence can stop.

Ren, Zemel, "End-to-End Instance Segmentation with Recurrent Attention", CVPR 2017, https://arxiv.org/abs/1605.09410.
Official code (TensorFlow 0.12, Python 2.7; no longer runs): https://github.com/renmengye/rec-attend-public
(``full_model.py``, ``box_model.py``, ``modellib.py``, ``nnlib.py``, ``run_cvppp.sh``); spec: METHODS.md §4.

Per timestep t = 0..T−1 (§3, Fig. 2; shapes for the CVPPP layout at 224x224, K = 48):

    (A) canvas     c_t = max(c_{t−1}, ŷ_t), c_{−1} = 0, gradient stopped              (B, 1, H, W)
    (B) box        u = CNN_box([x, c_{t−1}])  (per-timestep batch norm)                 (B, 64, 7, 7)
                   5 glimpse iterations: z_n = Σ α u, h_n = LSTM(z_n, h_{n−1}), α ← softmax(MLP(h_n)); the LSTM
                   starts from zero at every t (the code's behaviour)                     h_N (B, 256)
                   Linear(h_N) -> (ỹ, x̃, log δ̃_y, log δ̃_x, log σ²_y, log σ²_x, log γ_patch, log γ_box, log γ_out)
                   centre ((ỹ+1)H/2, (x̃+1)W/2), size δ = exp(log δ̃)(H, W), σ² = δ/K      (§3.2, Eq. 2-4)
                   K x K Gaussian filters, pdf-normalised (``nn.gaussian_attention``)   F_Y (B, K, H), F_X (B, K, W)
                   patch P = γ_patch F_Y [x, c_{t−1}] F_Xᵀ                               (B, 4, K, K)   (Eq. 5)
    (C) segment    core = CNN_seg(P)                                                     (B, 32, 6, 6)
                   p = DCNN(core) with U-Net skips (the mirrored encoder layers, then P)  (B, 1, K, K)
                   ỹ_t = F_Yᵀ p F_X;  y_t = sigmoid(exp(log γ_out) ỹ_t − 5)              (B, 1, H, W)   (Eq. 6-7)
                   y_t ← (1 − c_{t−1}) ⊙ y_t  (output masking)
    (D) score      s_t = sigmoid(Linear([h_N, flatten(core)]))                          (B,)           (Eq. 8)

Losses (``nn.instance_matching``, §3.4): soft IoU under the Hungarian matching of the T outputs to the
ground truth (Eq. 9-10), the same for the box "masks" sigmoid(γ_box F_Yᵀ 1 F_X − 5) against the padded ground-truth
boxes, and the monotone score loss (Eq. 11): L = L_y + L_box + L_s.

Training (§3.5, METHODS §4.5) goes in two runs of the common engine: ``phase="box"`` pre-trains the box network
(box loss + score loss; the canvas always receives the greedily matched ground-truth mask, times 1 − U(0, 0.3)),
then ``phase="full"`` starts from its weights (``init_from``) and trains everything jointly, with scheduled sampling
of ground-truth boxes and masks: at training step s and timestep t the ground truth is used with probability
``knob_probability`` = min(1, 0.5^((s − offset)/decay) (1 + log(1 + 3t))) (1 before the offset).

Paper and code differ; the paper is the default, the code's behaviour an option:

* U-Net skips and output masking: the paper uses both; the released CVPPP run has **neither**
  (``full_model_train.py`` writes the argparse defaults, False, over the model's own defaults, and ``run_cvppp.sh``
  passes neither flag): ``skip_connections=False, output_masking=False``.
* The greedy pick of the ground truth to teacher-force takes each ground truth once here; the code never marks
  one as taken (``grd_match_cum`` stays zero): ``greedy_reuse=True``.
* The code trains CVPPP on 103 of the 128 images (a RandomState(2) 80 % split); the paper says 128. That is a
  data split (``splits/train.txt``), not a model option.
* The box centre is squashed by tanh into the image and the log size by −softplus(−·) to at most the image (the
  code has a similar ``squash_ctrl_params``, tanh and −softplus, which no run script sets; without it the box left
  the image within 20 steps here, pushed by the score loss's gradients through the shared LSTM): ``squash=False``
  for the code's unbounded outputs. log γ_box starts at 4 (``box_gamma_init``; the code: ~0, see ``__init__``).
* In the box phase the score sees [h_N, core] as in the full phase (the code's ``box_model.py`` scores from h_N
  alone), so the full phase starts with a trained score head and a segmentation encoder trained by the score loss
  (the code's ``pretrain_ctrl_net`` copies only the controller).
* A teacher-forced box keeps σ² = δ/K of the ground-truth box (the code keeps the variance of the predicted one).
* The box loss is matched by the Hungarian method, as the code's ``f_segm_match`` on the box IoU (the greedy match
  only chooses what to teacher-force).

Extra inputs (§4.3, KITTI / Cityscapes): ``preprocess=True`` adds a U-Net (``models.unet``) predicting a
foreground map and an 8-bin angle map (direction from each pixel to its instance's centroid), trained with its own
loss (BCE + masked cross-entropy) beside the rest; its activated outputs, gradient stopped, are 9 more input
channels of both networks. The code trains that network first, freezes it and caches its outputs; here it trains in
the same run, which is the same except that its outputs are poor early on.

The input size is fixed by the attention MLP (one logit per cell of the box CNN's feature map): images of another
size are resized to ``image_size`` inside ``forward`` and the masks resized back.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.amp import no_autocast
from ..nn.gaussian_attention import attention_banks, filterbank_read, filterbank_write, ren_zemel_box_params
from ..nn.instance_matching import (
    box_masks,
    greedy_pick,
    gt_masks,
    hungarian_match,
    mask_boxes,
    matched_iou_loss,
    monotone_score_loss,
    soft_iou,
)
from .instance_base import InstanceModel, soft_dice_loss
from .recurrent_attention_parts import BoxNetwork, ConvStack, DeconvStack
from .unet import UNet

#: per-dataset layer configurations (METHODS §4.2's table; "nuclei" is attnseg's, for 128x128 tiles of small objects)
LAYOUTS = {
    "cvppp": {"box_depths": (8, 8, 16, 16, 32, 32, 64, 64), "box_pools": (1, 2, 1, 2, 1, 2, 2, 2),
              "seg_depths": (8, 8, 16, 16, 32, 32), "seg_pools": (1, 2, 1, 2, 1, 2),
              "dec_depths": (32, 32, 16, 16, 8, 8, 1), "dec_unpools": (2, 1, 2, 1, 2, 1, 1)},
    "kitti": {"box_depths": (16, 16, 32, 32, 64, 64, 64, 64), "box_pools": (2, 2, 1, 2, 1, 2, 1, 2),
              "seg_depths": (16, 32, 32, 64, 64, 96), "seg_pools": (1, 2, 1, 2, 1, 2),
              "dec_depths": (64, 64, 32, 32, 16, 16, 1), "dec_unpools": (2, 1, 2, 1, 2, 1, 1)},
    "nuclei": {"box_depths": (8, 8, 16, 16, 32, 32, 64), "box_pools": (1, 2, 1, 2, 1, 2, 2),
               "seg_depths": (8, 8, 16, 16, 32, 32), "seg_pools": (1, 2, 1, 2, 1, 1),
               "dec_depths": (32, 32, 16, 16, 8, 8, 1), "dec_unpools": (1, 1, 2, 1, 2, 1, 1)},
}
PHASES = ("box", "full")
BETA = -5.0                        # the constant output bias β (Eq. 7) and the box mask's
LOG_GAMMA_OUT_FIXED = 2.0          # ``fixed_gamma``: log γ_patch = 0, log γ_out = 2


def knob_probability(step: int, offset: int, decay: float, t: int = 0, timescale: bool = True) -> float:
    """The scheduled-sampling probability of using the ground truth at training step ``step`` and timestep t:
    1 up to ``offset``, then halving every ``decay`` steps, times τ_t = 1 + log(1 + 3t) with ``timescale`` (later
    timesteps stay teacher-forced longer), capped at 1 (the code's ``knob``)."""
    p = 1.0 if step <= offset else 0.5 ** ((step - offset) / decay)
    if timescale:
        p *= 1 + math.log(1 + 3 * t)
    return min(1.0, p)


def angle_target(instances: Tensor, bins: int = 8) -> Tensor:
    """The pixel-level direction encoding of §4.3 (Uhrig et al. 2016; ``data_api/orientation.py``): (B, H, W) ids ->
    (B, H, W) int64 bin of θ = the angle of (p − centroid of p's instance), y first as in the code, shifted by π/8:
    floor((θ + π/8 + π) bins / 2π) mod bins; −1 on the background."""
    B, H, W = instances.shape
    out = torch.full_like(instances, -1, dtype=torch.int64)
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32, device=instances.device),
                            torch.arange(W, dtype=torch.float32, device=instances.device), indexing="ij")
    for b in range(B):
        ids = instances[b].long()
        n = int(ids.max()) + 1
        if n == 1:
            continue
        flat = ids.flatten()
        count = torch.bincount(flat, minlength=n).clamp_min(1).float()
        cy = torch.bincount(flat, weights=yy.flatten(), minlength=n) / count
        cx = torch.bincount(flat, weights=xx.flatten(), minlength=n) / count
        theta = torch.atan2(yy - cy[ids], xx - cx[ids]) + math.pi / bins            # angle of p − centroid, (H, W)
        k = torch.floor((theta + math.pi) * bins / (2 * math.pi)).long() % bins
        out[b] = torch.where(ids > 0, k, out[b])
    return out


class RecurrentAttention(InstanceModel):
    def __init__(self, image_size: tuple[int, int] = (224, 224), steps: int = 21, layout: str = "cvppp",
                 filter_size: int = 48, iterations: int = 5, phase: str = "full", box_network: bool = True,
                 skip_connections: bool = True, output_masking: bool = True, dynamic_var: bool = False,
                 fixed_gamma: bool = True, preprocess: bool = False, scheduled_sampling: bool = True,
                 box_knob_offset: int = -50000, segm_knob_offset: int = 3000, knob_decay: float = 700.0,
                 knob_timescale: bool = True, mask_noise: float = 0.3, box_centre_noise: float = 0.05,
                 box_pad_noise: float = 0.1, pad_ratio: float = 0.2, pad_min: float = 20.0, greedy_reuse: bool = False,
                 box_weight: float = 1.0, score_weight: float = 1.0, mask_threshold: float = 0.3,
                 score_threshold: float = 0.5, min_size: int = 0, box_gamma_init: float = 4.0, squash: bool = True):
        super().__init__()
        self.squash = squash
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r} unknown; choose one of {', '.join(LAYOUTS)}")
        if phase not in PHASES:
            raise ValueError(f"phase {phase!r} unknown; choose box (pre-train the box network) or full")
        if steps < 1:
            raise ValueError(f"steps (T) must be >= 1, not {steps}")
        if phase == "box" and not box_network:
            raise ValueError("phase=box pre-trains the box network; it cannot be combined with box_network=false")
        L = LAYOUTS[layout]
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.steps, self.K, self.phase = steps, filter_size, phase
        self.layout = layout
        self.use_box_network, self.skip_connections, self.output_masking = box_network, skip_connections, output_masking
        self.dynamic_var, self.fixed_gamma, self.preprocess = dynamic_var, fixed_gamma, preprocess
        self.scheduled_sampling, self.box_knob_offset, self.segm_knob_offset = (scheduled_sampling, box_knob_offset,
                                                                                segm_knob_offset)
        self.knob_decay, self.knob_timescale = knob_decay, knob_timescale
        self.mask_noise, self.box_centre_noise, self.box_pad_noise = mask_noise, box_centre_noise, box_pad_noise
        self.pad_ratio, self.pad_min, self.greedy_reuse = pad_ratio, pad_min, greedy_reuse
        self.box_weight, self.score_weight = box_weight, score_weight
        self.training_step = 0
        extra = 9 if preprocess else 0
        in_ch = 3 + 1 + extra                                              # image, canvas, (fg, 8 angle bins)
        self.fcn = UNet(3, width=16, depth=3, embedding_dim=8, norm="group") if preprocess else None
        box_stride = int(np.prod(L["box_pools"]))
        H, W = self.image_size
        if H % box_stride or W % box_stride:
            raise ValueError(f"image_size {H}x{W} must be a multiple of the {layout} box CNN's stride {box_stride}")
        seg_stride = int(np.prod(L["seg_pools"]))
        if filter_size % seg_stride or seg_stride != int(np.prod(L["dec_unpools"])):
            raise ValueError(f"filter_size {filter_size} must be a multiple of the {layout} segmentation CNN's stride "
                             f"{seg_stride} (which its decoder undoes)")
        self.box = BoxNetwork(in_ch, L["box_depths"], L["box_pools"], steps, (H // box_stride, W // box_stride),
                              iterations) if box_network else None
        self.seg_cnn = ConvStack(in_ch, L["seg_depths"], L["seg_pools"], steps)
        enc = L["seg_depths"]
        # decoder layer i > 0 gets the mirrored encoder layer's output, the last layer the patch (the code's skips)
        skips = (0, *enc[-2::-1], in_ch)[:len(L["dec_depths"])] if skip_connections else None
        self.decoder = DeconvStack(enc[-1], L["dec_depths"], L["dec_unpools"], steps, skips)
        core = enc[-1] * (filter_size // seg_stride) ** 2
        self.hidden = self.box.hidden if box_network else 256
        self.score = nn.Linear(self.hidden + core, 1)
        if box_network:
            nn.init.normal_(self.box.head.weight, std=0.01)               # the code: every weight N(0, 0.01) at start
            nn.init.zeros_(self.box.head.bias)
            # log γ_box starts at 4, not the code's ~0: with pdf filters F_Yᵀ 1 F_X is about 1/((δ+1)/K)² inside the
            # box (0.14 for a full 128-px box), so at γ_box = 1 the box "mask" is sigmoid(0.14 − 5) ≈ 0.008
            # everywhere and Adam at lr 1e-3 needs thousands of steps to raise it; the code trains 60k steps
            self.box.head.bias.data[7] = box_gamma_init
        self.post = {"mask_threshold": mask_threshold, "score_threshold": score_threshold, "min_size": min_size}

    # -- hooks of the engine ---------------------------------------------------------------------------------------
    #: the trainer passes the ground truth to ``forward`` (teacher forcing) and the step (scheduled sampling)
    uses_targets = True

    @property
    def ddp_find_unused_parameters(self) -> bool:
        """The box phase leaves the decoder without gradients (DDP must be told)."""
        return self.phase == "box"

    def set_training_step(self, step: int) -> None:
        self.training_step = int(step)

    def sequence(self, maps: dict[str, np.ndarray]) -> dict | None:
        """The step pictures need the boxes (absent from an exported model's maps)."""
        return {"maps": maps, "kept": self.found_steps(maps["scores"])} if "boxes" in maps else None

    def knob(self, offset: int, t: int) -> float:
        if not self.scheduled_sampling:
            return 0.0
        return knob_probability(self.training_step, offset, self.knob_decay, t, self.knob_timescale)

    # -- forward ---------------------------------------------------------------------------------------------------
    def _at_model_size(self, instances: Tensor) -> Tensor:
        """(B, H0, W0) ids -> (B, H, W) at ``image_size`` (nearest)."""
        if tuple(instances.shape[-2:]) == self.image_size:
            return instances
        return F.interpolate(instances[:, None].float(), self.image_size, mode="nearest")[:, 0].long()

    def _targets(self, instances: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(B, H0, W0) ids -> at the model's size: masks (B, N, H, W), counts (B,), tight boxes (B, N, 4) and the
        padded boxes' masks (B, N, H, W)."""
        gt, counts = gt_masks(self._at_model_size(instances), self.steps)
        tight = mask_boxes(gt, counts, 0.0, 0.0)
        padded = mask_boxes(gt, counts, self.pad_ratio, self.pad_min)
        return gt, counts, tight, box_masks(padded, *self.image_size)

    def _noisy_boxes(self, tight: Tensor) -> Tensor:
        """Ground-truth boxes as teacher forcing feeds them: centre moved by ±``box_centre_noise`` of the size,
        padding ratio ``pad_ratio`` ± ``box_pad_noise`` (at least ``pad_min``). (B, 4) -> (B, 4)."""
        size = torch.stack([tight[:, 2] - tight[:, 0], tight[:, 3] - tight[:, 1]], 1)            # (B, 2)
        centre = torch.stack([tight[:, 2] + tight[:, 0], tight[:, 3] + tight[:, 1]], 1) / 2
        centre = centre + (torch.rand_like(size) * 2 - 1) * self.box_centre_noise * size
        ratio = self.pad_ratio + (torch.rand_like(size) * 2 - 1) * self.box_pad_noise
        size = size + 2 * torch.clamp(ratio * size, min=self.pad_min)     # both sides
        return torch.cat([centre - size / 2, centre + size / 2], 1)

    def forward(self, images: Tensor, targets: Tensor | None = None) -> dict:
        """images (B, 3, H0, W0) -> {"masks": (B, T, H0, W0) y_t in [0, 1], "scores": (B, T) s_t, "boxes":
        (B, T, 4) the attention boxes (y0, x0, y1, x1) in input pixels, "glimpses": (B, T, 3, K, K) the image part of
        each patch}; in training also "box_masks" (B, T, H, W) at the model's size, and with ``targets`` (B, H0, W0)
        ids the ground truth is teacher-forced as the phase and the schedule say."""
        B, _, H0, W0 = images.shape
        H, W = self.image_size
        x = images if (H0, W0) == (H, W) else F.interpolate(images.float(), (H, W), mode="bilinear",
                                                            align_corners=False).to(images.dtype)
        teacher = targets is not None and self.training
        out: dict = {}
        if self.fcn is not None:
            pre = self.fcn(x)
            out["pre_fg"], out["pre_angle"] = pre["fg"], pre["embedding"]   # (B, 1, H, W), (B, 8, H, W) logits
            extra = torch.cat([torch.sigmoid(pre["fg"].float()), torch.softmax(pre["embedding"].float(), 1)], 1)
            extra = extra.detach()
        if teacher:
            gt, counts, tight, gt_box_masks = out["_targets"] = self._targets(targets)
            used = torch.arange(gt.shape[1], device=gt.device)[None] >= counts[:, None]   # (B, N) padding is "used"
        canvas = x.new_zeros((B, 1, H, W), dtype=torch.float32)
        masks, scores, boxes, boxm, glimpses = [], [], [], [], []
        for t in range(self.steps):
            inp = torch.cat([x, canvas.to(x.dtype)] + ([extra.to(x.dtype)] if self.fcn is not None else []), 1)
            if self.box is not None:
                raw, h, _ = self.box(inp, t)                               # (B, 9), (B, 256)
                raw = raw.float()
                if self.squash:                                            # centre in [−1, 1], size <= the image
                    raw = torch.cat([torch.tanh(raw[:, :2]), -F.softplus(-raw[:, 2:4]), raw[:, 4:]], 1)
            else:                                                          # ablation: the whole image as the box
                raw = x.new_zeros((B, 9), dtype=torch.float32)
                h = raw.new_zeros((B, self.hidden))
            if self.fixed_gamma:
                raw = torch.cat([raw[:, :6], raw.new_zeros(B, 1), raw[:, 7:8],
                                 raw.new_full((B, 1), LOG_GAMMA_OUT_FIXED)], 1)
            params = ren_zemel_box_params(raw[:, :7], H, W, self.K, self.dynamic_var)
            Fy, Fx = attention_banks(params, H, W, self.K, "ren_zemel", "pdf")     # (B, K, H), (B, K, W)
            # the box "mask" sigmoid(γ_box F_Yᵀ 1 F_X − 5) of the predicted box: (B, H) ⊗ (B, W) -> (B, H, W);
            # needed by the box loss, the greedy pick and the box phase's output, not at inference
            bm = (torch.sigmoid(torch.exp(raw[:, 7])[:, None, None] * Fy.sum(1)[:, :, None] * Fx.sum(1)[:, None, :]
                                + BETA) if self.training or self.phase == "box" else None)
            box = torch.stack([params.centre_y - params.delta_y / 2, params.centre_x - params.delta_x / 2,
                               params.centre_y + params.delta_y / 2, params.centre_x + params.delta_x / 2], 1)
            if teacher:
                iou = soft_iou(bm[:, None], gt_box_masks)[:, 0]           # (B, N)
                pick = greedy_pick(iou, used)                              # (B,), −1 when none is left
                has = pick >= 0
                idx = pick.clamp_min(0)
                if not self.greedy_reuse:
                    used = used | (F.one_hot(idx, gt.shape[1]).bool() & has[:, None])
                gt_mask = gt[torch.arange(B), idx][:, None] * has[:, None, None, None]        # (B, 1, H, W)
                p_box = self.knob(self.box_knob_offset, t) if self.phase == "full" else 0.0
                force = has & (torch.rand(B, device=x.device) < p_box)
                if force.any():                                            # the noisy ground-truth box instead
                    gbox = self._noisy_boxes(tight[torch.arange(B), idx])  # (B, 4)
                    cy, cx = (gbox[:, 0] + gbox[:, 2]) / 2 - 0.5, (gbox[:, 1] + gbox[:, 3]) / 2 - 0.5
                    dy, dx = gbox[:, 2] - gbox[:, 0], gbox[:, 3] - gbox[:, 1]
                    params.centre_y = torch.where(force, cy, params.centre_y)
                    params.centre_x = torch.where(force, cx, params.centre_x)
                    params.delta_y = torch.where(force, dy, params.delta_y)
                    params.delta_x = torch.where(force, dx, params.delta_x)
                    if not self.dynamic_var:
                        params.sigma2_y, params.sigma2_x = params.delta_y / self.K, params.delta_x / self.K
                    Fy, Fx = attention_banks(params, H, W, self.K, "ren_zemel", "pdf")
            patch = filterbank_read(inp, Fy, Fx, params.gamma)             # P = γ F_Y [x, c] F_Xᵀ, (B, C, K, K)
            patch = patch.to(x.dtype)
            core, acts = self.seg_cnn(patch, t)                            # (B, 32, 6, 6), every layer's output
            s = torch.sigmoid(self.score(torch.cat([h.to(core.dtype), core.flatten(1)], 1)).float())[:, 0]
            if self.phase == "full":
                skips = [None, *acts[-2::-1], patch] if self.skip_connections else None
                p = self.decoder(core, t, skips)                           # (B, 1, K, K), >= 0
                with no_autocast(x.device.type):                           # the write-back in float32
                    y_raw = filterbank_write(p.float(), Fy, Fx)            # ỹ = F_Yᵀ p F_X, (B, 1, H, W)   Eq. 6
                y = torch.sigmoid(torch.exp(raw[:, 8])[:, None, None, None] * y_raw + BETA)          # Eq. 7
                if self.output_masking:
                    y = (1 - canvas) * y
            else:                                                          # box pre-training: no masks
                y = bm[:, None]
            if teacher:
                noisy = gt_mask * (1 - self.mask_noise * torch.rand_like(gt_mask))   # per pixel, as the code
                p_segm = self.knob(self.segm_knob_offset, t) if self.phase == "full" else 1.0
                use_gt = (torch.rand(B, device=x.device) < p_segm)[:, None, None, None]
                new = torch.where(use_gt, noisy, y.detach())
            else:
                new = y.detach()
            canvas = torch.maximum(canvas, new.float())                    # c_t = max(c_{t−1}, ŷ_t), no gradient
            masks.append(y[:, 0])
            scores.append(s)
            boxes.append(box)
            if self.training:
                boxm.append(bm)
            if not self.training:
                glimpses.append(patch[:, :3].float())
        out["masks"] = torch.stack(masks, 1)                              # (B, T, H, W)
        out["scores"] = torch.stack(scores, 1)                            # (B, T)
        out["boxes"] = torch.stack(boxes, 1)                              # (B, T, 4), model pixels
        if self.training:
            out["box_masks"] = torch.stack(boxm, 1)                       # (B, T, H, W)
        else:
            out["glimpses"] = torch.stack(glimpses, 1)                    # (B, T, 3, K, K)
        if (H0, W0) != (H, W):
            if self.training:                                              # the loss is computed at the model's size
                out["masks_model"] = out["masks"]
            out["masks"] = F.interpolate(out["masks"], (H0, W0), mode="bilinear", align_corners=False)
            out["boxes"] = out["boxes"] * out["boxes"].new_tensor([H0 / H, W0 / W, H0 / H, W0 / W])
        return out

    # -- loss ------------------------------------------------------------------------------------------------------
    def loss(self, out: dict, instances: Tensor) -> tuple[Tensor, dict]:
        gt, counts, _, gt_box_masks = out.get("_targets") or self._targets(instances)
        masks = out.get("masks_model", out["masks"])
        if masks.shape[-2:] != gt.shape[-2:]:
            masks = F.interpolate(masks, gt.shape[-2:], mode="bilinear", align_corners=False)
        T = masks.shape[1]
        parts = {}
        iou_b = soft_iou(out["box_masks"], gt_box_masks)                  # (B, T, N)
        l_box = matched_iou_loss(iou_b, hungarian_match(iou_b, counts))
        total = self.box_weight * l_box
        if self.phase == "full":
            iou = soft_iou(masks, gt)                                      # (B, T, N)
            match = hungarian_match(iou, counts)
            l_y = matched_iou_loss(iou, match)                             # Eq. 10
            total = total + l_y
            parts["segm"] = l_y.detach()
            target = match.sum(2)                                          # ŝ_t = 1 iff output t is matched
        else:
            target = (torch.arange(T, device=counts.device)[None] < counts[:, None]).float()
        l_s = monotone_score_loss(out["scores"], target)                   # Eq. 11
        total = total + self.score_weight * l_s
        parts.update(box=l_box.detach(), score=l_s.detach())
        if self.fcn is not None:
            ids = self._at_model_size(instances)
            fg_t = (ids > 0).float()[:, None]
            fg = out["pre_fg"].float()
            l_pre = F.binary_cross_entropy_with_logits(fg, fg_t) + soft_dice_loss(fg, fg_t)
            ang = angle_target(ids)
            if (ang >= 0).any():
                l_pre = l_pre + F.cross_entropy(out["pre_angle"].float(), ang, ignore_index=-1)
            total = total + l_pre
            parts["preprocess"] = l_pre.detach()
        return total, parts

    # -- the instance-model contract -------------------------------------------------------------------------------
    def map_channels(self) -> dict[str, int]:
        return {"masks": self.steps, "scores": self.steps}

    def flat_maps(self, out: dict) -> Tensor:
        """masks (B, T, H, W) and the scores broadcast to (B, T, H, W), one tensor (what ONNX export returns)."""
        m = out["masks"]
        return torch.cat([m, out["scores"][:, :, None, None].to(m.dtype).expand_as(m)], 1)

    def unflat_maps(self, flat: Tensor) -> dict:
        if flat.shape[1] != 2 * self.steps:
            raise ValueError(f"expected {2 * self.steps} channels (masks and scores of {self.steps} steps), got "
                             f"{flat.shape[1]}")
        return {"masks": flat[:, :self.steps], "scores": flat[:, self.steps:, 0, 0]}

    def dense(self, out: dict, b: int = 0) -> dict[str, np.ndarray]:
        maps = {"masks": out["masks"][b].detach().float().cpu().numpy(),
                "scores": out["scores"][b].detach().float().cpu().numpy()}
        for k in ("boxes", "glimpses"):
            if k in out:
                maps[k] = out[k][b].detach().float().cpu().numpy()
        return maps

    def found_steps(self, scores: np.ndarray) -> int:
        """How many steps are kept: up to the first whose score is below ``score_threshold``."""
        below = np.nonzero(np.asarray(scores) < self.post["score_threshold"])[0]
        return int(below[0]) if len(below) else len(scores)

    def group(self, maps: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[int, float]]:
        """Steps up to the first score below ``score_threshold``; each pixel goes to the kept step with the highest
        mask value where that exceeds ``mask_threshold`` (the code's 0.3); the id of an instance is its step + 1;
        instances under ``min_size`` pixels are dropped."""
        masks, scores = maps["masks"], maps["scores"]
        n = self.found_steps(scores)
        ids = np.zeros(masks.shape[1:], np.int32)
        if n == 0:
            return ids, {}
        kept = masks[:n]
        best = kept.argmax(0)
        ids = np.where(kept.max(0) > self.post["mask_threshold"], best + 1, 0).astype(np.int32)
        count = np.bincount(ids.ravel(), minlength=n + 1)
        if self.post["min_size"] > 0:
            small = count < self.post["min_size"]
            small[0] = False
            ids[small[ids]] = 0
            count = np.bincount(ids.ravel(), minlength=n + 1)
        return ids, {k: float(scores[k - 1]) for k in range(1, n + 1) if count[k]}

    def attention_maps(self, maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The canvas after the last kept step (the union of what was found)."""
        n = self.found_steps(maps["scores"])
        m = maps["masks"]
        return {"canvas": m[:n].max(0) if n else np.zeros(m.shape[1:], np.float32)}


def recurrent_attention(num_classes: int = 1, image_size: tuple | list = (224, 224), steps: int = 21,
                        layout: str = "cvppp", filter_size: int = 48, iterations: int = 5, phase: str = "full",
                        box_network: bool = True, skip_connections: bool = True, output_masking: bool = True,
                        dynamic_var: bool = False, fixed_gamma: bool = True, preprocess: bool = False,
                        scheduled_sampling: bool = True, box_knob_offset: int = -50000, segm_knob_offset: int = 3000,
                        knob_decay: float = 700.0, knob_timescale: bool = True, mask_noise: float = 0.3,
                        box_centre_noise: float = 0.05, box_pad_noise: float = 0.1, pad_ratio: float = 0.2,
                        pad_min: float = 20.0, greedy_reuse: bool = False, box_weight: float = 1.0,
                        score_weight: float = 1.0, mask_threshold: float = 0.3, score_threshold: float = 0.5,
                        min_size: int = 0, box_gamma_init: float = 4.0, squash: bool = True) -> RecurrentAttention:
    """Ren & Zemel's recurrent attention model (defaults: the CVPPP column of METHODS §4.2 with the paper's skips
    and output masking). ``image_size`` (H, W): the size the networks run at (inputs are resized to it); ``steps``:
    T, one more than the most objects expected (an image with T or more objects never teaches the stop);
    ``layout``: "cvppp", "kitti" or "nuclei" (``LAYOUTS``); ``phase``: "box" pre-trains the box network, "full"
    trains everything (start it from the box run with ``init_from``); ``box_network=False``: the ablation that
    attends to the whole image at every step; ``iterations``: glimpse-LSTM iterations (1, 3 or 5 in the ablation);
    ``scheduled_sampling=False``: no ground truth fed in the full phase; ``*_knob_offset`` / ``knob_decay``: the
    schedule (CVPPP: box −50000, i.e. never, masks 3000, half-life 700 steps); ``pad_ratio`` / ``pad_min``: each
    side of a ground-truth box grows by max(pad_ratio · size, pad_min) model pixels (the code: 0.2 and 16 + 4 at
    224x224); ``squash``: the box inside the image (see the module docstring); the rest: ``RecurrentAttention``."""
    options = {k: v for k, v in locals().items() if k != "num_classes"}
    if num_classes != 1:
        raise ValueError(f"recurrent_attention segments instances of one class; the data has {num_classes} instance "
                         "classes")
    if not isinstance(image_size, (list, tuple)) or len(image_size) != 2:
        raise ValueError(f"image_size must be [H, W], not {image_size!r}")
    options["image_size"] = (int(image_size[0]), int(image_size[1]))
    return RecurrentAttention(**options)
