"""Small behaviour mixins shared by the CPU-sized trainers."""
from __future__ import annotations

import json
import math
import os
import time


class NoInferenceMirroringMixin:
    """Test-time mirroring off for final validation and ``nnUNetv2_predict`` (stored in the checkpoint).

    Mirroring multiplies sliding-window inference by up to 8; on a CPU it dominates a smoke run. Training
    augmentation still mirrors. Put this mixin before the nnU-Net trainer among the bases.
    """

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        result = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return result


class InProcessValidationPoolsMixin:
    """With ``nnUNet_def_n_proc=1``, the final validation's export and metric pools run as threads of the
    training process: nnU-Net starts them by spawn, and each spawned worker imports nnU-Net and torch again
    (about 10 s each on a 2-core machine) to buy no parallelism. Same files, same summary.json."""

    def perform_actual_validation(self, save_probabilities: bool = False):
        from nnunetv2.configuration import default_num_processes

        from nnunet_liver.planners.api import in_process_pools

        modules = ("nnunetv2.training.nnUNetTrainer.nnUNetTrainer", "nnunetv2.evaluation.evaluate_predictions")
        with in_process_pools(default_num_processes == 1, modules):
            return super().perform_actual_validation(save_probabilities)


class ShortBudgetAugmentationMixin:
    """Spatial augmentation for budgets of hundreds of iterations: no mirroring (training or test time) and
    rotations within +-``max_rotation_deg`` instead of nnU-Net's +-180 degrees in-plane for anisotropic
    patches (+-30 about every axis for the others); scaling and the intensity transforms are unchanged.
    ``NNUNET_LIVER_DA=nnunet`` restores nnU-Net's (for comparisons), ``short`` is the default.

    Axial CTs come in one orientation (the liver on the patient's right, the heart above it): nnU-Net's mirror
    and full-rotation augmentation make a network learn every orientation, which its 250,000 GPU iterations
    afford and a few hundred CPU iterations do not (measured in the README's CPU recipe). Put this mixin
    before the nnU-Net trainer among the bases.
    """

    max_rotation_deg = 15.0

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size

        result = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        mode = os.environ.get("NNUNET_LIVER_DA", "short")
        if mode not in ("short", "nnunet"):
            raise ValueError(f"NNUNET_LIVER_DA must be 'short' or 'nnunet', got {mode!r}")
        if mode == "nnunet":
            return result
        dummy_2d = result[1]
        patch_size = self.configuration_manager.patch_size
        dim = len(patch_size)
        angle = math.radians(self.max_rotation_deg)
        rotation = (-angle, angle)
        initial = get_patch_size(patch_size[-dim:], rotation, rotation, rotation, (0.85, 1.25))
        if dummy_2d:
            initial[0] = patch_size[0]
        self.inference_allowed_mirroring_axes = None
        self.print_to_log_file(f"short-budget augmentation: no mirroring, rotation +-{self.max_rotation_deg:g} deg")
        return rotation, dummy_2d, initial, None


def one_cycle_lr(peak: float, progress: float, warmup: float = 0.1, final_ratio: float = 1e-2) -> float:
    """Linear warm-up from ``0.04 * peak`` to ``peak`` over the first ``warmup`` of the run, then cosine decay
    to ``final_ratio * peak``; ``progress`` in [0, 1] (clipped)."""
    t = min(max(progress, 0.0), 1.0)
    if t < warmup:
        return peak * (0.04 + 0.96 * t / warmup)
    u = (t - warmup) / max(1e-8, 1.0 - warmup)
    return peak * (final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * u)))


class OneCycleSchedule:
    """:func:`one_cycle_lr` applied every iteration, over a budget of iterations or of process CPU seconds.

    nnU-Net calls ``step(epoch)`` at the start of every epoch (which also restores the position after
    ``--c``); :meth:`step_iteration` advances it within an epoch. With ``cpu_seconds`` the progress is the
    share of the CPU budget spent since :meth:`start`, so models of different speed get the same schedule
    shape over the same CPU time.
    """

    def __init__(self, optimizer, peak: float, *, total_iterations: int, iterations_per_epoch: int,
                 cpu_seconds: float | None = None):
        self.optimizer, self.peak = optimizer, peak
        self.total, self.per_epoch = max(1, total_iterations), iterations_per_epoch
        self.cpu_seconds = cpu_seconds
        self.iteration = 0
        self.cpu_start: float | None = None
        self._apply()

    def start(self) -> None:
        self.cpu_start = time.process_time()

    def cpu_spent(self) -> float:
        return 0.0 if self.cpu_start is None else time.process_time() - self.cpu_start

    def progress(self) -> float:
        if self.cpu_seconds:
            return self.cpu_spent() / self.cpu_seconds
        return self.iteration / self.total

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = one_cycle_lr(self.peak, self.progress())

    def step(self, current_step: int | None = None) -> None:
        self.iteration = self.iteration + self.per_epoch if current_step is None else current_step * self.per_epoch
        self._apply()

    def step_iteration(self) -> None:
        self.iteration += 1
        self._apply()


class BudgetSpent(Exception):
    """Raised at the start of an epoch once the CPU-seconds budget is spent; ends training normally."""


