import pytest
import torch
from torch import nn

from nnunet_liver.blocks.norm import PatchInstanceNorm2d


def _slices(batch, n_slices, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    volume = torch.randn(batch, channels, n_slices, 6, 5, generator=g) * 4 + torch.arange(n_slices).view(1, 1, -1, 1, 1)
    return volume, volume.transpose(1, 2).reshape(batch * n_slices, channels, 6, 5)  # slices batch-major


def test_patch_statistics_are_those_of_a_3d_instance_norm_of_each_sample():
    volume, slices = _slices(2, 4)
    norm = PatchInstanceNorm2d(3)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    reference = nn.InstanceNorm3d(3, affine=True)
    reference.load_state_dict(norm.state_dict())
    norm.batch = 2
    expected = reference(volume).transpose(1, 2).reshape(slices.shape)
    torch.testing.assert_close(norm(slices), expected, rtol=1e-5, atol=1e-5)
    # the slices of one sample share statistics: a per-slice instance norm differs from it
    assert not torch.allclose(nn.InstanceNorm2d(3, affine=True)(slices), expected, atol=1e-2)
    # one slice per sample: a 2D instance norm
    norm.batch = slices.shape[0]
    torch.testing.assert_close(norm(slices), _in2d(norm, slices), rtol=1e-5, atol=1e-5)


def _in2d(norm, slices):
    ref = nn.InstanceNorm2d(3, affine=True)
    ref.load_state_dict(norm.state_dict())
    return ref(slices)


def test_gradients_bf16_and_errors():
    _, slices = _slices(2, 3)
    norm = PatchInstanceNorm2d(3)
    with pytest.raises(RuntimeError, match="batch is not set"):
        norm(slices)
    norm.batch = 4
    with pytest.raises(ValueError, match="6 slices do not split into 4 samples"):
        norm(slices)
    norm.batch = 2
    x = slices.clone().requires_grad_(True)
    norm(x).square().sum().backward()
    assert x.grad is not None and norm.weight.grad is not None and torch.isfinite(x.grad).all()
    out = norm(slices.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), norm(slices), rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="no running statistics"):
        PatchInstanceNorm2d(3, track_running_stats=True)
