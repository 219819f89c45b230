"""The CPU presets' short-budget recipe: the one-cycle schedule, the CPU-seconds budget, bf16 detection and
the RWA control's window."""
from __future__ import annotations

import pytest
import torch

import nnunet_liver.trainers as trainers
from nnunet_liver.augment.window import PAPER
from nnunet_liver.trainers import _mixins
from nnunet_liver.trainers.cpu import cpu_budget_from_env


def test_one_cycle_warms_up_then_decays():
    lr = [_mixins.one_cycle_lr(1.0, t / 100) for t in range(101)]
    peak = max(range(101), key=lr.__getitem__)
    assert peak == 10 and lr[peak] == pytest.approx(1.0)
    assert lr[0] == pytest.approx(0.04) and lr[100] == pytest.approx(0.01)
    assert all(a <= b for a, b in zip(lr[:11], lr[1:11]))  # warm-up rises
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))  # then falls
    assert _mixins.one_cycle_lr(1.0, 7.0) == pytest.approx(0.01)  # past the end: the floor


def test_schedule_follows_iterations_or_cpu_seconds(monkeypatch):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = _mixins.OneCycleSchedule(opt, 1.0, total_iterations=100, iterations_per_epoch=10)
    s.step(5)  # nnU-Net at the start of epoch 5 (also after --c)
    assert s.iteration == 50 and opt.param_groups[0]["lr"] == pytest.approx(_mixins.one_cycle_lr(1.0, 0.5))
    s.step_iteration()
    assert opt.param_groups[0]["lr"] == pytest.approx(_mixins.one_cycle_lr(1.0, 0.51))

    clock = [100.0]
    monkeypatch.setattr(_mixins.time, "process_time", lambda: clock[0])
    c = _mixins.OneCycleSchedule(opt, 1.0, total_iterations=10**9, iterations_per_epoch=10, cpu_seconds=60.0)
    c.start()
    clock[0] = 130.0  # half the CPU budget spent, whatever the iterations
    c.step_iteration()
    assert c.cpu_spent() == pytest.approx(30.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(_mixins.one_cycle_lr(1.0, 0.5))


def test_cpu_seconds_budget_from_the_environment():
    assert cpu_budget_from_env({})["cpu_seconds"] is None
    b = cpu_budget_from_env({"NNUNET_LIVER_CPU_SECONDS": "90", "NNUNET_LIVER_ITERS": "50"})
    assert b["cpu_seconds"] == 90.0 and b["num_iterations_per_epoch"] == 50
    assert cpu_budget_from_env({"NNUNET_LIVER_CPU_SECONDS": ""})["cpu_seconds"] is None


def test_bf16_detection_reads_cpu_flags(monkeypatch, tmp_path):
    import builtins

    real_open = builtins.open

    def fake(flags):
        def _open(path, *a, **k):
            if path == "/proc/cpuinfo":
                p = tmp_path / "cpuinfo"
                p.write_text(f"processor\t: 0\nflags\t\t: {flags}\n", encoding="utf-8")
                return real_open(p, *a, **k)
            return real_open(path, *a, **k)
        return _open

    monkeypatch.setattr(builtins, "open", fake("fpu sse2 avx2 avx512f avx512_bf16"))
    assert _mixins.cpu_bf16_supported()
    monkeypatch.setattr(builtins, "open", fake("fpu sse2 avx2 avx512f"))
    assert not _mixins.cpu_bf16_supported()


@pytest.mark.parametrize("name", ["DualStreamRWAControlTrainer_CPU", "LiverUNetRWAControlTrainer_CPU"])
def test_rwa_control_holds_rwa_evaluation_window_with_rwa_normalisation(name):
    cls = getattr(trainers, name)
    kwargs = cls.window_kwargs({"foreground_intensity_properties_per_channel": {"0": {"mean": 100.0, "std": 30.0}}})
    w = kwargs["window"]
    assert (w["level"], w["width"], w["eval_level"], w["eval_width"]) == (
        PAPER.eval_level, PAPER.eval_width, PAPER.eval_level, PAPER.eval_width)
    assert w["p_level"] == 0 and w["p_width"] == 0
    assert "window_mean" not in kwargs  # RWA's fixed normalisation, not the data set's z-score
    twin = trainers.DualStreamNoRWATrainer_CPU.window_kwargs(
        {"foreground_intensity_properties_per_channel": {"0": {"mean": 100.0, "std": 30.0}}})
    assert "window_mean" in twin


def test_non_positive_cpu_seconds_are_refused():
    with pytest.raises(ValueError, match="NNUNET_LIVER_CPU_SECONDS"):
        cpu_budget_from_env({"NNUNET_LIVER_CPU_SECONDS": "0"})


@pytest.mark.slow
def test_cpu_seconds_budget_ends_training_with_a_final_checkpoint_and_curve(tiny_phantoms, tmp_path):
    """Stock nnUNetv2_train with a CPU-seconds budget: training stops at an epoch boundary once the budget is
    spent (long before the epoch cap), then nnU-Net writes the final checkpoint and validates as usual."""
    import json
    from pathlib import Path

    from tests.nnunet.test_stock_commands import assert_ok, stock

    env = dict(tiny_phantoms, NNUNET_LIVER_CPU_SECONDS="4", NNUNET_LIVER_EPOCHS="500", NNUNET_LIVER_ITERS="2",
               NNUNET_LIVER_VAL_ITERS="1", NNUNET_LIVER_SEED="0", nnUNet_n_proc_DA="0",
               nnUNet_results=str(tmp_path / "results"))
    proc = stock(["nnUNetv2_train", "990", "3d_fullres", "0", "-tr", "LiverUNetTrainer_CPU", "-device", "cpu"],
                 env, "fork", tmp_path)
    assert_ok(proc)
    model = Path(env["nnUNet_results"]) / "Dataset990_LiverPhantom" / "LiverUNetTrainer_CPU__nnUNetPlans__3d_fullres"
    fold = model / "fold_0"
    curve = json.loads((fold / "learning_curve.json").read_text(encoding="utf-8"))
    assert 1 <= len(curve) < 500
    assert [e["epoch"] for e in curve] == list(range(len(curve)))
    assert curve[-1]["iterations"] == 2 * len(curve)
    cpu = [e["cpu_seconds"] for e in curve]
    assert cpu == sorted(cpu) and cpu[-1] >= 4 * 0.5  # stopped around the budget, not at the first epoch
    assert "CPU budget of 4 s spent" in proc.stdout
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()


class _FakeNNUNet:
    """nnU-Net's configure_rotation_dummyDA_mirroring_and_inital_patch_size for an anisotropic 3D patch."""

    def __init__(self, patch_size):
        self.configuration_manager = type("CM", (), {"patch_size": patch_size})()
        self.logged = []

    def print_to_log_file(self, *args, **kwargs):
        self.logged.append(" ".join(map(str, args)))

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        import math

        import numpy as np

        self.inference_allowed_mirroring_axes = (0, 1, 2)
        dummy_2d = max(self.configuration_manager.patch_size) / self.configuration_manager.patch_size[0] > 3
        return (-math.pi, math.pi), dummy_2d, np.array([16, 136, 136]), (0, 1, 2)


class _ShortDA(_mixins.ShortBudgetAugmentationMixin, _FakeNNUNet):
    pass


@pytest.mark.parametrize("patch", [(16, 96, 96), (32, 48, 48)])
def test_short_budget_augmentation_neither_mirrors_nor_turns_far(monkeypatch, patch):
    import math

    monkeypatch.delenv("NNUNET_LIVER_DA", raising=False)
    t = _ShortDA(patch)
    rotation, dummy_2d, initial, mirror_axes = t.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert mirror_axes is None and t.inference_allowed_mirroring_axes is None
    assert rotation == pytest.approx((-math.radians(15), math.radians(15)))
    assert dummy_2d == (patch == (16, 96, 96))
    # the crop before the spatial transform covers the patch turned by 15 degrees and scaled, no more
    assert list(initial) >= list(patch) and max(initial) < 1.6 * max(patch)
    if dummy_2d:
        assert initial[0] == patch[0]
    assert any("no mirroring" in line for line in t.logged)


def test_nnunet_augmentation_on_request_and_bad_values_refused(monkeypatch):
    monkeypatch.setenv("NNUNET_LIVER_DA", "nnunet")
    t = _ShortDA((16, 96, 96))
    assert t.configure_rotation_dummyDA_mirroring_and_inital_patch_size()[3] == (0, 1, 2)
    monkeypatch.setenv("NNUNET_LIVER_DA", "mirror")
    with pytest.raises(ValueError, match="NNUNET_LIVER_DA"):
        t.configure_rotation_dummyDA_mirroring_and_inital_patch_size()


def test_cpu_trainers_use_the_short_budget_augmentation():
    for name in ("DualStreamTrainer_CPU", "LiverUNetTrainer_CPU", "DualStreamAblationBaseTrainer_CPU"):
        assert issubclass(getattr(trainers, name), _mixins.ShortBudgetAugmentationMixin)
    assert not issubclass(trainers.DualStreamTrainer, _mixins.ShortBudgetAugmentationMixin)
