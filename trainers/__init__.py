"""nnU-Net trainers of nnunet-liver: the only place that subclasses ``nnUNetTrainer``.

Found by the stock ``nnUNetv2_train``/``nnUNetv2_predict`` through ``nnUNet_extTrainer`` (see
``nnunet-liver env``). Importing this package imports nnunetv2.
"""
from nnunet_liver.trainers.cpu import (
    DualStreamAblationBaseTrainer_CPU,
    DualStreamAblationRWAAttTrainer_CPU,
    DualStreamAblationRWATrainer_CPU,
    DualStreamBNTrainer_CPU,
    DualStreamNoRWATrainer_CPU,
    DualStreamPatchNormTrainer_CPU,
    DualStreamRWAControlTrainer_CPU,
    DualStreamTrainer_CPU,
    LiverUNetRWAControlTrainer_CPU,
    LiverUNetRWATrainer_CPU,
    LiverUNetTrainer_CPU,
)
from nnunet_liver.trainers.segmentation import (
    DualStreamAblationBaseTrainer,
    DualStreamAblationRWAAttTrainer,
    DualStreamAblationRWATrainer,
    DualStreamBNTrainer,
    DualStreamNoRWATrainer,
    DualStreamPatchNormTrainer,
    DualStreamRWAControlTrainer,
    DualStreamTrainer,
    DualStreamTrainer_11GB,
    DualStreamTrainer_40GB,
    DualStreamTrainer_80GB,
    LiverUNetRWAControlTrainer,
    LiverUNetRWATrainer,
    LiverUNetTrainer,
)
from nnunet_liver.trainers.smoke import LiverSmokeTrainer

__all__ = [
    "DualStreamAblationBaseTrainer",
    "DualStreamAblationBaseTrainer_CPU",
    "DualStreamAblationRWAAttTrainer",
    "DualStreamAblationRWAAttTrainer_CPU",
    "DualStreamAblationRWATrainer",
    "DualStreamAblationRWATrainer_CPU",
    "DualStreamBNTrainer",
    "DualStreamBNTrainer_CPU",
    "DualStreamNoRWATrainer",
    "DualStreamNoRWATrainer_CPU",
    "DualStreamPatchNormTrainer",
    "DualStreamPatchNormTrainer_CPU",
    "DualStreamRWAControlTrainer",
    "DualStreamRWAControlTrainer_CPU",
    "DualStreamTrainer",
    "DualStreamTrainer_11GB",
    "DualStreamTrainer_40GB",
    "DualStreamTrainer_80GB",
    "DualStreamTrainer_CPU",
    "LiverSmokeTrainer",
    "LiverUNetRWAControlTrainer",
    "LiverUNetRWAControlTrainer_CPU",
    "LiverUNetRWATrainer",
    "LiverUNetRWATrainer_CPU",
    "LiverUNetTrainer",
    "LiverUNetTrainer_CPU",
]
