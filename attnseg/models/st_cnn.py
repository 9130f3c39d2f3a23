"""ST-CNN: a convolutional classifier with a spatial transformer in front.

Jaderberg, Simonyan, Zisserman, Kavukcuoglu, "Spatial Transformer Networks", NIPS 2015,
https://arxiv.org/abs/1506.02025. No official code was released (the authors' Torch7 layer lives on as
qassemoquab/stnbhwd; PyTorch's tutorial uses ``F.affine_grid`` + ``F.grid_sample``, as ``nn.spatial_transformer``).

    θ = f_loc(U)                      §3.1, initialised to the identity (last layer weights 0, bias [1,0,0,0,1,0])
    (x_s, y_s)ᵀ = A_θ (x_t, y_t, 1)ᵀ  eq. 1, the output grid of ``out_size`` in normalised coordinates
    V = bilinear(U, x_s, y_s)          eq. 5, then the CNN of the baseline (``models.cnn_classifier``) on V

``out_size`` smaller than the input makes the transformer zoom onto the digit (the cluttered-MNIST set-up of the
paper's appendix uses a 60x60 input and a smaller output); ``mode="attention"`` restricts θ to scale + translation.
The localisation net sees the whole input; the paper trains it with a lower learning rate, here ``loc_lr_scale``
is not needed at our budgets (AdamW, grad clipping) and is not implemented.
"""

from __future__ import annotations

import torch

from ..nn.spatial_transformer import SpatialTransformer, sampling_grid
from .classifier_base import ClassifierModel, ConvBody


class STCNN(ClassifierModel):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, out_size: int = 32, mode: str = "affine",
                 widths=(16, 32, 64), hidden: int = 128, loc_hidden: int = 32):
        super().__init__()
        self.in_channels, self.out_size = in_channels, (out_size, out_size)
        self.st = SpatialTransformer(in_channels, self.out_size, mode=mode, hidden=loc_hidden)
        self.body = ConvBody(in_channels, num_classes, tuple(widths), hidden)

    def forward(self, x: torch.Tensor) -> dict:
        v, theta = self.st(x, return_theta=True)                 # (B, C, h, w), (B, 2, 3)
        return {"logits": self.body(v), "theta": theta, "warped": v, "input_size": torch.tensor(x.shape[-2:])}

    def glimpses(self, out: dict, b: int = 0) -> list[dict]:
        H, W = (int(v) for v in out["input_size"])
        grid = sampling_grid(out["theta"][b:b + 1].float(), self.out_size, H, W, self.st.align_corners)[0]
        return [{"step": 0, "kind": "sampling_grid", "points": grid.detach().cpu().numpy(),   # (h, w, 2) pixel (x, y)
                 "patch": out["warped"][b, 0].detach().float().cpu().numpy()}]


def st_cnn(num_classes: int = 10, in_channels: int = 1, out_size: int = 32, mode: str = "affine",
           widths=(16, 32, 64), hidden: int = 128, loc_hidden: int = 32):
    return STCNN(num_classes, in_channels, out_size, mode, widths, hidden, loc_hidden)
