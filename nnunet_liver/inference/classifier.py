"""Malignancy probability of predicted lesions with a classifier from ``nnunet-liver classify train``.

The crops are made as in training (``classify extract``): cubes cut from nnU-Net's preprocessed volume (raw
HU, the plans' spacing) around each lesion's component on that grid, by the same function
(``classification.crops.crop_component``) with the crop parameters stored in the ``crops.json`` of the
crops the classifier was trained on; then resized to the network's input size, windowed with the fixed
evaluation window and classified by ``classification.training.predict_lesions``.

The lesions are those of the final (postprocessed) segmentation on the input grid, carried onto the
preprocessed grid by nearest neighbour (``classification.lesions.raw_to_preprocessed_grid``, as ``classify
extract --instances`` does), so every lesion of the report gets its own probability. A lesion smaller than
one voxel of the preprocessed grid has no voxel there; its crop is centred on its mapped centroid with an
empty mask, and the report says so.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ClassifierError", "LesionClassifier", "crop_tensors", "find_crop_info", "load_classifier"]


class ClassifierError(ValueError):
    """A classifier checkpoint (or its crop parameters) that cannot be used."""


def find_crop_info(checkpoint: Path, crops: str | os.PathLike | None = None) -> Path:
    """``crops.json`` of the crops the classifier was trained on.

    Default place: ``classify train`` writes ``<root>/<model>__<preset>/fold_<k>/checkpoint_final.pt`` and
    ``classify extract`` ``<root>/crops/crops.json``.

    Raises:
        ClassifierError: not found.
    """
    if crops is not None:
        path = Path(crops)
        path = path / "crops.json" if path.is_dir() else path
        if not path.is_file():
            raise ClassifierError(f"--crops: no crops.json at {path}")
        return path
    default = checkpoint.resolve().parent.parent.parent / "crops" / "crops.json"
    if default.is_file():
        return default
    raise ClassifierError(f"{checkpoint}: cannot find the crops.json of the crops this classifier was trained on "
                          f"(looked for {default}); pass --crops CROP_FOLDER (the folder of classify extract) so that "
                          f"lesions are cropped as in training")


def crop_tensors(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], size: int):
    """(N, 1, S, S, S) image and mask tensors at the network's input size, resized exactly as
    ``classification.training.load_crop_data`` resizes cached crops (image trilinear, mask nearest)."""
    import torch
    import torch.nn.functional as F

    x = torch.stack([torch.from_numpy(np.asarray(i, dtype=np.float32)) for i in images])[:, None]
    m = torch.stack([torch.from_numpy(np.asarray(k, dtype=np.float32)) for k in masks])[:, None]
    if x.shape[2:] != (size, size, size):
        x = F.interpolate(x, size=(size,) * 3, mode="trilinear", align_corners=False)
        m = F.interpolate(m, size=(size,) * 3, mode="nearest")
    return x.contiguous(), m.contiguous()


@dataclass
class LesionClassifier:
    """A loaded classifier with its crop parameters."""

    checkpoint: Path
    model_name: str
    model: object  # torch.nn.Module
    config: object  # TrainConfig
    spec: object  # CropSpec
    crop_info_path: Path
    crop_info: dict
    device: str = "cpu"
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {
            "checkpoint": str(self.checkpoint),
            "model": self.model_name,
            "preset": getattr(self.config, "preset", None),
            "input_size": getattr(self.config, "input_size", None),
            "with_mask": getattr(self.config, "with_mask", None),
            "crops": str(self.crop_info_path),
            "crop": self.spec.describe(),
            "trained_on": self.crop_info.get("dataset"),
            "trained_spacing": self.crop_info.get("spacing"),
        }

    def check_model(self, normalization: Sequence[str], spacing: Sequence[float]) -> list[str]:
        """Problems and notes about using this classifier behind a segmentation model.

        Raises:
            ClassifierError: the segmentation model's preprocessing does not keep HU in the crop channel.
        """
        ch = self.spec.channel
        if ch >= len(normalization) or normalization[ch] != "NoNormalization":
            scheme = normalization[ch] if ch < len(normalization) else "missing"
            raise ClassifierError(f"the segmentation model's plans normalise channel {ch} ({scheme}), so its "
                                  f"preprocessed data hold no Hounsfield units for the classifier's crops; use a "
                                  f"model planned with nnunet-liver plan_and_preprocess (keeps HU)")
        notes = []
        trained = self.crop_info.get("spacing")
        if trained and len(trained) == len(spacing) and not np.allclose(trained, spacing, rtol=0.05):
            notes.append(f"the classifier's crops were cut at spacing {[round(float(s), 3) for s in trained]} mm, "
                         f"the segmentation model's grid is {[round(float(s), 3) for s in spacing]} mm: the crops "
                         f"cover the same millimetres at another resolution")
        return notes

    def classify(self, image: np.ndarray, spacing: Sequence[float], instances: np.ndarray,
                 lesion_ids: Sequence[int], fallback_centroids: dict[int, tuple[float, float, float]],
                 fallback_diameters: dict[int, float]) -> tuple[dict[int, float], list[str]]:
        """P(malignant) per lesion.

        Args:
            image: (z, y, x) preprocessed HU (the crop channel), nnU-Net's transposed order.
            spacing: its spacing in mm.
            instances: (z, y, x) lesion ids on the same grid.
            lesion_ids: the lesions to classify.
            fallback_centroids: preprocessed-grid centroid of each lesion, for lesions without a voxel there.
            fallback_diameters: equivalent diameter (mm) of each lesion on the input grid, same purpose.

        Returns:
            ({lesion id: probability}, notes).
        """
        import torch

        from nnunet_liver.classification.crops import CropEntry, crop_component, extract_crop
        from nnunet_liver.classification.lesions import instance_components
        from nnunet_liver.classification.training import CropData, predict_lesions

        if not lesion_ids:
            return {}, []
        comps = {c.index: c for c in instance_components(instances, spacing)}
        images, masks, entries, notes = [], [], [], []
        for lid in lesion_ids:
            comp = comps.get(lid)
            if comp is not None:
                crop, mask, _ = crop_component(image, spacing, comp, instances, self.spec)
                diameter = comp.diameter_mm
            else:
                diameter = fallback_diameters[lid]
                crop, mask, _ = extract_crop(image, spacing, fallback_centroids[lid], self.spec.cube_mm(diameter),
                                             self.spec.size, mask=instances, mask_value=lid, pad_hu=self.spec.pad_hu)
                notes.append(f"lesion {lid} has no voxel on the model's grid (smaller than one voxel there): "
                             f"classified from a crop at its centroid with an empty lesion mask")
            images.append(crop)
            masks.append(mask)
            entries.append(CropEntry("case", int(lid), -1, "", "", self.spec.cube_mm(diameter), float(diameter)))
        x, m = crop_tensors(images, masks, self.config.input_size)
        data = CropData(entries, x, m, torch.full((len(entries),), -1, dtype=torch.long))
        pred = predict_lesions(self.model, self.model_name, data, self.config, self.device)
        return {int(lid): float(p) for lid, p in zip(lesion_ids, pred["prob"], strict=True)}, notes


def load_classifier(checkpoint: str | os.PathLike, crops: str | os.PathLike | None = None,
                    device: str = "cpu") -> LesionClassifier:
    """Load a ``classify train`` checkpoint and the crop parameters of its training crops.

    Raises:
        ClassifierError: missing or foreign checkpoint, weights that do not fit, no crops.json.
    """
    from nnunet_liver.classification.crops import CropSpec
    from nnunet_liver.classification.training import CheckpointError, load_checkpoint, model_from_checkpoint

    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        raise ClassifierError(f"--classifier: {checkpoint} is a folder; pass the checkpoint file "
                              f"(fold_<k>/checkpoint_final.pt)")
    try:
        ckpt = load_checkpoint(checkpoint)
        model, config = model_from_checkpoint(ckpt)
    except CheckpointError as e:
        raise ClassifierError(f"--classifier: {e}") from None
    info_path = find_crop_info(checkpoint, crops)
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        spec = CropSpec(**info["spec"])
    except (ValueError, KeyError, TypeError) as e:
        raise ClassifierError(f"{info_path}: not a crops.json of classify extract ({e})") from None
    model = model.to(device)
    return LesionClassifier(checkpoint=checkpoint, model_name=ckpt["model"], model=model, config=config, spec=spec,
                            crop_info_path=info_path, crop_info=info, device=device)
