"""Segmentation trainers of the paper: the dual-stream network, its ablation chain, and the U-Net baselines.

Every trainer here reads raw HU (plans made by ``nnunet-liver plan_and_preprocess``), windows inside the
network (so validation and ``nnUNetv2_predict`` see exactly the training-time evaluation window), trains
the regions liver (labels 1+2) and tumour (label 2) with nnU-Net's Dice + BCE loss, and is configured
by class attributes, so each variant is a small subclass.

Intensity augmentation: nnU-Net's multiplicative brightness, contrast and gamma transforms are dropped.
On calibrated HU they move air, fat and water by up to 25 % (a scanner never does that), and they would
give the fixed-window baselines a different kind of intensity augmentation than the RWA models,
confounding the RWA ablation; random windowing is the CT-specific replacement. Gaussian noise is kept
with a variance in HU^2 (sigma up to 20 HU, about what nnU-Net's default gives on z-scored CT). Blur,
low-resolution simulation, spatial transforms and mirroring are unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import torch
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_liver.augment.window import PRESETS
from nnunet_liver.planners.api import plans_keep_hu
from nnunet_liver.planners.gpu_memory import gpu_memory_target_gb
from nnunet_liver.trainers import _plans

HU_NOISE_VARIANCE = (0.0, 400.0)  # HU^2
DROPPED_INTENSITY_TRANSFORMS = (MultiplicativeBrightnessTransform, ContrastTransform, GammaTransform)


class HUDataError(RuntimeError):
    """The preprocessed data are not raw HU (stock CT normalisation)."""


def require_hu(plans: dict, configuration: str, trainer: str) -> None:
    if not plans_keep_hu(plans, configuration):
        schemes = _plans.resolved_configuration(plans, configuration).get("normalization_schemes")
        name = plans.get("dataset_name", "this data set")
        raise HUDataError(
            f"{trainer} needs raw Hounsfield units, but {name} ({plans.get('plans_name')}, {configuration}) was "
            f"preprocessed with {schemes}: nnU-Net's stock planning z-scores CT, after which no window can be "
            f"applied. Run: nnunet-liver plan_and_preprocess -d {name.split('_')[0].replace('Dataset', '')} "
            f"--overwrite   (then train again)")


def liver_tumour_regions(dataset_json: dict) -> dict:
    """dataset.json with labels liver (1+2) and tumour (2) as overlapping regions, for Dice + BCE."""
    labels = dataset_json["labels"]
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        return dataset_json
    if sorted(int(v) for v in labels.values()) != [0, 1, 2]:
        raise ValueError(f"expected labels 0 background, 1 liver, 2 tumour, got {labels}")
    by_value = {int(v): k for k, v in labels.items()}
    new = dict(dataset_json)
    new["labels"] = {by_value[0]: 0, by_value[1]: [1, 2], by_value[2]: 2}
    new["regions_class_order"] = [1, 2]
    return new


def hu_training_transforms(composed):
    """nnU-Net's training transforms with the HU-meaningless intensity transforms removed (see module doc)."""
    kept = []
    for t in composed.transforms:
        inner = t.transform if isinstance(t, RandomTransform) else t
        if isinstance(inner, DROPPED_INTENSITY_TRANSFORMS):
            continue
        if isinstance(inner, GaussianNoiseTransform):
            inner.noise_variance = HU_NOISE_VARIANCE
        if isinstance(inner, GaussianBlurTransform):
            # Plain separable convolution, no FFT. With benchmark=True batchgeneratorsv2 also times an FFT
            # convolution in the augmentation workers; on an H200 machine (torch 2.11, forked workers) that path
            # aborted with heap corruption for the dual-stream's thin patches (scripts/gpu_check.py).
            inner.benchmark = False
        kept.append(t)
    composed.transforms = kept
    return composed


class LiverHUTrainerBase(nnUNetTrainer):
    """Shared behaviour; subclasses choose the network and window through class attributes."""

    #: window preset name (``nnunet_liver.augment.window.PRESETS``) applied inside the network
    window = "paper"
    #: a fixed window is followed by the data set's zero mean / unit variance (the paper's preprocessing);
    #: False keeps the RWA models' fixed normalisation (window [0, 1] -> [-2, 2])
    window_dataset_norm = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        require_hu(plans, configuration, type(self).__name__)
        plans = self.rewrite_plans(plans, configuration, dataset_json=dataset_json)
        dataset_json = liver_tumour_regions(dataset_json)
        super().__init__(plans, configuration, fold, dataset_json, device)

    @classmethod
    def window_kwargs(cls, plans: dict) -> dict:
        config = PRESETS[cls.window]
        kwargs = {"window": config.to_dict()}
        if not config.is_random and cls.window_dataset_norm:  # the paper's fixed window, then z-score
            kwargs["window_mean"], kwargs["window_std"] = _plans.window_constants(plans, config.to_dict())
        return kwargs

    @classmethod
    def rewrite_plans(cls, plans: dict, configuration: str, dataset_json: dict | None = None) -> dict:
        """The plans this trainer trains with (saved to its results folder, read by nnUNetv2_predict).
        ``dataset_json`` (optional) lets a rewrite use the data set's size."""
        raise NotImplementedError

    @staticmethod
    def get_training_transforms(*args, **kwargs):
        return hu_training_transforms(nnUNetTrainer.get_training_transforms(*args, **kwargs))


