"""nnU-Net trainers of nnunet-liver: the only place that subclasses ``nnUNetTrainer``.

Found by the stock ``nnUNetv2_train``/``nnUNetv2_predict`` through ``nnUNet_extTrainer`` (see
``nnunet-liver env``). Importing this package imports nnunetv2.
"""
from nnunet_liver.trainers.smoke import LiverSmokeTrainer

__all__ = ["LiverSmokeTrainer"]
