"""The segmentation trainers through the stock nnU-Net commands: train -> predict -> evaluate, resume,
find_best_configuration, HU checks, and every trainer building its network from its own plans."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import nnunet_liver.trainers as trainers
from tests.nnunet.test_stock_commands import assert_ok, stock

BUDGET = {"NNUNET_LIVER_EPOCHS": "1", "NNUNET_LIVER_ITERS": "2", "NNUNET_LIVER_VAL_ITERS": "1",
          "NNUNET_LIVER_SEED": "0"}


@pytest.fixture(scope="module")
def trained(tiny_phantoms, tmp_path_factory):
    """DualStreamTrainer_CPU and LiverUNetTrainer_CPU (3d_fullres, fold 0, --npz), trained once."""
    env = dict(tiny_phantoms, **BUDGET)
    env["nnUNet_results"] = str(tmp_path_factory.mktemp("results"))
    cwd = Path(env["nnUNet_results"])
    logs = {}
    for tr in ("DualStreamTrainer_CPU", "LiverUNetTrainer_CPU"):
        proc = stock(["nnUNetv2_train", "990", "3d_fullres", "0", "-tr", tr, "-device", "cpu", "--npz"],
                     env, "fork", cwd)
        assert_ok(proc)
        logs[tr] = proc.stdout
    return env, logs


def model_dir(env, trainer, config="3d_fullres") -> Path:
    return Path(env["nnUNet_results"]) / "Dataset990_LiverPhantom" / f"{trainer}__nnUNetPlans__{config}"


@pytest.mark.slow
def test_dual_stream_plans_and_regions_are_saved_for_the_predictor(trained):
    env, logs = trained
    out = model_dir(env, "DualStreamTrainer_CPU")
    plans = json.loads((out / "plans.json").read_text(encoding="utf-8"))
    cfg = plans["configurations"]["3d_fullres"]
    arch = cfg["architecture"]
    assert arch["network_class_name"] == "nnunet_liver.architectures.dual_stream.DualStreamAttentionNet"
    assert all(s[0] == 1 for s in arch["arch_kwargs"]["strides"])
    assert arch["arch_kwargs"]["window"]["level_range"] == [12.0, 130.0]
    assert cfg["patch_size"][0] == 16  # the CPU preset's 16 slices (nnU-Net pads shorter volumes)
    assert arch["arch_kwargs"]["n_slices"] == 7
    assert len(arch["arch_kwargs"]["context_strides"]) == len(arch["arch_kwargs"]["context_features_per_stage"])
    ds = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert ds["labels"]["liver"] == [1, 2] and ds["regions_class_order"] == [1, 2]
    ckpt = torch.load(out / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["inference_allowed_mirroring_axes"] is None  # CPU variants: no test-time mirroring
    assert list((out / "fold_0" / "validation").glob("*.npz"))  # --npz kept the probabilities
    summary = json.loads((out / "fold_0" / "validation" / "summary.json").read_text(encoding="utf-8"))
    assert "mean" in summary and summary["foreground_mean"]["Dice"] >= 0


@pytest.mark.slow
@pytest.mark.parametrize("start_method, workers", [("fork", "0"), ("spawn", "1")])
def test_predict_and_evaluate_dual_stream(trained, tmp_path, start_method, workers):
    """Stock nnUNetv2_predict in its own process (-npp 0 -nps 0, as the demo runs it on the CPU) and with
    its worker processes, which nnU-Net always starts by spawn."""
    env, _ = trained
    raw = Path(env["nnUNet_raw"]) / "Dataset990_LiverPhantom"
    pred = tmp_path / "pred"
    proc = stock(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(pred), "-d", "990", "-c",
                  "3d_fullres", "-f", "0", "-tr", "DualStreamTrainer_CPU", "-device", "cpu", "-npp", workers,
                  "-nps", workers], env, start_method, tmp_path)
    assert_ok(proc)
    for img_path in sorted((raw / "imagesTs").glob("*_0000.nii.gz")):
        img = sitk.ReadImage(str(img_path))
        seg = sitk.ReadImage(str(pred / img_path.name.replace("_0000", "")))
        assert seg.GetSize() == img.GetSize() and seg.GetSpacing() == pytest.approx(img.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1, 2}

    if start_method == "fork":  # nnU-Net's own evaluation reads the regions from the model's dataset.json
        model = model_dir(env, "DualStreamTrainer_CPU")
        proc = stock(["nnUNetv2_evaluate_folder", str(raw / "labelsTs"), str(pred), "-djfile",
                      str(model / "dataset.json"), "-pfile", str(model / "plans.json"), "-np", "1"],
                     env, start_method, tmp_path)
        assert_ok(proc)
        assert json.loads((pred / "summary.json").read_text(encoding="utf-8"))["foreground_mean"]["Dice"] >= 0
        (pred / "summary.json").unlink()

    from nnunet_liver.cli.main import main

    assert main(["evaluate", str(raw / "labelsTs"), str(pred), "-o", str(tmp_path / "eval"), "-np", "1",
                 "--no-progress"]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text(encoding="utf-8"))
    assert summary  # the LiTS metric set ran on the stock predictions


@pytest.mark.slow
def test_resume_from_checkpoint(trained):
    env, _ = trained
    env = dict(env, NNUNET_LIVER_EPOCHS="2")
    proc = stock(["nnUNetv2_train", "990", "3d_fullres", "0", "-tr", "LiverUNetTrainer_CPU", "-device", "cpu",
                  "--c", "--npz"], env, "fork", Path(env["nnUNet_results"]))
    assert_ok(proc)
    assert "Epoch 1" in proc.stdout and "Epoch 0\n" not in proc.stdout  # continued, not restarted
    ckpt = torch.load(model_dir(env, "LiverUNetTrainer_CPU") / "fold_0" / "checkpoint_final.pth",
                      map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 2


@pytest.mark.slow
def test_find_best_configuration(trained):
    env, _ = trained
    proc = stock(["nnUNetv2_find_best_configuration", "990", "-c", "3d_fullres", "-tr", "DualStreamTrainer_CPU",
                  "LiverUNetTrainer_CPU", "-f", "0", "-np", "1"], env, "fork", Path(env["nnUNet_results"]))
    assert_ok(proc)
    inference = Path(env["nnUNet_results"]) / "Dataset990_LiverPhantom" / "inference_information.json"
    assert inference.is_file()
    assert "DualStreamTrainer_CPU" in inference.read_text(encoding="utf-8")


@pytest.mark.slow
def test_2d_unet_baseline(tiny_phantoms, tmp_path):
    env = dict(tiny_phantoms, **BUDGET)
    env["nnUNet_results"] = str(tmp_path)
    assert_ok(stock(["nnUNetv2_train", "990", "2d", "0", "-tr", "LiverUNetTrainer_CPU", "-device", "cpu"],
                    env, "fork", tmp_path))
    plans = json.loads((model_dir(env, "LiverUNetTrainer_CPU", "2d") / "plans.json").read_text(encoding="utf-8"))
    arch = plans["configurations"]["2d"]["architecture"]
    assert arch["network_class_name"].endswith("WindowedPlainConvUNet")
    assert arch["arch_kwargs"]["window"]["p_level"] == 0.0  # the fixed window of the baselines


@pytest.mark.slow
def test_trainer_refuses_z_scored_data(tiny_phantoms, tmp_path, monkeypatch):
    """Plans from stock nnU-Net planning (CTNormalization): a clear message naming the command to run."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset

    env = dict(tiny_phantoms)
    env["nnUNet_results"] = str(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    plan_experiment_dataset(990, overwrite_plans_name="StockPlans")
    proc = stock(["nnUNetv2_train", "990", "3d_fullres", "0", "-tr", "DualStreamTrainer_CPU", "-p", "StockPlans",
                  "-device", "cpu"], env, "fork", tmp_path)
    assert proc.returncode != 0
    assert "needs raw Hounsfield units" in proc.stderr and "CTNormalization" in proc.stderr
    assert "nnunet-liver plan_and_preprocess -d 990" in proc.stderr


# ---- in-process: every trainer builds the network its rewritten plans describe ----------------------------

def _plans_and_json(env):
    pre = Path(env["nnUNet_preprocessed"]) / "Dataset990_LiverPhantom"
    plans = json.loads((pre / "nnUNetPlans.json").read_text(encoding="utf-8"))
    return plans, json.loads((pre / "dataset.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", [n for n in trainers.__all__ if n != "LiverSmokeTrainer"])
def test_every_trainer_builds_a_network_matching_nnunet_targets(name, tiny_phantoms, tmp_path, monkeypatch):
    for k, v in dict(tiny_phantoms, nnUNet_results=str(tmp_path)).items():
        monkeypatch.setenv(k, v)
    plans, dataset_json = _plans_and_json(tiny_phantoms)
    cls = getattr(trainers, name)
    config = "3d_fullres"
    t = cls(dict(plans, continue_training=False), config, 0, dataset_json, device=torch.device("cpu"))
    net = cls.build_network_architecture(t.plans_manager, t.configuration_manager, 1,
                                         t.label_manager.num_segmentation_heads, True)
    patch = t.configuration_manager.patch_size
    out = net(torch.full((2, 1, *patch), 50.0))
    scales = t._get_deep_supervision_scales()
    assert len(out) == len(scales)  # nnU-Net's DeepSupervisionWrapper would silently truncate a mismatch
    for o, s in zip(out, scales):
        assert list(o.shape[2:]) == [round(p * f) for p, f in zip(patch, s)]
        assert o.shape[1] == 2  # regions liver, tumour
    assert t.label_manager.has_regions
    window = net.window.config
    rwa = {"LiverUNetRWATrainer", "DualStreamTrainer", "DualStreamBNTrainer", "DualStreamPatchNormTrainer",
           "DualStreamAblationRWATrainer", "DualStreamAblationRWAAttTrainer"}
    assert window.is_random == (name.split("_")[0] in rwa)
    # only the norm variants swap the spatial stream's per-slice instance norm
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == (name.startswith("DualStreamBN"))
    from nnunet_liver.blocks.norm import PatchInstanceNorm2d

    patch_norm = any(isinstance(m, PatchInstanceNorm2d) for m in net.modules())
    assert patch_norm == name.startswith("DualStreamPatchNorm")


def test_dual_stream_plans_fit_the_gpu_memory_target_at_a_lits_plan(monkeypatch):
    from nnunet_liver.planners.lits_like import lits_like_plans

    monkeypatch.delenv("NNUNET_LIVER_GPU_MEMORY_GB", raising=False)

    plans, _ = lits_like_plans()
    small = trainers.DualStreamTrainer_11GB.rewrite_plans(plans, "3d_fullres")["configurations"]["3d_fullres"]
    default = trainers.DualStreamTrainer.rewrite_plans(plans, "3d_fullres")["configurations"]["3d_fullres"]
    for cfg, target in ((small, 11), (default, 24)):
        plan = cfg["gpu_memory_plan"]
        assert plan["target_gib"] == target and 0 < plan["estimated_peak_gib"] <= target
        assert cfg["patch_size"][0] == 32 and cfg["batch_size"] >= 2
    voxels = [cfg["batch_size"] * np.prod(cfg["patch_size"]) for cfg in (small, default)]
    assert voxels[0] < voxels[1]
    # the ablation steps train on DualStream's patches
    ablation = trainers.DualStreamAblationBaseTrainer.rewrite_plans(plans, "3d_fullres")["configurations"]["3d_fullres"]
    assert (ablation["patch_size"], ablation["batch_size"]) == (default["patch_size"], default["batch_size"])


def test_only_the_norm_variants_write_a_spatial_norm_into_the_plans():
    from nnunet_liver.planners.lits_like import lits_like_plans

    plans, _ = lits_like_plans()

    def arch(cls):
        return cls.rewrite_plans(plans, "3d_fullres")["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]

    # DualStreamTrainer's plans stay as they were, so models trained before still load the same network
    assert "spatial_norm" not in arch(trainers.DualStreamTrainer)
    assert "spatial_norm" not in arch(trainers.DualStreamTrainer_CPU)
    assert arch(trainers.DualStreamBNTrainer)["spatial_norm"] == "batch"
    assert arch(trainers.DualStreamBNTrainer_CPU)["spatial_norm"] == "batch"
    assert arch(trainers.DualStreamPatchNormTrainer)["spatial_norm"] == "patch_instance"
    assert arch(trainers.DualStreamPatchNormTrainer_CPU)["spatial_norm"] == "patch_instance"


def test_gpu_memory_target_from_the_environment(monkeypatch):
    from nnunet_liver.planners.lits_like import lits_like_plans

    plans, _ = lits_like_plans()
    monkeypatch.setenv("NNUNET_LIVER_GPU_MEMORY_GB", "junk")
    with pytest.raises(ValueError, match="NNUNET_LIVER_GPU_MEMORY_GB"):
        trainers.DualStreamTrainer.rewrite_plans(plans, "3d_fullres")
    # the named variants keep their target whatever the environment says
    monkeypatch.setenv("NNUNET_LIVER_GPU_MEMORY_GB", "80")
    cfg = trainers.DualStreamTrainer_11GB.rewrite_plans(plans, "3d_fullres")["configurations"]["3d_fullres"]
    assert cfg["gpu_memory_plan"]["target_gib"] == 11
    # nnU-Net's rule: one batch covers at most 5 % of the data set
    few = trainers.DualStreamTrainer_11GB.rewrite_plans(plans, "3d_fullres", dataset_json={"numTraining": 3})
    assert few["configurations"]["3d_fullres"]["batch_size"] == 2


def test_dual_stream_refuses_a_model_folder_planned_differently(tmp_path):
    from types import SimpleNamespace

    from nnunet_liver.trainers.segmentation import DualStreamTrainer

    cfg = {"patch_size": [32, 512, 512], "batch_size": 3, "architecture": {"arch_kwargs": {"n_slices": 7}}}
    plans = {"configurations": {"3d_fullres": cfg}}
    trainer = SimpleNamespace(output_folder_base=str(tmp_path), plans_manager=SimpleNamespace(plans=plans))
    DualStreamTrainer._check_saved_plans(trainer, "3d_fullres")  # no saved plans yet
    (tmp_path / "plans.json").write_text(json.dumps(plans), encoding="utf-8")
    DualStreamTrainer._check_saved_plans(trainer, "3d_fullres")  # the same plans (another fold, --c)
    other = {"configurations": {"3d_fullres": dict(cfg, patch_size=[32, 448, 448], batch_size=2)}}
    (tmp_path / "plans.json").write_text(json.dumps(other), encoding="utf-8")
    with pytest.raises(RuntimeError, match="NNUNET_LIVER_GPU_MEMORY_GB"):
        DualStreamTrainer._check_saved_plans(trainer, "3d_fullres")


class _Recorder(torch.nn.Module):
    """Stands in for the network in DualStreamTrainer._without_z_margin: returns what it is given."""

    def forward(self, x):
        return [x, x[:, :, :, ::2, ::2]]


def test_dual_stream_steps_leave_the_z_margin_out_of_the_loss():
    from types import SimpleNamespace

    from nnunet_liver.trainers.segmentation import DualStreamTrainer

    trainer = SimpleNamespace(z_margin=3, network=_Recorder())
    data = torch.arange(10.0).view(1, 1, 10, 1, 1).expand(1, 1, 10, 4, 4).contiguous()
    target = [data.clone(), data[:, :, :, ::2, ::2].clone()]
    seen = {}

    def step(batch):  # what nnU-Net's train_step does with the batch
        out = trainer.network(batch["data"])
        seen["out"], seen["target"] = out, batch["target"]
        return {"loss": 0.0}

    DualStreamTrainer._without_z_margin(trainer, step, {"data": data, "target": target})
    for o, t in zip(seen["out"], seen["target"]):
        assert o.shape[2] == t.shape[2] == 4
        assert o[0, 0, :, 0, 0].tolist() == t[0, 0, :, 0, 0].tolist() == [3.0, 4.0, 5.0, 6.0]
    assert len(trainer.network._forward_hooks) == 0  # removed again
    assert trainer.network(data)[0].shape[2] == 10
    # a patch too thin for a margin is left alone
    DualStreamTrainer._without_z_margin(trainer, step, {"data": data[:, :, :6], "target": [t[:, :, :6] for t in target]})
    assert seen["out"][0].shape[2] == seen["target"][0].shape[2] == 6


def test_hu_training_transforms_drop_hu_meaningless_intensity_augmentation():
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.utils.random import RandomTransform
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_liver.trainers.segmentation import HU_NOISE_VARIANCE, LiverHUTrainerBase

    args = dict(patch_size=(8, 32, 32), rotation_for_DA=(0, 0), deep_supervision_scales=None,
                mirror_axes=(0, 1, 2), do_dummy_2d_data_aug=True, regions=[(1, 2), (2,)])
    stock = nnUNetTrainer.get_training_transforms(**args)
    ours = LiverHUTrainerBase.get_training_transforms(**args)

    def inner(ts):
        return [t.transform if isinstance(t, RandomTransform) else t for t in ts.transforms]

    assert any(isinstance(t, (MultiplicativeBrightnessTransform, GammaTransform)) for t in inner(stock))
    kinds = inner(ours)
    assert not any(isinstance(t, (MultiplicativeBrightnessTransform, GammaTransform)) for t in kinds)
    assert len(kinds) == len(inner(stock)) - 4  # brightness, contrast and both gammas
    noise = [t for t in kinds if isinstance(t, GaussianNoiseTransform)]
    assert noise and noise[0].noise_variance == HU_NOISE_VARIANCE
    assert all(not t.benchmark for t in kinds if isinstance(t, GaussianBlurTransform))
    # the pipeline still runs on an HU patch and keeps image/label aligned in shape
    out = ours(image=torch.full((1, 8, 32, 32), 60.0), segmentation=torch.zeros((1, 8, 32, 32), dtype=torch.int16))
    assert out["image"].shape == (1, 8, 32, 32)


@pytest.mark.slow
def test_dual_stream_trains_under_spawn(tiny_phantoms, tmp_path):
    """Under spawn the augmentation workers unpickle the trainer's transforms: they must be importable."""
    env = dict(tiny_phantoms, **BUDGET, nnUNet_n_proc_DA="1")
    env["nnUNet_results"] = str(tmp_path)
    proc = stock(["nnUNetv2_train", "990", "3d_fullres", "0", "-tr", "DualStreamTrainer_CPU", "-device", "cpu"],
                 env, "spawn", tmp_path)
    assert_ok(proc)
    assert (model_dir(env, "DualStreamTrainer_CPU") / "fold_0" / "checkpoint_final.pth").is_file()


@pytest.mark.slow
def test_real_ct_convert_predict_submit_keeps_geometry(trained, real_dir, tmp_path):
    """The real CT with scanner geometry (direction diag(-1, -1, 1)) through convert -> stock predict with
    our trainer -> submit: the submitted segmentation has exactly the test volume's grid."""
    import zipfile

    from nnunet_liver.cli.main import main

    env, _ = trained
    src = tmp_path / "lits"
    src.mkdir()
    ct = sitk.ReadImage(str(real_dir / "totalseg_abdomen_ct.nii.gz"))
    sitk.WriteImage(ct, str(src / "test-volume-0.nii"), useCompression=False)
    raw = tmp_path / "raw"
    assert main(["convert", "lits", str(src), "-o", str(raw), "-np", "1", "--no-progress"]) == 0
    pred = tmp_path / "pred"
    proc = stock(["nnUNetv2_predict", "-i", str(raw / "Dataset501_LiTS" / "imagesTs"), "-o", str(pred), "-d", "990",
                  "-c", "3d_fullres", "-f", "0", "-tr", "DualStreamTrainer_CPU", "-device", "cpu", "-npp", "0",
                  "-nps", "0"], env, "fork", tmp_path)
    assert_ok(proc)
    out = tmp_path / "submission.zip"
    assert main(["submit", str(pred), "--test-images", str(src), "-o", str(out), "--mapping",
                 str(raw / "Dataset501_LiTS" / "case_mapping.json"), "--no-progress"]) == 0
    with zipfile.ZipFile(out) as z:
        assert z.namelist() == ["test-segmentation-0.nii"]
        z.extract("test-segmentation-0.nii", tmp_path / "unzipped")
    seg = sitk.ReadImage(str(tmp_path / "unzipped" / "test-segmentation-0.nii"))
    assert seg.GetSize() == ct.GetSize()
    assert seg.GetSpacing() == ct.GetSpacing() and seg.GetOrigin() == ct.GetOrigin()
    assert seg.GetDirection() == ct.GetDirection()
    assert seg.GetPixelID() == sitk.sitkUInt8
    assert main(["submit", "--check", str(out), "--test-images", str(src)]) == 0
