import pytest
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_liver.architectures.cost import count_flops_per_voxel
from nnunet_liver.architectures.dual_stream import DualStreamAttentionNet


def test_counts_multiply_adds_twice_per_output_voxel_and_leaves_the_net_alone():
    net = nn.Conv3d(1, 4, 3, padding=1, bias=False).train()
    assert count_flops_per_voxel(net, (4, 6, 6)) == 2 * 27 * 4
    assert count_flops_per_voxel(net, (4, 6, 6), device="cpu") == 2 * 27 * 4
    assert net.training and net.weight.device.type == "cpu"


def nnunet_3d_unet(strides):
    # nnU-Net's default 3d_fullres network: 6 stages, 32..320 features, 2 convs per stage
    return PlainConvUNet(1, 6, (32, 64, 128, 256, 320, 320), nn.Conv3d, 3, strides, 2, 3, 2, True, nn.InstanceNorm3d,
                         {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU, {"inplace": True},
                         deep_supervision=True)


@pytest.mark.parametrize("strides,patch", [
    ([[1, 1, 1]] + [[2, 2, 2]] * 5, (128, 128, 128)),  # LiTS at nnU-Net's ~1 x 0.77 x 0.77 mm
    ([[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]], (64, 192, 192)),  # 2.5 x 1 x 1 mm
])
def test_default_dual_stream_costs_at_most_80_percent_of_the_3d_unet(strides, patch):
    dual = count_flops_per_voxel(DualStreamAttentionNet(input_channels=1, num_classes=3), (16, 192, 192))
    unet = count_flops_per_voxel(nnunet_3d_unet(strides), patch)
    assert dual <= 0.8 * unet, (dual, unet)
