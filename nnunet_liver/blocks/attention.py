"""Channel, spatial and CBAM attention and attention gates, one implementation for 2D and 3D.

Pooling runs over every spatial axis (`dim=tuple(range(2, x.ndim))`); convolutions take their dimension from
`conv_op`. `channels` is the first argument of every module.

References:
    Squeeze-and-excitation: Hu et al., CVPR 2018. w = sigmoid(MLP(avgpool F)), F' = w * F.
    CBAM: Woo et al., ECCV 2018. Mc = sigmoid(MLP(avgpool F) + MLP(maxpool F)), F' = Mc * F;
        Ms = sigmoid(conv7([mean_c F'; max_c F'])), F'' = Ms * F'.
    Attention gate: Oktay et al., MIDL 2018. alpha = sigmoid(psi(relu(Wx x + Wg g + b))).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import maybe_convert_scalar_to_list
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

__all__ = ["AttentionGate", "CBAM", "ChannelAttention", "SpatialAttention"]

_LINEAR_MODE = {3: "linear", 4: "bilinear", 5: "trilinear"}


def _spatial_dims(x: Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


class ChannelAttention(nn.Module):
    """Channel attention: one weight per (sample, channel), shared over all spatial positions.

    ``use_max=True`` is CBAM's (a shared MLP on the average- and the max-pooled features, summed);
    ``use_max=False`` is squeeze-and-excitation (Hu et al., CVPR 2018: the average only), which the hybrid
    lesion classifier uses. Both pool over every spatial axis, so a 3D map gets one weight per channel, not
    one per slice.

    Args:
        channels: feature channels C of x.
        reduction: hidden width of the shared MLP is C // reduction ...
        min_hidden: ... but at least this many units, so narrow layers keep a usable bottleneck.
        use_max: add the MLP of the max-pooled features (CBAM) to that of the average (SE).
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8, use_max: bool = True) -> None:
        super().__init__()
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}")
        hidden = max(channels // reduction, min_hidden)
        self.use_max = use_max
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def attention(self, x: Tensor) -> Tensor:
        """x: (batch, channels, *spatial). Returns weights in (0, 1), (batch, channels, 1, ..., 1)."""
        dims = _spatial_dims(x)
        logits = self.mlp(x.mean(dim=dims))
        if self.use_max:  # max(...).values, not amax: the same value, and a backward pass 3x faster on CPU
            logits = logits + self.mlp(x.flatten(2).max(dim=2).values)
        return torch.sigmoid(logits).view(*logits.shape, *([1] * len(dims)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: a conv over [mean over channels; max over channels], then sigmoid.

    Args:
        channels: feature channels of x (unused by the math; kept so every attention module is built alike).
        conv_op: nn.Conv2d or nn.Conv3d; sets the dimension.
        kernel_size: int or one size per spatial axis (7 gives CBAM's 7x7 / 7x7x7).
    """

    def __init__(self, channels: int, conv_op: type[_ConvNd], kernel_size: int | Sequence[int] = 7) -> None:
        super().__init__()
        self.channels = channels
        kernel_size = maybe_convert_scalar_to_list(conv_op, kernel_size)
        self.conv = conv_op(2, 1, kernel_size=kernel_size, padding=[(k - 1) // 2 for k in kernel_size], bias=True)

    def attention(self, x: Tensor) -> Tensor:
        """x: (batch, channels, *spatial). Returns weights in (0, 1), (batch, 1, *spatial)."""
        pooled = torch.cat((x.mean(dim=1, keepdim=True), x.max(dim=1, keepdim=True).values), dim=1)
        return torch.sigmoid(self.conv(pooled))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)


class CBAM(nn.Module):
    """Channel attention, then spatial attention on the channel-refined features."""

    def __init__(self, channels: int, conv_op: type[_ConvNd], reduction: int = 16, min_hidden: int = 8,
                 spatial_kernel_size: int | Sequence[int] = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction=reduction, min_hidden=min_hidden)
        self.spatial = SpatialAttention(channels, conv_op, kernel_size=spatial_kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))


class AttentionGate(nn.Module):
    """Attention gate on a skip connection, combined with CBAM.

    out = CBAM(x) * alpha,  alpha = up(sigmoid(psi(relu(Wx x + Wg g + b)))).

    CBAM reweights the skip's channels and positions from the skip itself; alpha, computed from the raw skip and
    the coarser decoder feature g, suppresses positions that the decoder's context deems irrelevant. The
    decoder then concatenates `out` with its upsampled feature.

    With ``stride`` (the gate of Oktay et al.): Wx is a strided convolution (kernel = stride) that brings x to
    g's resolution; the additive attention and psi run there and only the one-channel alpha is interpolated
    (bi/trilinear) to x's size. Without it (``stride=None``): Wx is 1x1 at x's resolution and Wg g is
    interpolated up to it (for a 1x1 conv the same as Wg up(g) + b), which costs an ``intermediate_channels``
    map at full resolution forward and backward (measured on CPU: ~25 % of the gate's step at 16 x 256^2).

    Args:
        channels: channels of the skip x.
        gating_channels: channels of the gating signal g.
        conv_op: nn.Conv2d or nn.Conv3d.
        stride: int or one per spatial axis, the resolution step from x to g; None for full-resolution gating.
        intermediate_channels: width of the additive attention; default channels // 2 (Oktay et al.), at least 1.
        use_cbam: if False, out = x * alpha (the plain Oktay gate).
        reduction, min_hidden, spatial_kernel_size: passed to CBAM.
    """

    def __init__(self, channels: int, gating_channels: int, conv_op: type[_ConvNd],
                 stride: int | Sequence[int] | None = None, intermediate_channels: int | None = None,
                 use_cbam: bool = True, reduction: int = 16, min_hidden: int = 8,
                 spatial_kernel_size: int | Sequence[int] = 7) -> None:
        super().__init__()
        inter = intermediate_channels if intermediate_channels is not None else max(channels // 2, 1)
        self.stride = None if stride is None else [int(v) for v in maybe_convert_scalar_to_list(conv_op, stride)]
        if self.stride is not None and any(v < 1 for v in self.stride):
            raise ValueError(f"stride must be >= 1 on every axis, got {self.stride}")
        step = self.stride or 1
        self.theta_x = conv_op(channels, inter, kernel_size=step, stride=step, bias=False)
        self.phi_g = conv_op(gating_channels, inter, kernel_size=1, bias=True)
        self.psi = conv_op(inter, 1, kernel_size=1, bias=True)
        self.cbam = CBAM(channels, conv_op, reduction=reduction, min_hidden=min_hidden,
                         spatial_kernel_size=spatial_kernel_size) if use_cbam else nn.Identity()

    def attention(self, x: Tensor, g: Tensor) -> Tensor:
        """x: (batch, channels, *spatial); g: (batch, gating_channels, *coarser_spatial).

        Returns alpha in (0, 1), (batch, 1, *spatial): the gate's map (for heatmaps).
        """
        mode = _LINEAR_MODE[x.ndim]
        theta, phi = self.theta_x(x), self.phi_g(g)
        if phi.shape[2:] != theta.shape[2:]:  # full-resolution gating, or sizes that the stride does not divide
            phi = F.interpolate(phi, size=theta.shape[2:], mode=mode, align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(theta + phi)))
        if alpha.shape[2:] != x.shape[2:]:
            alpha = F.interpolate(alpha, size=x.shape[2:], mode=mode, align_corners=False)
        return alpha

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        """Returns the gated skip, x's shape: CBAM(x) * alpha, with CBAM's spatial map and alpha (one channel
        each) multiplied first, so that one full-size product is computed and stored instead of two."""
        alpha = self.attention(x, g)
        if isinstance(self.cbam, CBAM):
            refined = self.cbam.channel(x)
            return refined * (self.cbam.spatial.attention(refined) * alpha)
        return x * alpha
