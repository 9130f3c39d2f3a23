"""Batch normalisation with statistics over all processes, for CPU (gloo) training.

torch's ``nn.SyncBatchNorm`` only runs on CUDA (DDP rejects it on CPU modules: "SyncBatchNorm layers only work with
GPU modules"). This layer computes the per-channel sum and sum of squares locally, adds them over processes with
a differentiable all-reduce, and normalises with the global mean and (biased) variance, so N processes of batch
b behave like one process of batch N·b. The backward pass of the all-reduce sums the gradients that reach each
process's statistics, which is the gradient of the sum of the processes' losses; DDP's averaging then gives
the gradient of the global mean loss. Statistics are accumulated in fp32.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class DistributedBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        C = x.shape[1]
        xf = x.float()
        local = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)),
                           torch.full((1,), x.numel() / C, device=x.device)])   # (2C + 1,)
        total = all_reduce(local)                                               # summed over processes
        count = total[-1]
        mean = total[:C] / count
        var = (total[C:2 * C] / count - mean * mean).clamp_min(0)
        with torch.no_grad():
            if self.track_running_stats:
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1).clamp_min(1), alpha=m)
        shape = (1, C, 1, 1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module, cuda: bool) -> nn.Module:
    """Every BatchNorm2d -> nn.SyncBatchNorm (CUDA) or DistributedBatchNorm2d (CPU), sharing parameters."""
    if cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, DistributedBatchNorm2d):
        out = DistributedBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                     module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias   # the same Parameters: the optimiser keeps them
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_batchnorm(child, cuda))
    return out
