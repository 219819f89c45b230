"""The GPU memory estimator: saved-tensor counting, linear scaling, the estimate, the chooser, the target."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nnunet_liver.planners import gpu_memory as gm

torch.set_num_threads(1)


def _sum_loss(out):
    """A loss that saves nothing for backward (a cast and a sum need only shapes)."""
    return out.float().sum()


def conv_norm_relu() -> nn.Module:
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.LeakyReLU(inplace=True))


def tiny_unet(n_stages: int = 3, features: int = 4, num_classes: int = 2) -> nn.Module:
    """nnU-Net's 3d_fullres layout (DNA's PlainConvUNet, instance norm, deep supervision) with few features."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    strides = [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1)
    return PlainConvUNet(1, n_stages, [features * 2 ** i for i in range(n_stages)], nn.Conv3d, [[3, 3, 3]] * n_stages,
                         strides, [2] * n_stages, num_classes, [2] * (n_stages - 1), conv_bias=True,
                         norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)


# ---------------------------------------------------------------------------------------------- counting

def test_hand_count_conv_norm_relu():
    # patch 4^3 = 64 voxels, batch 1, bfloat16 autocast. Saved for backward:
    #   conv: its input cast to bf16 (1 ch x 64 x 2 B = 128) and its weight cast to bf16 (4*1*27 x 2 B = 216,
    #         a parameter copy, not an activation)
    #   instance norm: its input, the conv output (4 ch x 64 x 2 B = 512), and 3 per-channel float32 vectors
    #         (the affine weight repeated over the batch, mean, inverse std: 3 x 4 x 4 B = 48)
    #   in-place LeakyReLU: its result (4 x 64 x 2 B = 512)
    prof = gm.measure_saved_tensors(conv_norm_relu(), (4, 4, 4), loss_fn=_sum_loss, fake=False)
    assert prof.bytes_by_dtype == {"bfloat16": 128 + 512 + 512, "float32": 48}
    assert prof.activation_bytes == 1200
    assert prof.largest_activation_elements == 4 * 64
    assert prof.weight_copy_bytes == 216
    assert prof.parameter_bytes == 0
    # the default, fake pass: the same tensors, but torch's shape functions give the norm's mean and inverse
    # std the input's dtype (bf16) where the CPU kernel returns float32: 2 x 4 x 2 B instead of 2 x 4 x 4 B
    fake = gm.measure_saved_tensors(conv_norm_relu(), (4, 4, 4), loss_fn=_sum_loss)
    assert fake.bytes_by_dtype == {"bfloat16": 128 + 512 + 512 + 16, "float32": 16}
    assert (fake.n_tensors, fake.weight_copy_bytes, fake.largest_activation_elements) == \
        (prof.n_tensors, prof.weight_copy_bytes, prof.largest_activation_elements)


def test_float32_counts_parameters_apart():
    # without autocast the conv saves its weight itself: a parameter (4*1*27 x 4 B), never an activation
    prof = gm.measure_saved_tensors(conv_norm_relu(), (4, 4, 4), dtype=torch.float32, loss_fn=_sum_loss)
    assert prof.parameter_bytes == 432
    assert prof.weight_copy_bytes == 0
    assert prof.activation_bytes == 64 * 4 + 2 * 4 * 64 * 4 + 48


def test_storage_shared_by_inplace_relu_and_next_conv_counted_once():
    net = conv_norm_relu()
    one = gm.measure_saved_tensors(net, (4, 4, 4), loss_fn=_sum_loss)
    two = gm.measure_saved_tensors(nn.Sequential(*net, nn.Conv3d(4, 2, 3, padding=1)), (4, 4, 4), loss_fn=_sum_loss)
    assert two.activation_bytes == one.activation_bytes  # the next conv saves the ReLU's (already bf16) output
    assert two.weight_copy_bytes == one.weight_copy_bytes + 2 * 4 * 27 * 2


