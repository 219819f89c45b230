"""Compute cost of a segmentation network per output voxel."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops_per_voxel"]


def count_flops_per_voxel(net: nn.Module, patch_size: Sequence[int], input_channels: int = 1,
                          device: torch.device | str = "meta") -> float:
    """Forward FLOPs of one eval-mode pass on a (1, input_channels, *patch_size) input, per output voxel.

    Counts what `torch.utils.flop_counter.FlopCounterMode` counts: convolutions, transposed convolutions and
    matrix products (2 FLOPs per multiply-add); norms, activations, pooling and interpolation are not counted.
    With deep supervision on, the voxels of the first (full-resolution) output are used.

    Args:
        net: the network; it is not modified (a copy is moved to `device`).
        patch_size: spatial input size.
        input_channels: channels of the input.
        device: where to run. "meta" counts from shapes alone, without computing anything.
    """
    model = copy.deepcopy(net).to(device).eval()
    x = torch.zeros(1, input_channels, *patch_size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(x)
    if isinstance(out, (list, tuple)):
        out = out[0]
    return counter.get_total_flops() / math.prod(out.shape[2:])
