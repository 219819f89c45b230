"""Liver and tumour segmentation of one CT with a trained nnU-Net model, through nnU-Net's predictor API.

The steps are nnU-Net's own, the ones ``nnUNetPredictor.predict_single_npy_array`` runs, done one by one so
that the preprocessed image (transposed, cropped to the non-zero box, resampled to the plans' spacing) stays
available for the lesion classifier:

1. the configuration's preprocessor class (``run_case_npy``) on the SimpleITK array and properties, exactly
   as ``SimpleITKIO.read_images`` makes them;
2. ``nnUNetPredictor.predict_logits_from_preprocessed_data`` (sliding window, Gaussian weighting, optional
   test-time mirroring, every fold averaged);
3. ``convert_predicted_logits_to_segmentation_with_correct_shape`` back to the input's grid.

Our trainers keep raw HU in the plans (``nnunet-liver plan_and_preprocess``) and window inside the network,
so nothing is done to the intensities here: the preprocessor applies whatever the plans say.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ModelError", "SegmentationModel", "SegmentationResult", "available_folds", "load_segmentation_model"]

# SimpleITKIOWithReorient re-orients every image to RAS before the network sees it; predict feeds the array as
# SimpleITK reads it, so a model planned with that reader would see an orientation it never trained on
_SITK_READERS = ("SimpleITKIO",)


class ModelError(ValueError):
    """A segmentation model folder that cannot be used (missing files, folds, checkpoints, unsupported setup)."""


@dataclass
class SegmentationResult:
    """What the segmentation of one case gives.

    Attributes:
        segmentation: (z, y, x) uint8 labels on the input's grid (before postprocessing).
        preprocessed: (channels, *spatial) float32 preprocessed image, nnU-Net's transposed axis order.
        preprocessed_spacing: spacing of ``preprocessed`` in mm, same axis order.
        properties: nnU-Net's case properties (``bbox_used_for_cropping``, shapes, spacing, sitk_stuff).
        timings: seconds per step (preprocess, network, resample).
    """

    segmentation: np.ndarray
    preprocessed: np.ndarray
    preprocessed_spacing: list[float]
    properties: dict
    timings: dict = field(default_factory=dict)


def available_folds(folder: str | os.PathLike, checkpoint: str) -> list[int | str]:
    """Numeric folds ``fold_k`` that hold ``checkpoint`` (``all`` only when there is no numeric fold), as
    nnU-Net's own fold detection does."""
    folder = Path(folder)
    numeric, has_all = [], False
    for p in folder.glob("fold_*"):
        if not (p / checkpoint).is_file():
            continue
        suffix = p.name[len("fold_"):]
        if suffix == "all":
            has_all = True
        elif suffix.isdigit():
            numeric.append(int(suffix))
    return sorted(numeric) if numeric else (["all"] if has_all else [])


def _parse_fold(value) -> int | str:
    if str(value) == "all":
        return "all"
    try:
        return int(value)
    except ValueError:
        raise ModelError(f"-f: fold must be a number or 'all', got {value!r}") from None


