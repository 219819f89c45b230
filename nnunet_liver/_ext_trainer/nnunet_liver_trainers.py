"""Entry module for nnU-Net's ``nnUNet_extTrainer`` lookup.

nnU-Net imports every module in the folder named by ``nnUNet_extTrainer`` as a top-level module and
forgets it afterwards. This folder holds only this module, which re-exports the trainers defined in the
installed package: their ``__module__`` stays ``nnunet_liver.trainers.*``, so they pickle under the
``spawn`` start method. Never point ``nnUNet_extTrainer`` at the package itself or at site-packages.
"""
from nnunet_liver.trainers import *  # noqa: F401,F403
