"""CPU-sized variants of the segmentation trainers, for tests, the demo and benchmarks.

Real-size trainers keep nnU-Net's defaults (1000 epochs x 250 iterations, planned widths); these shrink
the networks and patches and train for a few iterations. Benchmarks set an equal budget for every model
through environment variables read here, at the trainer's edge:

- ``NNUNET_LIVER_EPOCHS``, ``NNUNET_LIVER_ITERS``, ``NNUNET_LIVER_VAL_ITERS``: epochs, training and
  validation iterations per epoch (defaults 2, 4, 2);
- ``NNUNET_LIVER_CPU_SECONDS``: instead of a number of epochs, train until this many CPU seconds of the
  training process are spent (the learning-rate schedule runs over the CPU budget; training ends at the
  next epoch boundary), so models of different speed get equal compute;
- ``NNUNET_LIVER_SKIP_VALIDATION=1``: no final validation of the fold after training (the demo and the
  benchmarks evaluate test cases; ``nnUNetv2_train ... --val`` runs it later);
- ``NNUNET_LIVER_SEED``: seeds torch, numpy and random in the training process (with
  ``nnUNet_n_proc_DA=0`` the augmentation runs in that process too, so runs repeat). Under DDP each rank
  adds its rank, so the ranks draw different batches (DDP broadcasts rank 0's initial weights anyway).
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.distributed as dist

from nnunet_liver.trainers import _plans
from nnunet_liver.trainers._mixins import (
    CPUBF16Mixin,
    InProcessValidationPoolsMixin,
    NoInferenceMirroringMixin,
    ShortBudgetAugmentationMixin,
    ShortBudgetOptimizerMixin,
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
    LiverUNetRWAControlTrainer,
    LiverUNetRWATrainer,
    LiverUNetTrainer,
)

# in-plane 96: the whole liver field of view of the demo phantoms (98 x 134 at ~2 mm) in one or two tiles
CPU_UNET = {"max_patch": (16, 96, 96), "base_features": 8, "max_features": 32, "batch_size": 2}


def cpu_budget_from_env(env=os.environ) -> dict:
    cpu_seconds = float(env["NNUNET_LIVER_CPU_SECONDS"]) if env.get("NNUNET_LIVER_CPU_SECONDS") else None
    if cpu_seconds is not None and not cpu_seconds > 0:
        raise ValueError(f"NNUNET_LIVER_CPU_SECONDS must be a positive number of seconds, got {cpu_seconds:g}")
    return {
        "cpu_seconds": cpu_seconds,
        "num_epochs": int(env.get("NNUNET_LIVER_EPOCHS", 2)),
        "num_iterations_per_epoch": int(env.get("NNUNET_LIVER_ITERS", 4)),
        "num_val_iterations_per_epoch": int(env.get("NNUNET_LIVER_VAL_ITERS", 2)),
        "seed": int(env["NNUNET_LIVER_SEED"]) if env.get("NNUNET_LIVER_SEED") else None,
    }


class CPUBudgetMixin(ShortBudgetOptimizerMixin, CPUBF16Mixin, ShortBudgetAugmentationMixin, NoInferenceMirroringMixin,
                     InProcessValidationPoolsMixin):
    """Few epochs and iterations (see module doc), AdamW with a one-cycle schedule made for such budgets,
    bf16 autocast where the CPU has native bf16, no test-time mirroring; put it first among the bases."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        budget = cpu_budget_from_env()
        if budget["seed"] is not None:
            seed = budget["seed"] + (dist.get_rank() if dist.is_available() and dist.is_initialized() else 0)
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.cpu_seconds = budget["cpu_seconds"]
        # with a CPU-seconds budget NNUNET_LIVER_EPOCHS is an upper bound: training ends when the budget is spent
        self.num_epochs = budget["num_epochs"]
        self.num_iterations_per_epoch = budget["num_iterations_per_epoch"]
        self.num_val_iterations_per_epoch = budget["num_val_iterations_per_epoch"]
        self.save_every = 1

    def perform_actual_validation(self, save_probabilities: bool = False):
        # nnU-Net predicts the fold's validation cases after training (about a minute per 3D model on a CPU);
        # the demo and the benchmarks evaluate held-out test cases instead and set this to skip it.
        # `nnUNetv2_train ... --val` runs it later from the saved checkpoint.
        if os.environ.get("NNUNET_LIVER_SKIP_VALIDATION", "0") == "1":
            self.print_to_log_file("final validation skipped (NNUNET_LIVER_SKIP_VALIDATION=1); "
                                   "`nnUNetv2_train ... --val` runs it from the checkpoint")
            return
        super().perform_actual_validation(save_probabilities)


class _CPUUNet(CPUBudgetMixin):
    @classmethod
    def rewrite_plans(cls, plans: dict, configuration: str, dataset_json: dict | None = None) -> dict:
        plans = _plans.cpu_sized_unet_plans(plans, configuration, **CPU_UNET)
        return super().rewrite_plans(plans, configuration, dataset_json)


class _CPUDualStream(CPUBudgetMixin):
    features_per_stage = (8, 16, 16, 32, 32)
    context_features_per_stage = (8, 16, 32, 32)
    context_pool_inplane = 2
    context_channels = 16
    checkpoint_stages = ()  # memory is not the limit at CPU patch sizes; recomputation would cost time
    checkpoint_gates = False
    gpu_memory_gb = None
    n_slices_patch = 16  # 10 slices in the loss; the contextual stream sees 16
    max_inplane = 96
    batch_size = 2


class LiverUNetTrainer_CPU(_CPUUNet, LiverUNetTrainer):
    pass


class LiverUNetRWATrainer_CPU(_CPUUNet, LiverUNetRWATrainer):
    pass


class DualStreamTrainer_CPU(_CPUDualStream, DualStreamTrainer):
    pass


class DualStreamBNTrainer_CPU(_CPUDualStream, DualStreamBNTrainer):
    pass


class DualStreamPatchNormTrainer_CPU(_CPUDualStream, DualStreamPatchNormTrainer):
    pass


class DualStreamNoRWATrainer_CPU(_CPUDualStream, DualStreamNoRWATrainer):
    pass


class DualStreamRWAControlTrainer_CPU(_CPUDualStream, DualStreamRWAControlTrainer):
    pass


class LiverUNetRWAControlTrainer_CPU(_CPUUNet, LiverUNetRWAControlTrainer):
    pass


class DualStreamAblationBaseTrainer_CPU(_CPUDualStream, DualStreamAblationBaseTrainer):
    pass


class DualStreamAblationRWATrainer_CPU(_CPUDualStream, DualStreamAblationRWATrainer):
    pass


class DualStreamAblationRWAAttTrainer_CPU(_CPUDualStream, DualStreamAblationRWAAttTrainer):
    pass