def test_fake_count_equals_the_computed_one_for_a_unet():
    # the default pass runs under FakeTensorMode (no arithmetic); it must see what a computed pass saves, but
    # for the norms' per-channel statistics (bf16 instead of float32: 0.5 % of the bytes at this tiny 8^3
    # patch, where those vectors weigh 1.5 %; nothing at a real patch)
    net = tiny_unet()
    fake = gm.measure_saved_tensors(net, (8, 8, 8), 2)
    computed = gm.measure_saved_tensors(net, (8, 8, 8), 2, fake=False)
    assert fake.n_tensors == computed.n_tensors
    assert fake.weight_copy_bytes == computed.weight_copy_bytes
    assert fake.largest_activation_elements == computed.largest_activation_elements
    assert fake.activation_bytes == pytest.approx(computed.activation_bytes, rel=0.01)
    assert fake.activation_bytes <= computed.activation_bytes


def test_measure_restores_mode_and_buffers():
    net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.BatchNorm3d(2)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    gm.measure_saved_tensors(net, (4, 4, 4))
    assert not net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype"):
        gm.measure_saved_tensors(conv_norm_relu(), (4, 4, 4), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- scaling

def test_activations_linear_in_patch_voxels_and_batch():
    net = tiny_unet()  # total stride 4 per axis
    a = gm.measure_saved_tensors(net, (16, 16, 16))
    b = gm.measure_saved_tensors(net, (16, 32, 48))
    per_voxel_a, per_voxel_b = a.activation_bytes / a.voxels, b.activation_bytes / b.voxels
    # the only part that is not linear in voxels: per-channel vectors (norm statistics, the loss's Dice terms)
    assert per_voxel_b == pytest.approx(per_voxel_a, rel=0.003)
    c = gm.measure_saved_tensors(net, (16, 16, 16), batch_size=2)
    assert c.activation_bytes == pytest.approx(2 * a.activation_bytes, rel=1e-6)
    # scaled from the default calibration patch (8^3 here, where those vectors weigh 1.5 %) = measured directly
    scaled = gm.activation_profile(net, (16, 32, 48), 2)
    assert scaled.patch_size == (16, 32, 48) and scaled.batch_size == 2
    direct = gm.measure_saved_tensors(net, (16, 32, 48), 2)
    assert scaled.activation_bytes == pytest.approx(direct.activation_bytes, rel=0.02)
    assert scaled.largest_activation_elements == direct.largest_activation_elements
    assert gm.activation_bytes(net, (16, 32, 48), 2) == scaled.activation_bytes


def test_shape_divisor_and_calibration_patch():
    assert gm.shape_divisor(tiny_unet(4), 3) == (8, 8, 8)
    assert gm.shape_divisor(nn.Conv3d(1, 1, 1), 3) == (1, 1, 1)

    class Own(nn.Module):
        shape_divisor = (1, 16, 16)

    assert gm.shape_divisor(Own(), 3) == (1, 16, 16)

    class TwoD(nn.Module):  # a 2D encoder inside a 3D network strides the in-plane axes
        def __init__(self):
            super().__init__()
            self.encoder = nn.Module()
            self.encoder.strides = [[1, 1], [2, 2], [2, 2]]

    assert gm.shape_divisor(TwoD(), 3) == (1, 4, 4)
    assert gm.calibration_patch((128, 128, 128), (32, 32, 32)) == (64, 64, 64)
    assert gm.calibration_patch((40, 192, 160), (1, 32, 32), keep_axes=(0,)) == (40, 64, 64)
    assert gm.calibration_patch((48, 100, 32), (16, 32, 32)) == (32, 100, 32)  # 100 is no multiple of 32
    assert gm.calibration_patch((32, 128, 128), (1, 1, 1)) == (32, 128, 128)  # strides unknown: full size


def test_z_margin_network_keeps_z():
    class Margin(nn.Module):
        z_margin = 3

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 2, 3, padding=1)
            self.shape_divisor = (1, 4, 4)

        def forward(self, x):
            return self.conv(nn.functional.pad(x, (0, 0, 0, 0, 3, 3), mode="replicate"))

    net = Margin()
    patch = (8, 16, 16)
    # z padded by 2 x 3 slices is not linear in z: the calibration keeps z and shrinks only y and x
    assert gm.calibration_patch(patch, gm.shape_divisor(net, 3), keep_axes=(0,)) == (8, 8, 8)
    scaled = gm.activation_profile(net, patch, 1)
    direct = gm.measure_saved_tensors(net, patch)
    assert scaled.activation_bytes == pytest.approx(direct.activation_bytes, rel=0.002)
    naive = gm.measure_saved_tensors(net, (2, 8, 8)).scaled(patch, 1)  # z scaled too: (2+6)/(8+6) x too much
    assert naive.activation_bytes > 1.5 * direct.activation_bytes


