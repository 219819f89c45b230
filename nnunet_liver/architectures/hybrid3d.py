"""Hybrid 3D lesion classifier: dense 3D conv blocks, SE-style channel attention, main + auxiliary head.

Implements "Hybrid 3D Classification Network" of paper.md (Methodology, Figure 2):

- feature extraction: a stem conv, then ``n_blocks`` stages of [dense block -> 1x1 transition -> max pool];
  inside a dense block every 3x3x3 conv layer sees the concatenation of the block input and all previous
  layer outputs (DenseNet);
- 3D channel attention (squeeze-and-excitation): global average pool over every spatial axis -> FC -> ReLU
  -> FC -> sigmoid, one weight per channel multiplied onto the feature map;
- classification head: fully connected layers on the pooled, re-weighted features give one malignancy logit;
  an auxiliary linear layer on the global statistics (the pooled features *before* attention) gives two
  class logits whose softmax is trained with a weighted cross entropy (paper: "for training stability").

The paper gives no widths or depths; the defaults here are ours and are recorded in the docstring of
:class:`HybridLesionNet3D`. Torch only: no nnU-Net imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ChannelAttention",
    "DenseBlock",
    "NoAttention",
    "HybridOutput",
    "HybridLesionNet3D",
    "class_balance_weights",
    "hybrid_loss",
    "gradcam_3d",
]

_NORM_FOR_CONV = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}
_POOL_FOR_CONV = {nn.Conv1d: nn.MaxPool1d, nn.Conv2d: nn.MaxPool2d, nn.Conv3d: nn.MaxPool3d}


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention for any number of spatial axes.

    The squeeze pools over *every* spatial axis (a 2D-style ``x.mean((2, 3))`` on a 3D map would gate each
    slice separately), so the gate is one scalar per (sample, channel) and constant over space.

    Args:
        channels: number of feature channels.
        reduction: bottleneck ratio of the excitation MLP; the hidden width is ``max(channels // reduction,
            min_hidden)``.
        min_hidden: lower bound on the hidden width, so narrow maps keep a usable bottleneck.
    """

    def __init__(self, channels: int, reduction: int = 4, min_hidden: int = 4) -> None:
        super().__init__()
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}")
        hidden = max(channels // reduction, min_hidden)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def weights(self, squeezed: torch.Tensor) -> torch.Tensor:
        """Channel weights from pooled features.

        Args:
            squeezed: (batch, channels), the global average of the feature map.

        Returns:
            (batch, channels) in (0, 1).
        """
        return torch.sigmoid(self.fc2(F.relu(self.fc1(squeezed))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-weight channels.

        Args:
            x: (batch, channels, *spatial).

        Returns:
            The re-weighted map, same shape as ``x``, and the channel weights (batch, channels).
        """
        w = self.weights(x.mean(dim=tuple(range(2, x.ndim))))
        return x * w.view(*w.shape, *([1] * (x.ndim - 2))), w


class NoAttention(nn.Module):
    """Identity stand-in for :class:`ChannelAttention` (ablation): returns ``x`` and all-ones weights."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x.new_ones(x.shape[:2])


class _ConvNormReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int, conv_op: type[nn.Module]) -> None:
        super().__init__(
            conv_op(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            _NORM_FOR_CONV[conv_op](out_channels),
            nn.ReLU(inplace=True),
        )


class DenseBlock(nn.Module):
    """DenseNet block: layer ``i`` sees ``cat(x, y_1, ..., y_{i-1})``; the block returns ``cat(x, y_1..y_L)``.

    Args:
        in_channels: channels of the block input.
        growth: channels added by each layer.
        n_layers: number of 3x3(x3) conv-norm-ReLU layers.
        conv_op: ``nn.Conv3d`` (default) or ``nn.Conv2d``; norm follows from it.
    """

    def __init__(
        self, in_channels: int, growth: int, n_layers: int, *, conv_op: type[nn.Module] = nn.Conv3d
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            _ConvNormReLU(in_channels + i * growth, growth, kernel_size=3, conv_op=conv_op) for i in range(n_layers)
        )
        self.out_channels = in_channels + n_layers * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class _Stage(nn.Module):
    """Dense block -> 1x1 transition (sets the stage width) -> 2x max pool."""

    def __init__(
        self, in_channels: int, out_channels: int, *, growth: int, n_layers: int, conv_op: type[nn.Module]
    ) -> None:
        super().__init__()
        self.dense = DenseBlock(in_channels, growth, n_layers, conv_op=conv_op)
        self.transition = _ConvNormReLU(self.dense.out_channels, out_channels, kernel_size=1, conv_op=conv_op)
        self.pool = _POOL_FOR_CONV[conv_op](kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.transition(self.dense(x)))


@dataclass
class HybridOutput:
    """Outputs of :class:`HybridLesionNet3D`.

    Attributes:
        logit: (batch,) malignancy logit of the main head; ``sigmoid(logit)`` is P(malignant).
        aux_logits: (batch, 2) auxiliary logits [benign, malignant] from the global statistics; apply softmax
            for probabilities (the loss takes logits).
        channel_weights: (batch, C_feat) attention weights in (0, 1); all ones when attention is disabled.
    """

    logit: torch.Tensor
    aux_logits: torch.Tensor
    channel_weights: torch.Tensor


class HybridLesionNet3D(nn.Module):
    """3D lesion malignancy classifier with dense blocks and SE channel attention.

    Layout (defaults, input (B, 1, 64, 64, 64)): stem 3x3x3 conv 1->16 at full resolution; 4 stages, stage
    ``i`` a dense block of 2 layers with growth ``growth * 2**i`` (8, 16, 32, 64), a 1x1 transition to
    ``features * 2**(i+1)`` channels (32, 64, 128, 256) and 2x max pooling, so C_feat = 256 on a 4^3 map;
    channel attention (reduction 4); global average pool; FC 256->64 -> ReLU -> dropout -> FC 64->1.
    The auxiliary branch is a linear 256->2 on the pooled features before attention.

    Args:
        in_channels: 1 (HU-windowed crop) or 2 (crop + lesion mask).
        features: stem width; stage ``i`` outputs ``features * 2**(i+1)`` channels.
        growth: growth rate of the first dense block, doubled at each stage.
        n_blocks: number of stages; each halves the resolution, so the cube side must be divisible by
            ``2**n_blocks``.
        layers_per_block: conv layers per dense block.
        reduction: bottleneck ratio of the channel-attention MLP.
        use_attention: False replaces the attention by the identity (ablation) and reports all-ones weights.
        dropout: dropout before the last FC layer of the main head.
        head_features: hidden width of the main head.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        features: int = 16,
        growth: int = 8,
        n_blocks: int = 4,
        layers_per_block: int = 2,
        reduction: int = 4,
        use_attention: bool = True,
        dropout: float = 0.3,
        head_features: int = 64,
    ) -> None:
        super().__init__()
        if n_blocks < 1 or layers_per_block < 1:
            raise ValueError("n_blocks and layers_per_block must be >= 1")
        self.n_blocks = n_blocks
        self.stem = _ConvNormReLU(in_channels, features, kernel_size=3, conv_op=nn.Conv3d)
        stages, channels = [], features
        for i in range(n_blocks):
            out = features * 2 ** (i + 1)
            stages.append(
                _Stage(channels, out, growth=growth * 2**i, n_layers=layers_per_block, conv_op=nn.Conv3d)
            )
            channels = out
        self.stages = nn.ModuleList(stages)
        self.feature_channels = channels
        self.attention = ChannelAttention(channels, reduction=reduction) if use_attention else NoAttention()
        self.head = nn.Sequential(
            nn.Linear(channels, head_features),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(head_features, 1),
        )
        self.aux_head = nn.Linear(channels, 2)

    @property
    def gradcam_layer(self) -> nn.Module:
        """Last conv feature map (the final transition, before its pooling): Grad-CAM hooks here."""
        return self.stages[-1].transition

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_channels, D, H, W) -> (batch, C_feat, D / 2**n_blocks, H / ..., W / ...)."""
        factor = 2**self.n_blocks
        if x.ndim != 5 or any(s % factor for s in x.shape[2:]):
            raise ValueError(f"expected (B, C, D, H, W) with sides divisible by {factor}, got {tuple(x.shape)}")
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> HybridOutput:
        """Classify lesion crops.

        Args:
            x: (batch, in_channels, D, H, W), sides divisible by ``2**n_blocks``.

        Returns:
            :class:`HybridOutput` with logit (batch,), aux_logits (batch, 2), channel_weights (batch, C_feat).
        """
        feats = self.forward_features(x)
        pooled = feats.mean(dim=(2, 3, 4))  # global statistics for the aux branch (before attention)
        refined, weights = self.attention(feats)
        return HybridOutput(
            logit=self.head(refined.mean(dim=(2, 3, 4))).squeeze(-1),
            aux_logits=self.aux_head(pooled),
            channel_weights=weights,
        )


def class_balance_weights(labels: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss weights from the class balance of a training fold.

    Args:
        labels: binary labels (0 benign, 1 malignant) of the training lesions.

    Returns:
        ``pos_weight = n_neg / n_pos`` (scalar tensor, for the BCE on the main logit) and
        ``class_weights = n / (2 * n_c)`` (shape (2,), "balanced" weights for the aux cross entropy). Their
        ratio ``class_weights[1] / class_weights[0]`` equals ``pos_weight``.

    Raises:
        ValueError: when a class is absent or labels are not 0/1.
    """
    y = torch.as_tensor(labels).flatten()
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("labels must be 0 or 1")
    n_pos = int((y == 1).sum())
    n_neg = int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"both classes are needed for class weights, got {n_neg} negatives and {n_pos} positives")
    n = n_pos + n_neg
    pos_weight = torch.tensor(n_neg / n_pos, dtype=torch.float32)
    class_weights = torch.tensor([n / (2 * n_neg), n / (2 * n_pos)], dtype=torch.float32)
    return pos_weight, class_weights


def hybrid_loss(
    output: HybridOutput,
    target: torch.Tensor,
    pos_weight: float | torch.Tensor | None,
    aux_weight: float = 0.3,
) -> torch.Tensor:
    """Weighted BCE on the main logit plus ``aux_weight`` times weighted CE on the auxiliary branch.

    The aux class weights are ``[1, pos_weight]``: proportional to :func:`class_balance_weights`'s
    ``class_weights``, and cross entropy's weighted mean is invariant to that scale, so both give the same loss.

    Args:
        output: network output.
        target: (batch,) labels in {0, 1}.
        pos_weight: n_neg / n_pos of the training fold; None for unweighted losses.
        aux_weight: weight of the auxiliary term; 0 disables it.

    Returns:
        Scalar loss (batch mean of each term).
    """
    logit = output.logit
    target = target.reshape(logit.shape)
    pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=logit.dtype, device=logit.device)
    loss = F.binary_cross_entropy_with_logits(logit, target.to(logit.dtype), pos_weight=pw)
    if aux_weight:
        cw = None if pw is None else torch.stack([torch.ones_like(pw), pw])
        loss = loss + aux_weight * F.cross_entropy(output.aux_logits, target.long(), weight=cw)
    return loss


def gradcam_3d(model: HybridLesionNet3D, x: torch.Tensor, target: str = "logit") -> torch.Tensor:
    """Grad-CAM heat map at the last conv feature map, upsampled to the input grid.

    The model runs in eval mode (batch-norm running statistics, no dropout) and its training flag is restored
    afterwards; the hook is removed and no parameter ``.grad`` is touched (``torch.autograd.grad``).

    Args:
        model: network exposing ``gradcam_layer``.
        x: (batch, in_channels, D, H, W).
        target: ``"logit"`` (malignancy logit of the main head) or ``"aux"`` (malignant logit of the aux branch).

    Returns:
        (batch, D, H, W) in [0, 1], each sample scaled by its maximum; all zeros where no location has a
        positive contribution.
    """
    if target not in ("logit", "aux"):
        raise ValueError(f"target must be 'logit' or 'aux', got {target!r}")
    captured: list[torch.Tensor] = []
    handle = model.gradcam_layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad():
            out = model(x)
            score = out.logit if target == "logit" else out.aux_logits[:, 1]
            (activation,) = captured
            (grad,) = torch.autograd.grad(score.sum(), activation)
    finally:
        handle.remove()
        model.train(was_training)
    activation = activation.detach()
    alpha = grad.mean(dim=(2, 3, 4), keepdim=True)
    cam = F.relu((alpha * activation).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[2:], mode="trilinear", align_corners=False)[:, 0]
    peak = cam.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))
