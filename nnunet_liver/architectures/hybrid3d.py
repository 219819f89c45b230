"""Hybrid 3D lesion classifier: dense 3D conv blocks with channel attention inside, main + auxiliary head.

Implements "Hybrid 3D Classification Network" of paper.md (Methodology, Figure 2):

- feature extraction: a stem conv, then ``n_blocks`` stages of [dense block -> attention -> 1x1 transition ->
  max pool]; inside a dense block every 3x3x3 conv layer sees the concatenation of the block input and all
  previous layer outputs (DenseNet);
- 3D channel attention (squeeze-and-excitation, ``blocks.attention.ChannelAttention`` with ``use_max=False``):
  global average pool over every spatial axis -> FC -> ReLU -> FC -> sigmoid, one weight per channel, in every
  stage on the dense block's output, so the transition conv and every later stage see re-weighted feature maps.
  (A gate right before global average pooling would re-weight nothing spatial: GAP(x * w) = w * GAP(x), a
  linear layer the head could learn itself.) Optionally CBAM-style spatial attention after it
  (``spatial_attention``): one weight per voxel from a conv over the channel mean and max;
- classification head: fully connected layers on the globally pooled features give one malignancy logit; an
  auxiliary linear layer on the same global statistics gives two class logits whose softmax is trained with a
  weighted cross entropy (paper: "for training stability").

The no-attention ablation (``use_attention=False``) has no attention module at all: the dense block feeds the
transition directly. The paper gives no widths or depths; the defaults here are ours and are recorded in the
docstring of :class:`HybridLesionNet3D`. Torch only: no nnU-Net imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_liver.blocks.attention import ChannelAttention, SpatialAttention

__all__ = [
    "DenseBlock",
    "HybridLesionNet3D",
    "HybridOutput",
    "HybridStage",
    "class_balance_weights",
    "gradcam_3d",
    "hybrid_loss",
]

_NORM_FOR_CONV = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}
_POOL_FOR_CONV = {nn.Conv1d: nn.MaxPool1d, nn.Conv2d: nn.MaxPool2d, nn.Conv3d: nn.MaxPool3d}


class _ConvNormReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int, conv_op: type[nn.Module],
                 stride: int = 1) -> None:
        super().__init__(
            conv_op(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
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


class HybridStage(nn.Module):
    """Dense block -> channel attention (-> spatial attention) -> 1x1 transition (sets the width) -> 2x max pool.

    The attention re-weights the dense block's output before the transition conv, so the gate changes what the
    following convolutions see. ``attended`` (an identity) marks the attended map: Grad-CAM and the attention
    figure hook there, and in the ablation it is the same place in the network.

    Args:
        in_channels, out_channels: stage input and output (after the transition) widths.
        growth, n_layers: of the dense block.
        conv_op: ``nn.Conv3d`` or ``nn.Conv2d``.
        use_attention: False: no attention module (ablation).
        spatial_attention: add spatial attention after the channel attention.
        reduction: bottleneck ratio of the channel-attention MLP (hidden width at least 4).
        spatial_kernel_size: kernel of the spatial-attention conv.
    """

    def __init__(self, in_channels: int, out_channels: int, *, growth: int, n_layers: int,
                 conv_op: type[nn.Module] = nn.Conv3d, use_attention: bool = True, spatial_attention: bool = False,
                 reduction: int = 4, spatial_kernel_size: int = 7) -> None:
        super().__init__()
        self.dense = DenseBlock(in_channels, growth, n_layers, conv_op=conv_op)
        c = self.dense.out_channels
        self.channel_attention = (ChannelAttention(c, reduction=reduction, min_hidden=4, use_max=False)
                                  if use_attention else None)
        self.spatial_attention = (SpatialAttention(c, conv_op, kernel_size=spatial_kernel_size)
                                  if use_attention and spatial_attention else None)
        self.attended = nn.Identity()
        self.transition = _ConvNormReLU(c, out_channels, kernel_size=1, conv_op=conv_op)
        self.pool = _POOL_FOR_CONV[conv_op](kernel_size=2, stride=2)

    def forward_unpooled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (batch, in_channels, *spatial) -> ((batch, out_channels, *spatial), the transition's output
        before pooling; channel weights (batch, dense channels) or None without attention)."""
        x = self.dense(x)
        weights = None
        if self.channel_attention is not None:
            w = self.channel_attention.attention(x)
            x = x * w
            weights = w.flatten(1)
        if self.spatial_attention is not None:
            x = self.spatial_attention(x)
        return self.transition(self.attended(x)), weights

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (batch, in_channels, *spatial) -> ((batch, out_channels, *spatial / 2), channel weights)."""
        y, weights = self.forward_unpooled(x)
        return self.pool(y), weights


@dataclass
class HybridOutput:
    """Outputs of :class:`HybridLesionNet3D`.

    Attributes:
        logit: (batch,) malignancy logit of the main head; ``sigmoid(logit)`` is P(malignant).
        aux_logits: (batch, 2) auxiliary logits [benign, malignant] from the global statistics; apply softmax
            for probabilities (the loss takes logits).
        channel_weights: one (batch, C_i) tensor of channel-attention weights in (0, 1) per stage (C_i: the
            stage's dense-block width); empty without attention.
    """

    logit: torch.Tensor
    aux_logits: torch.Tensor
    channel_weights: tuple[torch.Tensor, ...]


class HybridLesionNet3D(nn.Module):
    """3D lesion malignancy classifier with dense blocks and SE channel attention in every stage.

    Layout (defaults, input (B, 1, 64, 64, 64)): stem 3x3x3 conv 1->16 at full resolution; 4 stages, stage
    ``i`` a dense block of 2 layers with growth ``growth * 2**i`` (8, 16, 32, 64; block outputs 32, 64, 128,
    256 channels), channel attention on the block output (reduction 4), a 1x1 transition to
    ``features * 2**(i+1)`` channels (32, 64, 128, 256) and 2x max pooling, so C_feat = 256 on a 4^3 map;
    global average pool; FC 256->64 -> ReLU -> dropout -> FC 64->1. The auxiliary branch is a linear 256->2
    on the same pooled features.

    Args:
        in_channels: 1 (HU-windowed crop) or 2 (crop + lesion mask).
        features: stem width; stage ``i`` outputs ``features * 2**(i+1)`` channels.
        growth: growth rate of the first dense block, doubled at each stage.
        n_blocks: number of stages; each halves the resolution.
        layers_per_block: conv layers per dense block.
        reduction: bottleneck ratio of the channel-attention MLPs.
        use_attention: False removes every attention module (ablation).
        spatial_attention: spatial attention after each channel attention.
        spatial_kernel_size: kernel of the spatial-attention convs.
        dropout: dropout before the last FC layer of the main head.
        head_features: hidden width of the main head.
        stem_stride: stride of the stem conv (2 halves the resolution once more before the first stage:
            about 8x cheaper, for CPU budgets); the cube side must be divisible by ``stem_stride *
            2**n_blocks``.
        lesion_pooling: with ``in_channels=2`` (the second channel is the lesion mask), the heads also see
            every stage's transition output (before its pooling) averaged over the lesion (the mask
            average-pooled to that grid as weights), beside the global average of the last stage. A small lesion is a few voxels of the crop:
            the global average dilutes it, and the last map is too coarse to single it out.
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
        spatial_attention: bool = False,
        spatial_kernel_size: int = 7,
        dropout: float = 0.3,
        head_features: int = 64,
        stem_stride: int = 1,
        lesion_pooling: bool = False,
    ) -> None:
        super().__init__()
        if n_blocks < 1 or layers_per_block < 1 or stem_stride < 1:
            raise ValueError("n_blocks, layers_per_block and stem_stride must be >= 1")
        if lesion_pooling and in_channels != 2:
            raise ValueError("lesion_pooling needs the lesion mask as the second input channel (in_channels=2)")
        self.lesion_pooling = lesion_pooling
        self.n_blocks = n_blocks
        self.input_multiple = stem_stride * 2**n_blocks
        self.stem = _ConvNormReLU(in_channels, features, kernel_size=3, conv_op=nn.Conv3d, stride=stem_stride)
        stages, channels = [], features
        for i in range(n_blocks):
            out = features * 2 ** (i + 1)
            stages.append(HybridStage(channels, out, growth=growth * 2**i, n_layers=layers_per_block,
                                      conv_op=nn.Conv3d, use_attention=use_attention,
                                      spatial_attention=spatial_attention, reduction=reduction,
                                      spatial_kernel_size=spatial_kernel_size))
            channels = out
        self.stages = nn.ModuleList(stages)
        self.feature_channels = channels
        pooled = channels + (sum(features * 2 ** (i + 1) for i in range(n_blocks)) if lesion_pooling else 0)
        self.head = nn.Sequential(
            nn.Linear(pooled, head_features),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(head_features, 1),
        )
        self.aux_head = nn.Linear(pooled, 2)

    @property
    def gradcam_layer(self) -> nn.Module:
        """The attended map of the last stage (its attention output, the input of its transition conv); in the
        ablation the same place, the dense block's output. Grad-CAM and the attention figure hook here."""
        return self.stages[-1].attended

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or any(s % self.input_multiple for s in x.shape[2:]):
            raise ValueError(f"expected (B, C, D, H, W) with sides divisible by {self.input_multiple}, "
                             f"got {tuple(x.shape)}")

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor | None]:
        """(batch, in_channels, D, H, W) -> ((batch, C_feat, D / input_multiple, ...), per-stage channel weights,
        lesion-pooled stage outputs (batch, sum of stage widths) or None without ``lesion_pooling``)."""
        self._check_input(x)
        mask = x[:, 1:2] if self.lesion_pooling else None
        x = self.stem(x)
        weights, inside = [], []
        for stage in self.stages:
            y, w = stage.forward_unpooled(x)
            x = stage.pool(y)
            if w is not None:
                weights.append(w)
            if mask is not None:
                m = F.adaptive_avg_pool3d(mask, y.shape[2:])
                inside.append((y * m).sum(dim=(2, 3, 4)) / m.sum(dim=(2, 3, 4)).clamp_min(1e-6))
        return x, tuple(weights), torch.cat(inside, dim=1) if inside else None

    def forward(self, x: torch.Tensor) -> HybridOutput:
        """Classify lesion crops.

        Args:
            x: (batch, in_channels, D, H, W), sides divisible by ``input_multiple``.

        Returns:
            :class:`HybridOutput` with logit (batch,), aux_logits (batch, 2) and the per-stage channel weights.
        """
        feats, weights, inside = self.forward_features(x)
        pooled = feats.mean(dim=(2, 3, 4))
        if inside is not None:
            pooled = torch.cat([pooled, inside], dim=1)
        return HybridOutput(logit=self.head(pooled).squeeze(-1), aux_logits=self.aux_head(pooled),
                            channel_weights=weights)


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
    """Grad-CAM heat map at ``model.gradcam_layer`` (the attended map of the last stage), upsampled to the input.

    The model runs in eval mode (batch-norm running statistics, no dropout) and its training flag is restored
    afterwards; the hook is removed and no parameter ``.grad`` is touched (``torch.autograd.grad``).

    Args:
        model: network exposing ``gradcam_layer``.
        x: (batch, in_channels, D, H, W).
        target: ``"logit"`` (malignancy logit of the main head), ``"aux"`` (malignant logit of the aux branch)
            or ``"predicted"`` (the main head's predicted class: the logit for a lesion called malignant, minus
            the logit for one called benign, whose malignancy map is otherwise empty).

    Returns:
        (batch, D, H, W) in [0, 1], each sample scaled by its maximum; all zeros where no location has a
        positive contribution.
    """
    if target not in ("logit", "aux", "predicted"):
        raise ValueError(f"target must be 'logit', 'aux' or 'predicted', got {target!r}")
    captured: list[torch.Tensor] = []
    handle = model.gradcam_layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad():
            out = model(x)
            score = {"logit": out.logit, "aux": out.aux_logits[:, 1],
                     "predicted": out.logit.abs()}[target]  # |logit|: the evidence for the predicted class
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