# ---------------------------------------------------------------------------------------------- estimate

def test_estimate_parts_and_monotone():
    net = tiny_unet()
    e = gm.estimate_training_peak(net, (16, 16, 16), 2)
    n = sum(p.numel() for p in net.parameters())
    assert e["parameter_count"] == n
    assert e["parameters"] == e["gradients"] == e["optimizer_state"] == pytest.approx(4 * n / gm.GIB)
    parts = ("parameters", "gradients", "optimizer_state", "weight_copies", "activations", "largest_temporary")
    assert e["sum"] == pytest.approx(sum(e[k] for k in parts))
    assert e["allocated"] == pytest.approx(e["sum"] * gm.ALLOCATED_CALIBRATION)
    assert e["peak"] == pytest.approx(e["allocated"] * gm.FRAGMENTATION_FACTOR + gm.CUDA_CONTEXT_GIB)
    prof = gm.activation_profile(net, (16, 16, 16), 2)
    assert e["largest_temporary"] == pytest.approx(4 * prof.largest_activation_elements / gm.GIB)
    assert e["activations"] == pytest.approx(prof.activation_bytes / gm.GIB)
    by_batch = [gm.estimate_training_peak(net, (16, 16, 16), b)["peak"] for b in (1, 2, 4)]
    by_patch = [gm.estimate_training_peak(net, p, 2)["peak"] for p in ((8, 8, 8), (16, 16, 16), (16, 32, 32))]
    assert by_batch == sorted(by_batch) and len(set(by_batch)) == 3
    assert by_patch == sorted(by_patch) and len(set(by_patch)) == 3
    adam = gm.estimate_training_peak(net, (16, 16, 16), 2, optimizer="adam")
    assert adam["optimizer_state"] == pytest.approx(2 * e["optimizer_state"])
    with pytest.raises(ValueError, match="optimizer"):
        gm.estimate_training_peak(net, (16, 16, 16), 2, optimizer="lion")


def test_calibration_sum_matches_constant():
    # SUM_GIB_H200 is this module's sum for the H200 network; a change to the counting must update it
    net = gm.nnunet_3d_fullres_unet(gm.H200_STRIDES, num_classes=2)
    e = gm.estimate_training_peak(net, gm.H200_PATCH, 2)
    assert e["sum"] == pytest.approx(gm.SUM_GIB_H200, rel=0.005)
    assert e["allocated"] == pytest.approx(gm.MEASURED_ALLOCATED_GIB_H200, rel=0.005)
    assert e["peak"] == pytest.approx(gm.NNUNET_PROXY_GB_H200, rel=0.005)  # nnU-Net's own budget for it
    assert 1.0 <= gm.FRAGMENTATION_FACTOR <= 1.3


def test_command_line(capsys):
    gm.main(["--patch", "32", "32", "32", "--batch", "1"])
    out = capsys.readouterr().out
    assert "peak" in out and "not validated on a GPU" in out


# ---------------------------------------------------------------------------------------------- chooser

