"""ResNet basic blocks and stages for any dimension.

Same layout as DNA's `BasicBlockD` (ResNet-D: the shortcut average-pools before its 1x1 projection), which we
do not reuse because it stores identity shortcuts and missing nonlinearities as lambdas, so a network built
from it cannot be pickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dynamic_network_architectures.building_blocks.helper import get_matching_pool_op, maybe_convert_scalar_to_list
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

__all__ = ["BasicBlock", "ResidualEncoder", "residual_stage"]


class BasicBlock(nn.Module):
    """conv-norm-nonlin, conv-norm, plus shortcut, then nonlin.

    Args:
        in_channels: channels of x.
        out_channels: channels of the output.
        conv_op: nn.Conv2d or nn.Conv3d.
        kernel_size: of both convs in the residual branch.
        stride: of the first conv; the shortcut average-pools by the same stride.
        conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs: as in DNA's
            `ConvDropoutNormReLU`; dropout only after the first conv.
    """

    def __init__(self, in_channels: int, out_channels: int, conv_op: type[_ConvNd], *,
                 kernel_size: int | Sequence[int] = 3, stride: int | Sequence[int] = 1, conv_bias: bool = False,
                 norm_op: type[nn.Module] | None = None, norm_op_kwargs: dict[str, Any] | None = None,
                 dropout_op: type[nn.Module] | None = None, dropout_op_kwargs: dict[str, Any] | None = None,
                 nonlin: type[nn.Module] | None = None, nonlin_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        stride = list(maybe_convert_scalar_to_list(conv_op, stride))
        norm_op_kwargs = norm_op_kwargs or {}
        nonlin_kwargs = nonlin_kwargs or {}
        self.conv1 = ConvDropoutNormReLU(conv_op, in_channels, out_channels, kernel_size, stride, conv_bias,
                                         norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin,
                                         nonlin_kwargs)
        self.conv2 = ConvDropoutNormReLU(conv_op, out_channels, out_channels, kernel_size, 1, conv_bias,
                                         norm_op, norm_op_kwargs, None, None, None, None)
        shortcut: list[nn.Module] = []
        if any(s != 1 for s in stride):
            shortcut.append(get_matching_pool_op(conv_op, pool_type="avg")(stride, stride))
        if in_channels != out_channels:
            shortcut.append(ConvDropoutNormReLU(conv_op, in_channels, out_channels, 1, 1, False, norm_op,
                                                norm_op_kwargs, None, None, None, None))
        self.shortcut = nn.Sequential(*shortcut) if shortcut else nn.Identity()
        self.nonlin = nonlin(**nonlin_kwargs) if nonlin is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.nonlin(self.conv2(self.conv1(x)) + self.shortcut(x))


def residual_stage(n_blocks: int, in_channels: int, out_channels: int, conv_op: type[_ConvNd], *,
                   stride: int | Sequence[int] = 1, **block_kwargs: Any) -> nn.Sequential:
    """n_blocks basic blocks; only the first changes resolution (stride) and width."""
    if n_blocks < 1:
        raise ValueError(f"a residual stage needs at least one block, got {n_blocks}")
    return nn.Sequential(
        BasicBlock(in_channels, out_channels, conv_op, stride=stride, **block_kwargs),
        *(BasicBlock(out_channels, out_channels, conv_op, **block_kwargs) for _ in range(n_blocks - 1)),
    )


class ResidualEncoder(nn.Module):
    """A full-resolution stem conv, then residual stages; returns every stage's output (the U-Net skips).

    Args:
        in_channels: channels of x.
        features_per_stage: output channels of each stage.
        n_blocks_per_stage: basic blocks per stage (ResNet-34: 3, 4, 6, 3).
        strides: per stage, applied by its first block (DNA convention: strides[0] is usually 1).
        conv_op: nn.Conv2d or nn.Conv3d.
        kernel_sizes: per stage.
        **block_kwargs: conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin,
            nonlin_kwargs, shared by the stem and every block.
    """

    def __init__(self, in_channels: int, features_per_stage: Sequence[int], n_blocks_per_stage: Sequence[int],
                 strides: Sequence[int | Sequence[int]], conv_op: type[_ConvNd], *,
                 kernel_sizes: Sequence[int | Sequence[int]], **block_kwargs: Any) -> None:
        super().__init__()
        if not len(features_per_stage) == len(n_blocks_per_stage) == len(strides) == len(kernel_sizes):
            raise ValueError("features_per_stage, n_blocks_per_stage, strides and kernel_sizes need one entry per "
                             f"stage, got lengths {len(features_per_stage)}, {len(n_blocks_per_stage)}, "
                             f"{len(strides)}, {len(kernel_sizes)}")
        self.stem = ConvDropoutNormReLU(
            conv_op, in_channels, features_per_stage[0], kernel_sizes[0], 1, block_kwargs.get("conv_bias", False),
            block_kwargs.get("norm_op"), block_kwargs.get("norm_op_kwargs") or {}, block_kwargs.get("dropout_op"),
            block_kwargs.get("dropout_op_kwargs"), block_kwargs.get("nonlin"), block_kwargs.get("nonlin_kwargs") or {})
        stages = []
        channels = features_per_stage[0]
        for features, n_blocks, stride, kernel_size in zip(features_per_stage, n_blocks_per_stage, strides,
                                                            kernel_sizes):
            stages.append(residual_stage(n_blocks, channels, features, conv_op, stride=stride,
                                         kernel_size=kernel_size, **block_kwargs))
            channels = features
        self.stages = nn.ModuleList(stages)
        self.output_channels = list(features_per_stage)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: (batch, in_channels, *spatial). Returns one tensor per stage, highest resolution first."""
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips
