"""A CPU smoke trainer: real nnU-Net training, sized to finish in seconds."""
from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_liver.trainers._mixins import InProcessValidationPoolsMixin, NoInferenceMirroringMixin
from nnunet_liver.trainers._plans import cpu_sized_unet_plans


class LiverSmokeTrainer(InProcessValidationPoolsMixin, NoInferenceMirroringMixin, nnUNetTrainer):
    """nnU-Net's default trainer with 2 epochs of 2 iterations, small patch and widths, no test-time
    mirroring (CPU tests, demo)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        plans = cpu_sized_unet_plans(plans, configuration, max_patch=(16, 48, 48), base_features=8,
                                     max_features=32, batch_size=2)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1
        self.save_every = 1