def _build(patch):
    # the depth depends on the patch, as nnU-Net's topology does: stride 2 while every axis keeps >= 4 voxels
    stages = 1 + min(int(math.log2(min(patch) // 4)), 3)
    return tiny_unet(stages)


CANDIDATES = [(16, 16, 16), (16, 32, 32), (32, 32, 32)]


def _peak(patch, batch):
    return gm.estimate_training_peak(_build(patch), patch, batch)["peak"]


def test_chooser_takes_largest_fitting_patch_then_grows_batch():
    target = (_peak((16, 32, 32), 2) + _peak((32, 32, 32), 2)) / 2
    patch, batch, est = gm.choose_patch_and_batch(_build, CANDIDATES, target, min_batch=2)
    assert patch == (16, 32, 32)
    assert batch >= 2 and est["batch_size"] == batch and est["peak"] <= target
    assert _peak(patch, batch + 1) > target
    # a target above the largest patch's needs picks it
    patch, batch, _ = gm.choose_patch_and_batch(_build, CANDIDATES, _peak((32, 32, 32), 3) + 1e-9, min_batch=2)
    assert (patch, batch) == ((32, 32, 32), 3)


def test_chooser_respects_min_batch_and_dataset_cap():
    # the largest patch fits at batch 1 but not at the minimum batch of 3: a smaller patch is taken
    target = (_peak((32, 32, 32), 1) + _peak((32, 32, 32), 3)) / 2
    if _peak((16, 32, 32), 3) < target:
        patch, batch, _ = gm.choose_patch_and_batch(_build, CANDIDATES, target, min_batch=3)
        assert patch != (32, 32, 32) and batch >= 3
    # 5 % of 40 patches of 32^3 = 2 patches per batch, whatever the memory allows
    patch, batch, _ = gm.choose_patch_and_batch(_build, CANDIDATES, 100.0, min_batch=1,
                                                dataset_voxels=40 * 32 ** 3)
    assert (patch, batch) == ((32, 32, 32), 2)
    # the cap never goes below min_batch
    _, batch, _ = gm.choose_patch_and_batch(_build, CANDIDATES, 100.0, min_batch=2, dataset_voxels=32 ** 3)
    assert batch == 2
    with pytest.raises(ValueError, match="no candidate patch fits"):
        gm.choose_patch_and_batch(_build, CANDIDATES, gm.CUDA_CONTEXT_GIB, min_batch=2)
    with pytest.raises(ValueError, match="min_batch"):
        gm.choose_patch_and_batch(_build, CANDIDATES, 24, min_batch=0)


# ---------------------------------------------------------------------------------------------- target

def test_gpu_targets_and_environment():
    assert gm.GPU_TARGETS_GB == {"11GB": 11, "24GB": 24, "40GB": 40, "80GB": 80}
    assert gm.gpu_memory_target_gb({}) == 24
    assert gm.gpu_memory_target_gb({gm.GPU_MEMORY_ENV: ""}, default=11) == 11
    assert gm.gpu_memory_target_gb({gm.GPU_MEMORY_ENV: " 40 "}) == 40
    assert gm.gpu_memory_target_gb({gm.GPU_MEMORY_ENV: "10.5"}) == 10.5
    assert gm.gpu_memory_target_gb({gm.GPU_MEMORY_ENV: "80gb"}) == 80
    assert gm.parse_gpu_memory_gb(24) == 24.0


@pytest.mark.parametrize("junk", ["abc", "24 GiB", "nan", "inf", "-8", "0", "1.5", "1e400"])
def test_gpu_target_junk(junk):
    with pytest.raises(ValueError, match=gm.GPU_MEMORY_ENV):
        gm.gpu_memory_target_gb({gm.GPU_MEMORY_ENV: junk})


@pytest.mark.parametrize("junk", ["x", float("nan"), 1])
def test_parse_gpu_target_junk(junk):
    with pytest.raises(ValueError, match="GPU memory target"):
        gm.parse_gpu_memory_gb(junk)


@pytest.mark.parametrize("junk", [True, None])
def test_parse_gpu_target_wrong_type(junk):
    with pytest.raises(TypeError, match="GPU memory target"):
        gm.parse_gpu_memory_gb(junk)
