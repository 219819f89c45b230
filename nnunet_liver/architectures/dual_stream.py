"""Dual-stream attention network for liver-tumour CT (paper.md, "Dual Stream Segmentation Network").

nnU-Net sees a 3D network: input raw HU (batch, channels, Z, Y, X) from a 3d_fullres configuration whose
patch spans many slices (axis 0 = slices after nnU-Net's transpose) and whose strides are 1 in z. Inside:

    x --WindowInput--> xw
    spatial stream:    xw -> each slice with its 3 + 3 neighbours as channels, (B*Z', 7C, Y, X) -> residual
                       2D encoder (ResNet-34 stages 3, 4, 6, 3 after a full-resolution stage) -> 2D decoder
                       with an AttentionGate (CBAM + Oktay gate) on every skip -> 3x3 conv
    contextual stream: xw -> average pool (default 4x in-plane) -> its own 3D encoder over the whole patch
                       (5 stages, z strides too) + a global-context vector + a top-down path (ContextStream)
    fusion:            [spatial; context upsampled to full resolution] -> conv -> norm -> nonlin -> 1x1 head
                       -> (B, K, Z, Y, X)

Fusion is concatenation followed by a convolution whose kernel is 3x3 on the spatial features and 1x1 on the
contextual ones; it is computed as the sum of the two parts, the contextual 1x1 applied at the pooled
resolution before the (linear) upsampling, which commutes with it. So the full-resolution concatenated tensor
is never built (issue 15: it cost memory and time FLOP counts miss).

Real neighbours (issue 12): in training mode the spatial stream runs only on the slices whose 7-slice stack
lies inside the patch, Z' = Z - 2 * z_margin with z_margin = n_slices // 2; the z_margin slices at each end of
the output are copies of their nearest computed slice and the trainers leave them out of the loss. In eval
mode (validation, sliding-window prediction) every slice is computed, the patch edges replicate-padded:
inside a volume those slices sit at the edge of a tile, where nnU-Net's Gaussian weights them by at most
0.51 % of the centre (patch of 32 slices; 4.4 % at the CPU presets' 16), and the overlapping tile that holds
them in its interior dominates. The first and last z_margin slices of a volume are the exception: training
never puts them in the loss (nnU-Net samples patches inside the volume), and prediction computes them from
replicated neighbours.

Deep supervision adds one spatial-stream output per coarser decoder stage, highest resolution first, with the
shapes nnU-Net derives from `strides`: (B, K, Z, Y / prod(s_y), X / prod(s_x)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp, get_matching_dropout
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from nnunet_liver.augment.window import WindowConfig
from nnunet_liver.blocks.attention import AttentionGate
from nnunet_liver.blocks.context import ContextStream
from nnunet_liver.blocks.norm import PatchInstanceNorm2d
from nnunet_liver.blocks.residual import ResidualEncoder
from nnunet_liver.blocks.windowing import WindowInput

__all__ = ["AttentionUNetDecoder", "DualStreamAttentionNet", "slices_to_channels"]

_NORMS = {"instance": (nn.InstanceNorm2d, nn.InstanceNorm3d), "batch": (nn.BatchNorm2d, nn.BatchNorm3d),
          "patch_instance": (PatchInstanceNorm2d, nn.InstanceNorm3d)}


def slices_to_channels(x: Tensor, n_slices: int, pad: bool = True) -> Tensor:
    """Stack each slice with its neighbours as channels: (B, C, Z, Y, X) -> (B*Z', n_slices*C, Y, X).

    pad=True: z is replicate-padded by n_slices // 2 so every slice gets a stack (Z' = Z). pad=False: only the
    slices whose whole stack lies inside x, Z' = Z - 2 * (n_slices // 2). Output channel k * C + c holds input
    channel c of slice z - n_slices // 2 + k.
    """
    b, c, z, y, x_ = x.shape
    half = n_slices // 2
    if half and pad:
        x = F.pad(x, (0, 0, 0, 0, half, half), mode="replicate")
    elif z < n_slices:
        raise ValueError(f"{z} slices hold no full stack of {n_slices}")
    stacks = x.unfold(2, n_slices, 1)  # (B, C, Z', Y, X, n_slices)
    return stacks.permute(0, 2, 5, 1, 3, 4).reshape(-1, n_slices * c, y, x_)


def _fold_slices(x: Tensor, batch: int) -> Tensor:
    """(B*Z, K, Y, X) -> (B, K, Z, Y, X), contiguous (nnU-Net's losses and predictor may call .view)."""
    bz, k, y, x_ = x.shape
    return x.view(batch, bz // batch, k, y, x_).transpose(1, 2).contiguous()


def _maybe_checkpoint(module, enabled: bool, *args) -> Tensor:
    """module(*args); with `enabled` while autograd records, keep only the inputs and recompute the module's
    activations in the backward pass (torch.utils.checkpoint, non-reentrant)."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(_replaying_patch_batches(module), *args, use_reentrant=False)
    return module(*args)


def _replaying_patch_batches(fn):
    """``fn`` (a module or a module's method), made to run with the ``batch`` its patch norms have now: the
    recomputation in the backward pass then splits the slices as this forward did, even when another forward
    (a batch of another size) ran in between; the norms' ``batch`` is put back afterwards. Under torch.compile
    the traced graph holds the batch already (and a write inside a checkpoint would be a side effect)."""
    if torch.compiler.is_compiling():
        return fn
    owner = getattr(fn, "__self__", fn)
    norms = [m for m in owner.modules() if isinstance(m, PatchInstanceNorm2d)] if isinstance(owner, nn.Module) else []
    if not norms:
        return fn
    batches = [m.batch for m in norms]

    def run(*args):
        before = [m.batch for m in norms]
        for m, batch in zip(norms, batches):
            m.batch = batch
        try:
            return fn(*args)
        finally:
            for m, batch in zip(norms, before):
                m.batch = batch

    return run


def _matching_norm(norm_op: type[nn.Module] | None, dim: int) -> type[nn.Module] | None:
    if norm_op is None:
        return None
    for base, kind in ((_InstanceNorm, "instance"), (_BatchNorm, "batch")):
        if issubclass(norm_op, base):
            return _NORMS[kind][dim - 2]
    return norm_op  # dimension-agnostic norms are used as given


def _in_plane(value: int | Sequence[int], name: str) -> list[int]:
    """A per-stage entry in nnU-Net's 3D format (z, y, x), or an int, as the in-plane (y, x) pair."""
    if isinstance(value, int):
        return [value, value]
    value = [int(v) for v in value]
    if len(value) != 3:
        raise ValueError(f"{name} entries must be int or (z, y, x), got {value}")
    return value[1:]


class AttentionUNetDecoder(nn.Module):
    """U-Net decoder whose skips pass through attention gates driven by the coarser decoder feature.

    Each stage: transposed conv up from the coarser feature g, skip' = AttentionGate(skip, g) (or the raw skip
    when `use_attention` is False), then convs over concat(up, skip'). `seg_layers` hold the deep-supervision
    heads of every stage except the finest, whose head is the network's fusion head. They always exist, so the
    state_dict does not depend on `deep_supervision`.

    Args:
        features_per_stage: encoder channels per stage, highest resolution first.
        strides: encoder strides per stage (same dimension as conv_op).
        kernel_sizes: per encoder stage; decoder stage s uses the kernel of the skip it merges.
        conv_op: nn.Conv2d or nn.Conv3d.
        num_classes: channels of the deep-supervision outputs.
        n_conv_per_stage: convs per decoder stage (int or one per decoder stage, coarsest first).
        deep_supervision: read by the network to decide between a list and a tensor (nnU-Net sets it).
        use_attention: gate the skips.
        gate_kwargs: passed to AttentionGate.
        conv_kwargs: conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs.
    """

    def __init__(self, features_per_stage: Sequence[int], strides: Sequence[Sequence[int]],
                 kernel_sizes: Sequence[Sequence[int]], conv_op: type[_ConvNd], num_classes: int, *,
                 n_conv_per_stage: int | Sequence[int] = 1, deep_supervision: bool = False,
                 use_attention: bool = True, gate_kwargs: dict[str, Any] | None = None,
                 conv_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        n_stages = len(features_per_stage)
        if isinstance(n_conv_per_stage, int):
            n_conv_per_stage = [n_conv_per_stage] * (n_stages - 1)
        if len(n_conv_per_stage) != n_stages - 1:
            raise ValueError(f"n_conv_per_stage_decoder needs {n_stages - 1} entries, got {list(n_conv_per_stage)}")
        conv_kwargs = dict(conv_kwargs or {})
        conv_bias = conv_kwargs.pop("conv_bias", False)
        transpconv_op = get_matching_convtransp(conv_op)
        self.deep_supervision = deep_supervision
        self.use_attention = use_attention
        self.checkpoint_gates = False  # set by the network (see DualStreamAttentionNet.checkpoint_stages)
        self.checkpoint_levels: frozenset[int] = frozenset()
        transpconvs, gates, stages = [], [], []
        for i, s in enumerate(range(n_stages - 1, 0, -1)):  # from the bottleneck up
            coarse, fine = features_per_stage[s], features_per_stage[s - 1]
            transpconvs.append(transpconv_op(coarse, fine, strides[s], strides[s], bias=conv_bias))
            if use_attention:
                gates.append(AttentionGate(fine, coarse, conv_op, **{"stride": strides[s], **(gate_kwargs or {})}))
            stages.append(StackedConvBlocks(n_conv_per_stage[i], conv_op, 2 * fine, fine, kernel_sizes[s - 1], 1,
                                            conv_bias, **conv_kwargs))
        self.transpconvs = nn.ModuleList(transpconvs)
        self.gates = nn.ModuleList(gates)
        self.stages = nn.ModuleList(stages)
        self.seg_layers = nn.ModuleList(
            conv_op(features_per_stage[s], num_classes, kernel_size=1, bias=True) for s in range(1, n_stages - 1))

    def forward(self, skips: Sequence[Tensor]) -> list[Tensor]:
        """skips: encoder outputs, highest resolution first. Returns the decoder features, highest first."""
        x = skips[-1]
        features = []
        n = len(self.stages)
        for i in range(n):
            level = n - 1 - i  # resolution level of this stage's output (0 = full resolution)
            checkpointed = level in self.checkpoint_levels
            x = _maybe_checkpoint(self._stage, checkpointed, x, skips[-(i + 2)], i, not checkpointed)
            features.append(x)
        return features[::-1]

    def _stage(self, x: Tensor, skip: Tensor, i: int, gate_checkpoint: bool) -> Tensor:
        if self.use_attention:  # a gate inside a checkpointed stage is not checkpointed again
            skip = _maybe_checkpoint(self.gates[i], self.checkpoint_gates and gate_checkpoint, skip, x)
        return self.stages[i](torch.cat((self.transpconvs[i](x), skip), dim=1))


class DualStreamAttentionNet(nn.Module):
    """2.5D spatial stream with attention gates plus a 3D contextual stream, for nnU-Net 3d_fullres.

    nnU-Net calls `DualStreamAttentionNet(input_channels=..., num_classes=..., **arch_kwargs,
    deep_supervision=...)`, then `net.apply(net.initialize)`. Every argument except the op classes is
    JSON-serialisable.

    Args:
        input_channels: image channels C (1 for CT).
        num_classes: output channels K (logits).
        strides: per stage in nnU-Net's 3D format (z, y, x); z must be 1 everywhere. nnU-Net derives the
            deep-supervision targets from it. Default: five stages, in-plane stride 2 from the second on.
        features_per_stage: spatial-stream widths. The default is ResNet-34 at half width (32, 64, 128, 256 for
            the 3, 4, 6, 3 blocks) after a 16-channel full-resolution stage (32 channels there cost 1.4x the
            time and memory per voxel for 1.35x the FLOPs: issue 15).
        n_blocks_per_stage: basic blocks per stage: a full-resolution stage, then ResNet-34's 3, 4, 6, 3.
        n_conv_per_stage_decoder: convs per decoder stage.
        kernel_sizes: int or per stage (z, y, x) as in the plans; the spatial stream uses (y, x).
        n_slices: adjacent slices stacked as channels (odd); z_margin = n_slices // 2 (see the module doc).
        window: `WindowConfig`, its `to_dict()`, a preset name ("paper", "ostmo_best", "fixed_paper"); None = paper.
        window_mean, window_std: normalisation after windowing (see `WindowInput`).
        use_attention: attention gates on the skips; False gives plain U-Net skip concatenation.
        use_context: add the contextual stream and fuse it; False leaves the spatial stream alone.
        context_pool: average-pool factor (z, y, x) before the contextual stream.
        context_features_per_stage: contextual-encoder widths.
        context_strides: contextual-encoder strides per stage, (z, y, x).
        context_kernel_sizes: int or per contextual stage (z, y, x).
        context_n_conv_per_stage: convs per contextual stage.
        context_channels: width of the contextual stream's top-down path (its output).
        context_global: the contextual bottleneck also gets the MLP of its global average (the whole patch).
        fusion_kernel_size: in-plane kernel of the fusion conv's spatial-stream part.
        attention_reduction: CBAM channel-MLP reduction.
        spatial_kernel_size: CBAM spatial-attention kernel.
        spatial_norm: "batch", "instance" or "patch_instance": the norm of the spatial stream's 2D layers
            (encoder, decoder, fusion; the gates have none) instead of the one matched to norm_op; None keeps
            norm_op's. A 2D instance norm takes its statistics from one slice; "patch_instance"
            (`PatchInstanceNorm2d`) from all Z' slices of one patch, as the contextual stream's 3D instance
            norm does, in training and evaluation alike; a batch norm, in training, from every slice of the
            batch (B x Z' of them), and in eval mode uses its running statistics.
        checkpoint_stages: resolution levels (0 = full resolution) whose spatial-stream encoder stage (level 0 with
            the stem) and decoder stage (with its gate) are recomputed in the backward pass instead of storing
            their activations (activation checkpointing; only while autograd records).
        checkpoint_gates: the same for every attention gate on its own (few FLOPs, several full-size maps each).
        deep_supervision: return a list (highest resolution first) instead of one tensor.
        n_stages: optional check against len(strides) (nnU-Net's plans carry it).
        conv_op: if given, must be a 3D conv (the network takes 3D patches); the streams choose their own ops.
        conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs: as in nnU-Net's
            plans; norm and dropout classes are matched to 2D (spatial stream) and 3D (contextual stream).
            Defaults: no bias, InstanceNorm (affine, eps 1e-5), no dropout, LeakyReLU(0.01).

    Forward: x raw HU (B, C, Z, Y, X) -> logits (B, K, Z, Y, X), or a list with deep supervision. The input
    must still be in HU (channel normalisation `noNorm` in the plans): the first layer windows and normalises.
    """

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        strides: Sequence[Sequence[int]] = ((1, 1, 1), (1, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 2)),
        features_per_stage: Sequence[int] = (16, 32, 64, 128, 256),
        n_blocks_per_stage: Sequence[int] = (1, 3, 4, 6, 3),
        n_conv_per_stage_decoder: int | Sequence[int] = 1,
        kernel_sizes: int | Sequence[int | Sequence[int]] = 3,
        n_slices: int = 7,
        window: WindowConfig | dict[str, Any] | str | None = None,
        window_mean: float = 0.5,
        window_std: float = 0.25,
        use_attention: bool = True,
        use_context: bool = True,
        context_pool: Sequence[int] = (1, 4, 4),
        context_features_per_stage: Sequence[int] = (16, 32, 64, 128, 256),
        context_strides: Sequence[Sequence[int]] = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)),
        context_kernel_sizes: int | Sequence[int | Sequence[int]] = 3,
        context_n_conv_per_stage: int = 2,
        context_channels: int = 32,
        context_global: bool = True,
        fusion_kernel_size: int = 3,
        attention_reduction: int = 16,
        spatial_kernel_size: int = 7,
        spatial_norm: str | None = None,
        checkpoint_stages: Sequence[int] = (),
        checkpoint_gates: bool = False,
        deep_supervision: bool = False,
        n_stages: int | None = None,
        conv_op: type[_ConvNd] | None = None,
        conv_bias: bool = False,
        norm_op: type[nn.Module] | None = nn.InstanceNorm3d,
        norm_op_kwargs: dict[str, Any] | None = None,
        dropout_op: type[nn.Module] | None = None,
        dropout_op_kwargs: dict[str, Any] | None = None,
        nonlin: type[nn.Module] | None = nn.LeakyReLU,
        nonlin_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        strides = [list(s) if not isinstance(s, int) else [s, s, s] for s in strides]
        if any(len(s) != 3 for s in strides):
            raise ValueError(f"strides must be (z, y, x) per stage (nnU-Net 3D format), got {strides}")
        if any(s[0] != 1 for s in strides):
            raise ValueError(f"the spatial stream is 2.5D: every z stride must be 1, got strides {strides}")
        n = len(strides)
        if n < 2:
            raise ValueError(f"need at least 2 stages, got strides {strides}")
        if n_stages is not None and n_stages != n:
            raise ValueError(f"n_stages={n_stages} disagrees with len(strides)={n}")
        if not len(features_per_stage) == len(n_blocks_per_stage) == n:
            raise ValueError(f"features_per_stage {list(features_per_stage)} and n_blocks_per_stage "
                             f"{list(n_blocks_per_stage)} need one entry per stage ({n})")
        if n_slices < 1 or n_slices % 2 == 0:
            raise ValueError(f"n_slices must be odd and >= 1, got {n_slices}")
        if conv_op is not None and not issubclass(conv_op, nn.Conv3d):
            raise ValueError(f"DualStreamAttentionNet takes 3D patches (a 3d_fullres configuration), got {conv_op}")
        if fusion_kernel_size < 1 or fusion_kernel_size % 2 == 0:
            raise ValueError(f"fusion_kernel_size must be odd, got {fusion_kernel_size}")
        kernel_list = [kernel_sizes] * n if isinstance(kernel_sizes, int) else list(kernel_sizes)
        if len(kernel_list) != n:
            raise ValueError(f"kernel_sizes needs one entry per stage ({n}), got {kernel_sizes}")
        kernels_2d = [_in_plane(k, "kernel_sizes") for k in kernel_list]
        strides_2d = [s[1:] for s in strides]

        if norm_op_kwargs is None:
            norm_op_kwargs = {"eps": 1e-5, "affine": True} if norm_op is not None else {}
        if nonlin_kwargs is None:
            nonlin_kwargs = {"negative_slope": 1e-2, "inplace": True} if nonlin is nn.LeakyReLU else {}

        if spatial_norm is not None and spatial_norm not in _NORMS:
            raise ValueError(f"spatial_norm must be one of {sorted(_NORMS)} or None, got {spatial_norm!r}")

        def conv_kwargs(dim: int) -> dict[str, Any]:
            dropout = get_matching_dropout(dimension=dim) if dropout_op is not None else None
            norm = _NORMS[spatial_norm][0] if dim == 2 and spatial_norm is not None else _matching_norm(norm_op, dim)
            return {"conv_bias": conv_bias, "norm_op": norm, "norm_op_kwargs": norm_op_kwargs,
                    "dropout_op": dropout, "dropout_op_kwargs": dropout_op_kwargs, "nonlin": nonlin,
                    "nonlin_kwargs": nonlin_kwargs}

        self.strides = strides
        self.n_slices = n_slices
        self.z_margin = n_slices // 2
        self.use_attention = use_attention
        self.use_context = use_context
        self.window = WindowInput(window, mean=window_mean, std=window_std)

        self.encoder = ResidualEncoder(n_slices * input_channels, features_per_stage, n_blocks_per_stage,
                                       strides_2d, nn.Conv2d, kernel_sizes=kernels_2d, **conv_kwargs(2))
        gate_kwargs = {"reduction": attention_reduction, "spatial_kernel_size": spatial_kernel_size}
        self.decoder = AttentionUNetDecoder(features_per_stage, strides_2d, kernels_2d, nn.Conv2d, num_classes,
                                            n_conv_per_stage=n_conv_per_stage_decoder,
                                            deep_supervision=deep_supervision, use_attention=use_attention,
                                            gate_kwargs=gate_kwargs, conv_kwargs=conv_kwargs(2))
        if any(not 0 <= i < n for i in checkpoint_stages):
            raise ValueError(f"checkpoint_stages must index the {n} stages, got {list(checkpoint_stages)}")
        self.checkpoint_stages = frozenset(int(i) for i in checkpoint_stages)
        self.decoder.checkpoint_levels = self.checkpoint_stages
        self.decoder.checkpoint_gates = bool(checkpoint_gates)
        self._split_recomputed_batch_norm_momentum()
        inplane = [1, 1]
        for st in strides_2d:
            inplane = [a * b for a, b in zip(inplane, st)]
        if use_context:
            ctx = [int(p) for p in context_pool[1:]]
            for st in context_strides:
                ctx = [a * int(b) for a, b in zip(ctx, list(st)[1:])]
            inplane = [max(a, b) for a, b in zip(inplane, ctx)]
        #: per-axis factor the patch is downsampled by (z: 1, the spatial stream never strides in z)
        self.shape_divisor = (1, *inplane)
        width = features_per_stage[0]
        if use_context:
            self.context = ContextStream(input_channels, context_features_per_stage, context_strides,
                                         context_channels, pool=context_pool, kernel_sizes=context_kernel_sizes,
                                         n_conv_per_stage=context_n_conv_per_stage, global_context=context_global,
                                         conv_kwargs=conv_kwargs(3))
            # the fusion conv's 1x1 part on the contextual features, applied at the pooled resolution
            self.context_fusion = nn.Conv3d(context_channels, width, kernel_size=1, bias=False)
        head = conv_kwargs(2)
        self.fusion = nn.Conv2d(width, width, fusion_kernel_size, padding=(fusion_kernel_size - 1) // 2,
                                bias=head["conv_bias"])
        self.fusion_norm = head["norm_op"](width, **head["norm_op_kwargs"]) if head["norm_op"] else nn.Identity()
        self.fusion_nonlin = head["nonlin"](**head["nonlin_kwargs"]) if head["nonlin"] else nn.Identity()
        self.head = nn.Conv2d(width, num_classes, kernel_size=1, bias=True)

    def _split_recomputed_batch_norm_momentum(self) -> None:
        """A checkpointed stage runs its forward twice per training step (again in the backward pass), and a
        batch norm in it updates its running statistics both times, from the same batch (torch issue 96136).
        Its momentum m becomes m' with (1 - m')^2 = 1 - m, so the two updates make one."""
        if not self.checkpoint_stages:
            return
        recomputed = [self.encoder.stages[i] for i in self.checkpoint_stages]
        if 0 in self.checkpoint_stages:
            recomputed.append(self.encoder.stem)
        n = len(self.decoder.stages)  # decoder stage i has resolution level n - 1 - i
        recomputed += [self.decoder.stages[n - 1 - level] for level in self.checkpoint_stages if level < n]
        for module in recomputed:
            for m in module.modules():
                if isinstance(m, _BatchNorm) and m.momentum is not None:
                    m.momentum = 1 - math.sqrt(1 - m.momentum)

    def spatial_features(self, xw: Tensor, pad: bool = True) -> list[Tensor]:
        """Windowed input (B, C, Z, Y, X) -> the decoder features (B*Z', F_s, ...), highest resolution first."""
        for m in self.modules():  # patch norms (spatial_norm="patch_instance") take each sample's slices together
            if isinstance(m, PatchInstanceNorm2d):
                m.batch = xw.shape[0]
        x = slices_to_channels(xw, self.n_slices, pad=pad)
        skips = []
        for i, stage in enumerate(self.encoder.stages):
            run = nn.Sequential(self.encoder.stem, stage) if i == 0 else stage
            x = _maybe_checkpoint(run, i in self.checkpoint_stages, x)
            skips.append(x)
        return self.decoder(skips)

    def context_features(self, xw: Tensor, inplane: Sequence[int] | None = None, margin: int = 0) -> Tensor:
        """Windowed input (B, C, Z, Y, X) -> the contextual term of the fusion conv per slice,
        (B * (Z - 2 margin), F_0, *inplane), slices batch-major as the spatial stream orders them; by default at
        the input's in-plane size.

        The pooled map is brought to the patch's z first (an identity when the stream pools in-plane only),
        then the kept slices are upsampled in-plane one by one (bilinear): the same values as trilinear
        upsampling of the whole map, without its slow 3D backward pass or a full-resolution transpose copy.
        """
        # float32 whatever the autocast: the stream holds 2 % of the FLOPs, and oneDNN's bf16 Conv3d weight
        # gradient returned NaN for it on this project's CPUs (stride-2 3D convs on small maps)
        with torch.autocast(device_type="cuda" if xw.is_cuda else "cpu", enabled=False):  # also on "meta"
            context = self.context_fusion(self.context(xw.float()))
        batch, z = xw.shape[0], xw.shape[2]
        if context.shape[2] != z:
            context = F.interpolate(context, size=(z, *context.shape[3:]), mode="trilinear", align_corners=False)
        if margin:
            context = context[:, :, margin:z - margin]
        context = context.transpose(1, 2).reshape(-1, context.shape[1], *context.shape[3:])
        size = tuple(inplane if inplane is not None else xw.shape[3:])
        return F.interpolate(context, size=size, mode="bilinear", align_corners=False)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """x: raw HU, (B, C, Z, Y, X). Returns logits (B, K, Z, Y, X), or with deep supervision a list, highest
        resolution first, of (B, K, Z, Y / prod(s_y), X / prod(s_x)) over the first n_stages - 1 strides.
        In training mode the z_margin end slices of every output copy their nearest real-neighbour slice."""
        batch, _, z = x.shape[:3]
        x = self.window(x)
        margin = self.z_margin if self.training and z > 2 * self.z_margin else 0
        features = self.spatial_features(x, pad=not margin)
        fused = self.fusion(features[0])
        if self.use_context:
            fused = fused + self.context_features(x, fused.shape[2:], margin).to(fused.dtype)
        logits = self._to_volume(self.head(self.fusion_nonlin(self.fusion_norm(fused))), batch, margin)
        if not self.decoder.deep_supervision:
            return logits
        coarser = [self._to_volume(seg(f), batch, margin) for seg, f in zip(self.decoder.seg_layers, features[1:])]
        return [logits, *coarser]

    @staticmethod
    def _to_volume(x: Tensor, batch: int, margin: int) -> Tensor:
        x = _fold_slices(x, batch)
        if not margin:
            return x
        # index instead of F.pad(mode="replicate"), which autocast runs in float32
        nearest = torch.arange(-margin, x.shape[2] + margin, device=x.device).clamp_(0, x.shape[2] - 1)
        return x.index_select(2, nearest)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """nnU-Net's He initialisation (negative slope 1e-2); use as `net.apply(net.initialize)`."""
        InitWeights_He(1e-2)(module)
