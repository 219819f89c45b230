"""Instance normalisation of a 2.5D stream over every slice of its patch.

The 2.5D spatial stream runs its 2D layers on the patch's slices as a batch of B x S images. A 2D instance norm
takes its statistics from one slice: where one structure fills most of a slice (a large cyst in a field of view
cropped to the liver) its features are normalised against themselves, and the stream draws such a lesion as a
rim around a hole. ``PatchInstanceNorm2d`` takes each channel's statistics over all S slices of one sample, as
the 3D U-Net's ``InstanceNorm3d`` does over its patch, and behaves the same in training and evaluation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PatchInstanceNorm2d"]


class PatchInstanceNorm2d(nn.Module):
    """Instance norm of (B * S, C, H, W) slices with statistics per sample and channel over its S slices.

    ``batch`` (B) is set by the network before each forward (``DualStreamAttentionNet`` does); with B = B * S
    (one slice per sample) it is a 2D instance norm. Arguments as ``nn.InstanceNorm2d``'s; the statistics are
    always the input's own (no running statistics), computed in float32.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = None, affine: bool = True,
                 track_running_stats: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        if track_running_stats:
            raise ValueError("PatchInstanceNorm2d keeps no running statistics")
        self.num_features = num_features
        self.eps = eps
        self.affine = affine
        self.batch: int | None = None
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        if self.batch is None:
            raise RuntimeError("PatchInstanceNorm2d.batch is not set: the network sets it before each forward")
        n, c, h, w = x.shape
        if n % self.batch:
            raise ValueError(f"{n} slices do not split into {self.batch} samples")
        v = x.float().reshape(self.batch, n // self.batch, c, h * w)
        var, mean = torch.var_mean(v, dim=(1, 3), unbiased=False, keepdim=True)
        y = (v - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight.float().view(1, 1, c, 1) + self.bias.float().view(1, 1, c, 1)
        return y.reshape(n, c, h, w).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"