class ShortBudgetOptimizerMixin:
    """AdamW with a per-iteration one-cycle schedule instead of nnU-Net's poly SGD (made for 250,000
    iterations), for budgets of a few thousand iterations; optionally a budget of process CPU seconds
    (``cpu_seconds``), after which training ends at the next epoch boundary. Every epoch appends
    (epoch, iterations, CPU seconds, wall seconds, pseudo Dice per region) to ``learning_curve.json`` in the
    output folder. Put it before the nnU-Net trainer among the bases."""

    short_budget_lr = 1e-2  # 3e-3 before: 1e-2 gave +0.03 (DualStream) and +0.02 (U-Net) liver Dice at 300 iterations
    short_budget_weight_decay = 1e-4
    #: process CPU seconds of training (None: the epochs x iterations budget)
    cpu_seconds: float | None = None

    def configure_optimizers(self):
        import torch

        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.short_budget_lr,
                                      weight_decay=self.short_budget_weight_decay)
        schedule = OneCycleSchedule(optimizer, self.short_budget_lr,
                                    total_iterations=self.num_epochs * self.num_iterations_per_epoch,
                                    iterations_per_epoch=self.num_iterations_per_epoch, cpu_seconds=self.cpu_seconds)
        return optimizer, schedule

    def on_train_start(self):
        if self.cpu_seconds and self.is_ddp:
            # each rank would measure its own CPU time and stop (and set its learning rate) on its own
            raise RuntimeError("NNUNET_LIVER_CPU_SECONDS cannot be used with several ranks (-num_gpus > 1); "
                               "use NNUNET_LIVER_EPOCHS/NNUNET_LIVER_ITERS")
        super().on_train_start()
        self.learning_curve = []
        self.lr_scheduler.start()
        spent_before, wall_before = 0.0, 0.0
        path = os.path.join(self.output_folder, "learning_curve.json")
        if self.current_epoch > 0 and os.path.isfile(path):  # --c: continue the curve, the budget and the schedule
            with open(path, encoding="utf-8") as f:
                self.learning_curve = [e for e in json.load(f) if e["epoch"] < self.current_epoch]
            if self.learning_curve:
                spent_before = self.learning_curve[-1]["cpu_seconds"]
                wall_before = self.learning_curve[-1]["wall_seconds"]
        self.lr_scheduler.cpu_start -= spent_before
        self._wall_start = time.perf_counter() - wall_before

    def on_epoch_start(self):
        if self.cpu_seconds:
            spent = self.lr_scheduler.cpu_spent()
            last = (self.learning_curve[-1]["cpu_seconds"] - (self.learning_curve[-2]["cpu_seconds"]
                                                             if len(self.learning_curve) > 1 else 0.0)
                    if self.learning_curve else 0.0)
            # stop when the next epoch would end nearer past the budget than this one ends before it
            if spent + 0.5 * last >= self.cpu_seconds:
                raise BudgetSpent
        super().on_epoch_start()

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)
        self.lr_scheduler.step_iteration()
        return result

    def on_epoch_end(self):
        self.learning_curve.append({
            "epoch": int(self.current_epoch),
            "iterations": int((self.current_epoch + 1) * self.num_iterations_per_epoch),
            "cpu_seconds": round(self.lr_scheduler.cpu_spent(), 3),
            "wall_seconds": round(time.perf_counter() - self._wall_start, 3),
            "pseudo_dice": [float(d) for d in self.logger.get_value("dice_per_class_or_region", step=-1)],
            "lr": float(self.optimizer.param_groups[0]["lr"]),
        })
        if self.local_rank == 0:  # written beside and renamed: a killed run never leaves half a file
            path = os.path.join(self.output_folder, "learning_curve.json")
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(self.learning_curve, f, indent=0)
            os.replace(path + ".tmp", path)
        super().on_epoch_end()

    def run_training(self):
        try:
            super().run_training()
        except BudgetSpent:
            self.print_to_log_file(f"CPU budget of {self.cpu_seconds:g} s spent after {self.current_epoch} epochs")
            self.on_train_end()


def cpu_bf16_supported() -> bool:
    """True where the CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX), which oneDNN uses for
    convolutions; elsewhere bf16 autocast is emulated and slower than float32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def cpu_bf16_requested() -> bool:
    """Whether the CPU trainers autocast to bfloat16: ``NNUNET_LIVER_BF16=1`` forces it (emulated, slower, where
    the CPU lacks native bf16), ``0`` turns it off, ``auto`` (the default) uses it where the CPU has it natively."""
    setting = os.environ.get("NNUNET_LIVER_BF16", "auto")
    return setting == "1" or (setting == "auto" and cpu_bf16_supported())


class CPUBF16Mixin:
    """bfloat16 autocast for training and validation steps on CPUs with native bf16 (nnU-Net autocasts only
    on CUDA). ``NNUNET_LIVER_BF16=0`` turns it off, ``1`` forces it. Weights, optimiser state and the
    exported checkpoint stay float32; prediction runs in float32."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cpu_bf16 = self.device.type == "cpu" and cpu_bf16_requested()

    def _cpu_autocast(self):
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16)

    def train_step(self, batch: dict) -> dict:
        with self._cpu_autocast():
            return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        with self._cpu_autocast():
            return super().validation_step(batch)
