"""The contextual stream: a 3D encoder over the whole patch at lower resolution, with a global-context
vector and a top-down path back to its finest stage (feature-pyramid style).

    x (B, C, Z, Y, X) -> average pool (pz, py, px) -> plain 3D conv encoder (nnU-Net's PlainConvEncoder,
    strides per stage) -> bottleneck + MLP(global average of the bottleneck), broadcast (PSPNet's image-level
    pooling: every position sees the whole patch) -> top-down: from the bottleneck up, upsample (trilinear)
    and add a 1x1 lateral projection of each encoder stage -> conv-norm-nonlin at the pooled resolution
    -> (B, out_channels, Z / pz, Y / py, X / px)

The output stays at the pooled resolution; the dual-stream network projects it with a 1x1 conv and
upsamples it to full resolution where it fuses (see `DualStreamAttentionNet`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from torch import Tensor, nn

__all__ = ["ContextStream"]


class ContextStream(nn.Module):
    """3D encoder + global context + top-down path, at a pooled resolution.

    Args:
        in_channels: channels of x.
        features_per_stage: encoder widths, highest resolution first.
        strides: per stage (z, y, x); the first is usually (1, 1, 1).
        out_channels: width of the top-down path and of the output.
        pool: average-pool factor (z, y, x) applied to x first.
        kernel_sizes: int or per stage (z, y, x).
        n_conv_per_stage: convs per encoder stage.
        global_context: add the MLP of the bottleneck's global average (the whole patch) to every bottleneck
            position.
        conv_kwargs: conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs
            (3D ops).
    """

    def __init__(self, in_channels: int, features_per_stage: Sequence[int], strides: Sequence[Sequence[int]],
                 out_channels: int, *, pool: Sequence[int] = (1, 4, 4),
                 kernel_sizes: int | Sequence[int | Sequence[int]] = 3, n_conv_per_stage: int = 2,
                 global_context: bool = True, conv_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        if len(features_per_stage) != len(strides):
            raise ValueError(f"context_features_per_stage {list(features_per_stage)} and context_strides "
                             f"{[list(s) for s in strides]} need one entry per stage")
        pool = [int(p) for p in pool]
        if len(pool) != 3 or min(pool) < 1:
            raise ValueError(f"context pool must be three factors >= 1 (z, y, x), got {pool}")
        kw = dict(conv_kwargs or {})
        self.pool = nn.AvgPool3d(pool, pool) if max(pool) > 1 else nn.Identity()
        self.encoder = PlainConvEncoder(
            in_channels, len(features_per_stage), list(features_per_stage), nn.Conv3d, kernel_sizes,
            [list(s) for s in strides], n_conv_per_stage, kw.get("conv_bias", False), kw.get("norm_op"),
            kw.get("norm_op_kwargs"), kw.get("dropout_op"), kw.get("dropout_op_kwargs"), kw.get("nonlin"),
            kw.get("nonlin_kwargs"), return_skips=True)
        deepest = features_per_stage[-1]
        self.global_context = nn.Sequential(
            nn.Linear(deepest, deepest), nn.ReLU(inplace=True), nn.Linear(deepest, deepest)) if global_context else None
        self.lateral = nn.ModuleList(nn.Conv3d(f, out_channels, 1) for f in features_per_stage)
        self.smooth = ConvDropoutNormReLU(
            nn.Conv3d, out_channels, out_channels, 3, 1, kw.get("conv_bias", False), kw.get("norm_op"),
            kw.get("norm_op_kwargs") or {}, None, None, kw.get("nonlin"), kw.get("nonlin_kwargs") or {})
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, Z, Y, X). Returns (B, out_channels, *pooled size of x)."""
        skips = self.encoder(self.pool(x))
        bottom = skips[-1]
        if self.global_context is not None:
            dims = tuple(range(2, bottom.ndim))
            vector = self.global_context(bottom.mean(dim=dims))
            bottom = bottom + vector.view(*vector.shape, *([1] * len(dims)))
        y = self.lateral[-1](bottom)
        for skip, lateral in zip(skips[-2::-1], list(self.lateral)[-2::-1]):
            y = lateral(skip) + F.interpolate(y, size=skip.shape[2:], mode="trilinear", align_corners=False)
        return self.smooth(y)
