"""The discriminative loss for instance embeddings: pull each pixel towards its instance's mean, push the means of
different instances apart, keep the means near the origin.

De Brabandere, Neven, Van Gool, "Semantic Instance Segmentation with a Discriminative Loss Function", CVPR
Workshops 2017, https://arxiv.org/abs/1708.02551. The paper's Eq. 1 is followed (no official code was located
for this module; public re-implementations differ in how they weight the pull term). For one image with C
instances, pixel embeddings x_i and instance means μ_c (Eq. 1):

    L_var  = 1/C Σ_c 1/N_c Σ_{i∈c} [‖μ_c − x_i‖ − δ_v]_+²              pull (δ_v = 0.5)
    L_dist = 1/(C(C−1)) Σ_{cA≠cB} [2δ_d − ‖μ_cA − μ_cB‖]_+²           push (δ_d = 1.5)
    L_reg  = 1/C Σ_c ‖μ_c‖                                             regulariser
    L = α L_var + β L_dist + γ L_reg,   α = β = 1, γ = 0.001

Background pixels (id 0) and ``ignore`` pixels take no part. An image without instances contributes 0, one with a
single instance no push term. The batch loss is the mean over images. Norms are L2 (the paper's choice).
"""

from __future__ import annotations

import torch


def discriminative_loss(emb: torch.Tensor, ids: torch.Tensor, delta_v: float = 0.5, delta_d: float = 1.5,
                        alpha: float = 1.0, beta: float = 1.0, gamma: float = 0.001,
                        ignore: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """emb (B, D, H, W), ids (B, H, W) int (0 = background) -> (loss, {"var", "dist", "reg"} batch means)."""
    if emb.dim() != 4 or ids.shape != (emb.shape[0], *emb.shape[2:]):
        raise ValueError(f"embeddings must be (B, D, H, W) and ids (B, H, W) of the same B, H, W; got "
                         f"{tuple(emb.shape)} and {tuple(ids.shape)}")
    parts = {"var": [], "dist": [], "reg": []}
    for b in range(emb.shape[0]):
        x = emb[b].flatten(1).t()                                      # (HW, D)
        lab = ids[b].flatten()
        keep = lab > 0 if ignore is None else (lab > 0) & ~ignore[b].flatten()
        x, lab = x[keep], lab[keep]
        zero = emb.sum() * 0                                           # keeps the graph and dtype
        if lab.numel() == 0:
            for k in parts:
                parts[k].append(zero)
            continue
        _, inv = torch.unique(lab, return_inverse=True)                # (n,) instance index 0..C-1
        C = int(inv.max()) + 1
        counts = torch.bincount(inv, minlength=C).to(x.dtype)          # (C,)
        mu = torch.zeros(C, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, inv, x) / counts[:, None]
        pull = (torch.linalg.vector_norm(x - mu[inv], dim=1) - delta_v).clamp(min=0) ** 2     # (n,)
        var = (torch.zeros(C, dtype=x.dtype, device=x.device).index_add_(0, inv, pull) / counts).mean()
        if C > 1:
            d = torch.linalg.vector_norm(mu[:, None] - mu[None], dim=2)                      # (C, C)
            off = ~torch.eye(C, dtype=torch.bool, device=x.device)
            dist = ((2 * delta_d - d[off]).clamp(min=0) ** 2).mean()
        else:
            dist = zero
        parts["var"].append(var)
        parts["dist"].append(dist)
        parts["reg"].append(torch.linalg.vector_norm(mu, dim=1).mean())
    means = {k: torch.stack(v).mean() for k, v in parts.items()}
    return alpha * means["var"] + beta * means["dist"] + gamma * means["reg"], means