class LiverUNetTrainer(LiverHUTrainerBase):
    """Table 1 baselines: nnU-Net's planned plain U-Net (no attention) behind the paper's fixed window
    (-100..400 HU, then zero mean / unit variance). ``2d`` = 2D U-Net, ``3d_fullres`` = 3D U-Net."""

    window = "fixed_paper"

    @classmethod
    def rewrite_plans(cls, plans: dict, configuration: str, dataset_json: dict | None = None) -> dict:
        return _plans.windowed_unet_plans(plans, configuration, cls.window_kwargs(plans))


class LiverUNetRWATrainer(LiverUNetTrainer):
    """The U-Net baselines' RWA twin: same network, random window augmentation (paper ranges)."""

    window = "paper"


class LiverUNetRWAControlTrainer(LiverUNetTrainer):
    """RWA control for the U-Net: RWA's evaluation window (71/213.5 HU) and normalisation, held fixed."""

    window = "fixed_rwa_centre"
    window_dataset_norm = False


class DualStreamTrainer(LiverHUTrainerBase):
    """The paper's model: 2.5D ResNet-34 spatial stream (7 slices) with attention gates on every skip, a
    lower-resolution 3D contextual stream over the whole patch, fusion by concatenation; RWA; Dice + BCE.
    Use with 3d_fullres. The z_margin slices at each end of a training patch, whose 7-slice stacks would need
    slices outside it, are left out of the loss and of the online pseudo Dice."""

    window = "paper"
    use_attention = True
    use_context = True
    features_per_stage = (16, 32, 64, 128, 256)
    n_blocks_per_stage = (1, 3, 4, 6, 3)
    context_features_per_stage = (16, 32, 64, 128, 256)
    context_pool_inplane = 4
    context_channels = 32
    n_slices_patch = 32  # 26 slices in the loss; the contextual stream sees all 32 (>= 4 x the 7-slice stack)
    max_inplane = 512
    #: spatial-stream levels recomputed in the backward pass (issue 15: 0.4x the stored activations of the
    #: 3D U-Net per output voxel instead of 1.4x, for ~1.3x the step time of no checkpointing)
    checkpoint_stages = (0, 1, 2, 3)
    checkpoint_gates = True
    #: norm of the spatial stream's 2D layers: None keeps nnU-Net's instance norm (statistics of one slice),
    #: "batch" normalises over every slice of the batch, "patch_instance" over every slice of one patch (see
    #: DualStreamAttentionNet's spatial_norm)
    spatial_norm: str | None = None
    #: GPU memory the plans are made for (GiB); None: a fixed batch_size and the largest in-plane patch
    gpu_memory_gb: float | None = 24.0
    #: NNUNET_LIVER_GPU_MEMORY_GB overrides gpu_memory_gb (not for the named _11GB/_40GB/_80GB variants)
    gpu_memory_from_env = True
    batch_size = 2

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.z_margin = int(self.configuration_manager.network_arch_init_kwargs.get("n_slices", 7)) // 2
        self._check_saved_plans(configuration)

    def _check_saved_plans(self, configuration: str) -> None:
        """Refuse to train a fold of a model folder whose saved plans (another fold, or --c) differ: the plans
        depend on the GPU memory target, and nnU-Net keeps one plans.json per model folder for prediction."""
        saved = Path(self.output_folder_base) / "plans.json"
        if not saved.is_file():
            return
        mine = json.loads(json.dumps(self.plans_manager.plans))["configurations"][configuration]
        theirs = json.loads(saved.read_text(encoding="utf-8")).get("configurations", {}).get(configuration)
        keys = ("patch_size", "batch_size", "architecture")
        if theirs is not None and any(mine.get(k) != theirs.get(k) for k in keys):
            raise RuntimeError(
                f"{saved} holds other plans for {configuration} (patch {theirs.get('patch_size')}, batch "
                f"{theirs.get('batch_size')}) than this run (patch {mine.get('patch_size')}, batch "
                f"{mine.get('batch_size')}): every fold of a model must train with the same plans. Set "
                f"NNUNET_LIVER_GPU_MEMORY_GB as for the earlier folds (or unset it), or train into another "
                f"model folder (another trainer or plans name).")

    @classmethod
    def rewrite_plans(cls, plans: dict, configuration: str, dataset_json: dict | None = None) -> dict:
        gpu_gb = cls.gpu_memory_gb
        if gpu_gb is not None and cls.gpu_memory_from_env:
            gpu_gb = gpu_memory_target_gb(default=gpu_gb)
        dataset_voxels = None
        if dataset_json and dataset_json.get("numTraining"):
            median = _plans.resolved_configuration(plans, configuration)["median_image_size_in_voxels"]
            dataset_voxels = float(np.prod(median)) * int(dataset_json["numTraining"])
        return _plans.dual_stream_plans(
            plans, configuration, n_slices_patch=cls.n_slices_patch, max_inplane=cls.max_inplane,
            features_per_stage=cls.features_per_stage, n_blocks_per_stage=cls.n_blocks_per_stage,
            context_features_per_stage=cls.context_features_per_stage,
            context_pool_inplane=cls.context_pool_inplane, batch_size=cls.batch_size, gpu_memory_gb=gpu_gb,
            dataset_voxels=dataset_voxels,
            network_kwargs={"use_attention": cls.use_attention, "use_context": cls.use_context,
                            "context_channels": cls.context_channels,
                            "checkpoint_stages": list(cls.checkpoint_stages),
                            "checkpoint_gates": cls.checkpoint_gates,
                            **({"spatial_norm": cls.spatial_norm} if cls.spatial_norm is not None else {}),
                            **cls.window_kwargs(plans)})

    def train_step(self, batch: dict) -> dict:
        return self._without_z_margin(super().train_step, batch)

    def validation_step(self, batch: dict) -> dict:
        return self._without_z_margin(super().validation_step, batch)

    def _without_z_margin(self, step, batch: dict) -> dict:
        """Run nnU-Net's step with the z_margin end slices cropped from the targets and the network's outputs."""
        margin = self.z_margin
        target = batch["target"]
        depth = (target[0] if isinstance(target, list) else target).shape[2]
        if not margin or depth <= 2 * margin:
            return step(batch)

        def crop(t):
            return t[:, :, margin:t.shape[2] - margin]

        def crop_all(x):
            return [crop(t) for t in x] if isinstance(x, (list, tuple)) else crop(x)

        handle = self.network.register_forward_hook(lambda module, args, output: crop_all(output))
        try:
            return step({**batch, "target": crop_all(target)})
        finally:
            handle.remove()


