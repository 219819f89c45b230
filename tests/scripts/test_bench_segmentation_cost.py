"""Pieces of the cost part of scripts/bench_segmentation.py (tests/cli/test_bench.py runs it end to end)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from tests.conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_segmentation")


def tiny_unet(deep_supervision=True):
    torch.manual_seed(0)
    return PlainConvUNet(input_channels=1, n_stages=3, features_per_stage=(4, 8, 8), conv_op=nn.Conv3d,
                         kernel_sizes=3, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=1, num_classes=2,
                         n_conv_per_stage_decoder=1, conv_bias=True, norm_op=nn.InstanceNorm3d,
                         norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                         nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
def test_peak_rss_sees_a_transient_allocation(bench):
    with bench.PeakRSS() as rss:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        import time

        time.sleep(0.02)  # several sampling intervals
        del block
    assert 48 <= rss.growth_bytes / 2**20 <= 128, rss.growth_bytes / 2**20
    if rss.live_growth_bytes is not None:  # glibc 2.33+
        assert 60 <= rss.live_growth_bytes / 2**20 <= 80, rss.live_growth_bytes / 2**20


def test_z_margin_crops_every_scale_and_counts_loss_voxels(bench):
    full = [torch.zeros(1, 2, 16, 8, 8), torch.zeros(1, 2, 16, 4, 4)]  # DualStream-like: z kept at every scale
    assert [t.shape[2] for t in bench._crop_z(full, 3, 16)] == [10, 10]
    pooled = [torch.zeros(1, 2, 16, 8, 8), torch.zeros(1, 2, 8, 4, 4), torch.zeros(1, 2, 1, 2, 2)]
    assert [t.shape[2] for t in bench._crop_z(pooled, 2, 16)] == [12, 6, 1]
    assert bench._crop_z(full, 0, 16)[0] is full[0]
    assert bench._loss_voxels([16, 8, 8], 3) == 10 * 64 and bench._loss_voxels([16, 8, 8], 0, batch=2) == 2048


def test_fitting_patch_caps_at_stride_multiples_the_network_runs_on(bench):
    net = tiny_unet()
    # stride product 4: the largest multiple under the cap; 4 x 4 x 4 would leave a 1-voxel bottleneck, which
    # instance norm refuses in training: z takes the next multiple
    assert bench._fitting_patch(net, [32, 64, 64], 26, None, [4, 4, 4], 0) == [32, 24, 24]
    assert bench._fitting_patch(net, [32, 64, 64], 4, 4, [4, 4, 4], 0) == [8, 4, 4]
    assert bench._fitting_patch(net, [32, 64, 64], None, 6, [4, 4, 4], 1) == [4, 64, 64]  # z > 2 z_margin
    assert bench._fitting_patch(net, [32, 64, 64], None, None, [4, 4, 4], 0) == [32, 64, 64]
    assert bench._fitting_patch(net, [32, 64, 64], 128, None, [4, 4, 4], 0) == [32, 64, 64]
    assert all(p.device.type == "cpu" for p in net.parameters())


def test_measure_step_crops_the_margin_before_the_loss(bench):
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    seen = []

    class Recording(DeepSupervisionWrapper):
        def forward(self, *args):
            seen.append([tuple(t.shape) for t in args[0]] + [tuple(t.shape) for t in args[1]])
            return super().forward(*args)

    loss = Recording(DC_and_BCE_loss({}, {"batch_dice": True, "do_bg": True, "smooth": 1e-5, "ddp": False}),
                     [2 / 3, 1 / 3])
    net = tiny_unet()
    net.z_margin = 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = bench.measure_step(net, loss, [[1, 1, 1], [0.5, 0.5, 0.5]], [16, 16, 16], 2,
                               device="cpu", precision="fp32", steps=1)
    finally:
        torch.set_num_threads(threads)
    assert m["output_voxels"] == 12 * 16 * 16 and m["step_s"] > 0 and m["step_ms_per_mvoxel"] > 0
    # outputs, then targets: 16 slices less 2 x 2 at full resolution, the margin halved where z is pooled
    assert seen[-1] == [(1, 2, 12, 16, 16), (1, 2, 6, 8, 8)] * 2
    assert len(seen) == 3  # warm-up, one timed step, the memory step


def test_ratios_against_the_3d_unet(bench):
    models = {"3D U-Net": {"params": 10, "flops_per_voxel": 4.0, "predict_s_per_case": 2.0},
              "DualStream": {"params": 5, "flops_per_voxel": 3.0, "cpu_fp32_step_ms_per_mvoxel": 7.0}}
    bench.add_cost_ratios(models)
    assert models["3D U-Net"]["vs_3d_unet"] == {"params": 1.0, "flops_per_voxel": 1.0, "predict_s_per_case": 1.0}
    assert models["DualStream"]["vs_3d_unet"] == {"params": 0.5, "flops_per_voxel": 0.75}
    assert models["DualStream"]["flops_ratio_vs_3d_unet"] == 0.75
    assert "| DualStream |" in "\n".join(bench.cost_markdown({"models": models, "settings": {"case": [1, 2, 3]}}))