class SegmentationModel:
    """A trained nnU-Net model folder loaded into ``nnUNetPredictor``."""

    def __init__(self, folder: Path, folds: list, checkpoint: str, predictor, *, mirror: bool, step_size: float,
                 device: str):
        self.folder = folder
        self.folds = folds
        self.checkpoint = checkpoint
        self.predictor = predictor
        self.mirror = mirror
        self.step_size = step_size
        self.device = device

    @property
    def plans_manager(self):
        return self.predictor.plans_manager

    @property
    def configuration_manager(self):
        return self.predictor.configuration_manager

    @property
    def dataset_json(self) -> dict:
        return self.predictor.dataset_json

    @property
    def label_manager(self):
        return self.predictor.label_manager

    @property
    def transpose_forward(self) -> list[int]:
        return list(self.plans_manager.transpose_forward)

    def normalization_schemes(self) -> list[str]:
        return list(self.configuration_manager.normalization_schemes)

    def tumour_label(self) -> int:
        """The tumour label value of the model's ``dataset.json`` ("tumor"/"tumour"/"lesion", else 2)."""
        from nnunet_liver.classification.crops import tumour_label_from_dataset_json

        return tumour_label_from_dataset_json(self.dataset_json)

    def describe(self) -> dict:
        """What the report records about the model."""
        m = re.fullmatch(r"(.+)__(.+)__(.+)", self.folder.name)
        mirror_axes = self.predictor.allowed_mirroring_axes
        return {
            "folder": str(self.folder),
            "dataset": self.folder.parent.name,
            "trainer": self.predictor.trainer_name,
            "plans": m.group(2) if m else self.plans_manager.plans_name,
            "configuration": m.group(3) if m else None,
            "folds": list(self.folds),
            "checkpoint": self.checkpoint,
            "mirroring": bool(self.mirror and mirror_axes is not None),
            "mirroring_requested": self.mirror,
            "mirror_axes": list(mirror_axes) if (self.mirror and mirror_axes is not None) else None,
            "step_size": self.step_size,
            "patch_size": list(self.configuration_manager.patch_size),
            "spacing": [float(s) for s in self.configuration_manager.spacing],
            "normalization": self.normalization_schemes(),
        }

    def preprocessed_spacing(self, properties: dict) -> list[float]:
        """Spacing of the preprocessed grid (a 2D configuration keeps the input's slice spacing)."""
        target = [float(s) for s in self.configuration_manager.spacing]
        if len(target) < 3:
            original = [properties["spacing"][i] for i in self.transpose_forward]
            target = [float(original[0]), *target]
        return target

    def preprocess(self, array: np.ndarray, sitk_geometry: dict) -> tuple[np.ndarray, dict]:
        """nnU-Net's preprocessing of one volume, by the plans' preprocessor class, from the array and
        properties that ``SimpleITKIO.read_images`` would give.

        Args:
            array: (z, y, x) intensities as SimpleITK gives them.
            sitk_geometry: ``spacing``, ``origin``, ``direction`` of the SimpleITK image.

        Returns:
            ((channels, *spatial) float32 preprocessed data, nnU-Net's case properties).
        """
        properties = {"sitk_stuff": dict(sitk_geometry),
                      "spacing": [abs(float(s)) for s in list(sitk_geometry["spacing"])[::-1]]}
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        data, _, properties = preprocessor.run_case_npy(array[None], None, properties, self.plans_manager,
                                                        self.configuration_manager, self.dataset_json)
        return data, properties

    def segment(self, array: np.ndarray, sitk_geometry: dict) -> SegmentationResult:
        """Segment one volume.

        Args:
            array: (z, y, x) intensities as SimpleITK gives them.
            sitk_geometry: ``spacing``, ``origin``, ``direction`` of the SimpleITK image.
        """
        import torch
        from nnunetv2.inference.export_prediction import (
            convert_predicted_logits_to_segmentation_with_correct_shape,
        )

        timings = {}
        t0 = time.perf_counter()
        data, properties = self.preprocess(array, sitk_geometry)
        timings["preprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        logits = self.predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
        timings["network"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        seg = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, self.plans_manager, self.configuration_manager, self.label_manager, properties)
        del logits
        seg = np.asarray(seg)
        timings["resample"] = time.perf_counter() - t0
        if seg.shape != array.shape:  # nnU-Net's export contract; a mismatch would misplace every finding
            raise RuntimeError(f"nnU-Net returned a segmentation of shape {seg.shape} for an image of shape "
                               f"{array.shape}")
        return SegmentationResult(segmentation=seg.astype(np.uint8, copy=False), preprocessed=data,
                                  preprocessed_spacing=self.preprocessed_spacing(properties), properties=properties,
                                  timings=timings)


def load_segmentation_model(folder: str | os.PathLike, folds=None, checkpoint: str = "checkpoint_final.pth", *,
                            device: str = "cpu", mirror: bool = False, step_size: float = 0.5,
                            progress: bool = True) -> SegmentationModel:
    """Load a trained model folder (``nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>``).

    Args:
        folder: the model folder.
        folds: folds to ensemble (None: every ``fold_k`` holding ``checkpoint``, see :func:`available_folds`).
        checkpoint: checkpoint file name inside each fold folder.
        device: "cpu" or "cuda".
        mirror: test-time mirroring (along the axes the checkpoint allows).
        step_size: sliding-window step as a fraction of the patch (nnU-Net's ``-step_size``).
        progress: nnU-Net's sliding-window progress bar.

    Raises:
        ModelError: anything that makes the folder unusable, with what to do about it.
    """
    import torch

    from nnunet_liver.env import activate

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder not found: {folder}")
    for name in ("plans.json", "dataset.json"):
        if not (folder / name).is_file():
            raise ModelError(f"{folder}: no {name}; -m must be an nnU-Net trained model folder "
                             f"(nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>)")
    found = available_folds(folder, checkpoint)
    if folds is None or len(folds) == 0:
        if not found:
            present = sorted(p.name for p in folder.glob("fold_*"))
            raise ModelError(f"{folder}: no fold_* folder holds {checkpoint}"
                             + (f" (folds present: {', '.join(present)}; training unfinished? try -chk "
                                f"checkpoint_best.pth)" if present else " (no fold_* folders: not trained)"))
        folds = found
    else:
        folds = [_parse_fold(f) for f in folds]
        missing = [f for f in folds if not (folder / f"fold_{f}" / checkpoint).is_file()]
        if missing:
            raise ModelError(f"{folder}: no {checkpoint} for fold(s) {', '.join(map(str, missing))} (available: "
                             f"{', '.join(map(str, found)) or 'none'})")
    if not 0 < step_size <= 1:
        raise ModelError(f"--step-size must be in (0, 1], got {step_size}")
    if device not in ("cpu", "cuda"):
        raise ModelError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: CUDA is not available on this machine")

    plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if reader not in _SITK_READERS:
        raise ModelError(f"{folder}: the plans read images with {reader}; predict supports models planned with "
                         f"SimpleITK's plain reader ({', '.join(_SITK_READERS)}), whose axis order it reproduces")

    activate()  # our trainers are found by nnU-Net through nnUNet_extTrainer
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a note about CPU devices
        predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=mirror,
                                    perform_everything_on_device=device == "cuda", device=torch.device(device),
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=progress)
    try:
        predictor.initialize_from_trained_model_folder(str(folder), folds, checkpoint)
    except Exception as e:  # nnU-Net raises plain exceptions of many kinds for broken folders
        raise ModelError(f"{folder}: nnU-Net cannot load this model ({type(e).__name__}: {str(e)[:300]})") from None
    if predictor.configuration_manager.previous_stage_name is not None:
        raise ModelError(f"{folder}: cascade configurations (previous stage "
                         f"{predictor.configuration_manager.previous_stage_name}) are not supported")
    return SegmentationModel(folder, folds, checkpoint, predictor, mirror=mirror, step_size=step_size, device=device)