class DualStreamTrainer_11GB(DualStreamTrainer):
    """DualStreamTrainer planned for an 11 GB GPU (e.g. RTX 2080 Ti), as nnU-Net's ResEnc M/L/XL presets."""

    gpu_memory_gb = 11.0
    gpu_memory_from_env = False


class DualStreamTrainer_40GB(DualStreamTrainer):
    """DualStreamTrainer planned for a 40 GB GPU (A100 40GB)."""

    gpu_memory_gb = 40.0
    gpu_memory_from_env = False


class DualStreamTrainer_80GB(DualStreamTrainer):
    """DualStreamTrainer planned for an 80 GB GPU (A100/H100 80GB)."""

    gpu_memory_gb = 80.0
    gpu_memory_from_env = False


class DualStreamBNTrainer(DualStreamTrainer):
    """DualStream with batch norm in the spatial stream (ResNet's own norm) instead of nnU-Net's instance norm:
    a 2D instance norm normalises each slice by its own statistics, a batch norm by those of every slice of
    the batch (B x Z'). The contextual stream (3D, batch B) keeps instance norm."""

    spatial_norm = "batch"


class DualStreamPatchNormTrainer(DualStreamTrainer):
    """DualStream whose spatial stream normalises each channel over every slice of its patch
    (``PatchInstanceNorm2d``), as the 3D U-Net's instance norm does, instead of slice by slice: a structure
    that fills most of a slice (a large cyst) is no longer normalised against itself. Training and
    evaluation use the same statistics (unlike batch norm). The contextual stream keeps instance norm."""

    spatial_norm = "patch_instance"


class DualStreamNoRWATrainer(DualStreamTrainer):
    """DualStream's non-RWA twin (robustness benchmark): the paper's fixed window instead of RWA."""

    window = "fixed_paper"


class DualStreamRWAControlTrainer(DualStreamTrainer):
    """RWA control: DualStream trained and evaluated at RWA's own evaluation window (71/213.5 HU) with RWA's
    normalisation, never randomised; against DualStreamTrainer it measures the random windows alone."""

    window = "fixed_rwa_centre"
    window_dataset_norm = False


# The paper's ablation chain: baseline -> + RWA -> + attention gates -> + dual-stream fusion (= DualStreamTrainer).
class DualStreamAblationBaseTrainer(DualStreamTrainer):
    """Ablation step 0: the spatial stream alone, plain skips, fixed window."""

    window = "fixed_paper"
    use_attention = False
    use_context = False


class DualStreamAblationRWATrainer(DualStreamAblationBaseTrainer):
    """Ablation step 1: + random window augmentation."""

    window = "paper"


class DualStreamAblationRWAAttTrainer(DualStreamAblationRWATrainer):
    """Ablation step 2: + attention gates on the skip connections (step 3 is DualStreamTrainer)."""

    use_attention = True
