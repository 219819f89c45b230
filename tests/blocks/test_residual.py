import pickle

import pytest
import torch
from torch import nn

from nnunet_liver.blocks.residual import BasicBlock, ResidualEncoder, residual_stage

KW = {"norm_op": nn.InstanceNorm2d, "norm_op_kwargs": {"affine": True}, "nonlin": nn.LeakyReLU,
      "nonlin_kwargs": {"inplace": True}}


@pytest.mark.parametrize("conv_op,spatial", [(nn.Conv2d, (8, 6)), (nn.Conv3d, (4, 8, 6))])
@pytest.mark.parametrize("stride,cin,cout", [(1, 4, 4), (2, 4, 8), (1, 4, 8)])
def test_basic_block_shapes_and_shortcut(conv_op, spatial, stride, cin, cout):
    block = BasicBlock(cin, cout, conv_op, stride=stride, nonlin=nn.ReLU)
    out = block(torch.randn(1, cin, *spatial))
    assert out.shape == (1, cout, *[s // stride for s in spatial])
    assert isinstance(block.shortcut, nn.Identity) == (stride == 1 and cin == cout)


def test_encoder_returns_one_skip_per_stage_and_pickles():
    encoder = ResidualEncoder(7, (4, 8, 16), (1, 3, 2), ([1, 1], [2, 2], [2, 1]), nn.Conv2d,
                              kernel_sizes=([3, 3], [3, 3], [3, 3]), **KW)
    skips = encoder(torch.randn(2, 7, 16, 16))
    assert [tuple(s.shape) for s in skips] == [(2, 4, 16, 16), (2, 8, 8, 8), (2, 16, 4, 8)]
    assert [len(stage) for stage in encoder.stages] == [1, 3, 2]
    pickle.loads(pickle.dumps(encoder))  # DNA's BasicBlockD (lambda shortcut) cannot do this


def test_a_stage_needs_a_block():
    with pytest.raises(ValueError):
        residual_stage(0, 4, 4, nn.Conv2d)
