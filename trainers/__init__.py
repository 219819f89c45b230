"""nnU-Net trainers of nnunet-liver: the only place that subclasses ``nnUNetTrainer``.

Found by the stock ``nnUNetv2_train``/``nnUNetv2_predict`` through ``nnUNet_extTrainer`` (see
``nnunet-liver env``). Importing this package imports nnunetv2.
"""
from nnunet_liver.trainers.cpu import (
    DualStreamAblationBaseTrainer_CPU,
    DualStreamAblationRWAAttTrainer_CPU,
    DualStreamAblationRWATrainer_CPU,
    DualStreamNoRWATrainer_CPU,
    DualStreamTrainer_CPU,
    LiverUNetRWATrainer_CPU,
    LiverUNetTrainer_CPU,
)
from nnunet_liver.trainers.segmentation import (
    DualStreamAblationBaseTrainer,
    DualStreamAblationRWAAttTrainer,
    DualStreamAblationRWATrainer,
    DualStreamNoRWATrainer,
    DualStreamTrainer,
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
    "DualStreamNoRWATrainer",
    "DualStreamNoRWATrainer_CPU",
    "DualStreamTrainer",
    "DualStreamTrainer_CPU",
    "LiverSmokeTrainer",
    "LiverUNetRWATrainer",
    "LiverUNetRWATrainer_CPU",
    "LiverUNetTrainer",
    "LiverUNetTrainer_CPU",
]
