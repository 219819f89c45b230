"""Small behaviour mixins shared by the CPU-sized trainers."""
from __future__ import annotations


class NoInferenceMirroringMixin:
    """Test-time mirroring off for final validation and ``nnUNetv2_predict`` (stored in the checkpoint).

    Mirroring multiplies sliding-window inference by up to 8; on a CPU it dominates a smoke run. Training
    augmentation still mirrors. Put this mixin before the nnU-Net trainer among the bases.
    """

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        result = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return result


class OneCycleSchedule:
    """Learning rate per iteration for short budgets: linear warm-up to ``peak`` over ``warmup`` of the run,
    then cosine decay to ``peak * final_ratio``.

    nnU-Net calls ``step(epoch)`` at the start of every epoch (that also restores the position after
    ``--c``); :meth:`step_iteration` advances it within the epoch.
    """

    def __init__(self, optimizer, peak: float, total_iterations: int, iterations_per_epoch: int,
                 warmup: float = 0.1, final_ratio: float = 1e-2):
        self.optimizer, self.peak, self.total = optimizer, peak, max(1, total_iterations)
        self.per_epoch, self.warmup, self.final_ratio = iterations_per_epoch, warmup, final_ratio
        self.iteration = 0
        self._apply()

    def lr_at(self, iteration: int) -> float:
        import math

        t = min(iteration, self.total) / self.total
        if t < self.warmup:
            return self.peak * (0.04 + 0.96 * t / self.warmup)
        u = (t - self.warmup) / max(1e-8, 1 - self.warmup)
        return self.peak * (self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * u)))

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.iteration)

    def step(self, current_step: int | None = None) -> None:
        self.iteration = self.iteration + self.per_epoch if current_step is None else current_step * self.per_epoch
        self._apply()

    def step_iteration(self) -> None:
        self.iteration += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        self._apply()


class ShortBudgetOptimizerMixin:
    """AdamW with a per-iteration one-cycle schedule instead of nnU-Net's poly SGD (made for 250,000
    iterations); on the CPU presets' budgets of a few thousand iterations it learns much more per iteration
    (see the README's CPU recipe section for the measurements). Put it before the nnU-Net trainer."""

    short_budget_lr = 3e-3
    short_budget_weight_decay = 1e-4

    def configure_optimizers(self):
        import torch

        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.short_budget_lr,
                                      weight_decay=self.short_budget_weight_decay)
        schedule = OneCycleSchedule(optimizer, self.short_budget_lr,
                                    self.num_epochs * self.num_iterations_per_epoch, self.num_iterations_per_epoch)
        return optimizer, schedule

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)
        self.lr_scheduler.step_iteration()
        return result


def cpu_bf16_supported() -> bool:
    """True where the CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX), which oneDNN uses for
    convolutions; elsewhere bf16 autocast is emulated and slower than float32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


class CPUBF16Mixin:
    """bfloat16 autocast for training and validation steps on CPUs with native bf16 (nnU-Net autocasts only
    on CUDA). ``NNUNET_LIVER_BF16=0`` turns it off, ``1`` forces it. Weights, optimiser state and the
    exported checkpoint stay float32; prediction runs in float32."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import os

        setting = os.environ.get("NNUNET_LIVER_BF16", "auto")
        self.cpu_bf16 = self.device.type == "cpu" and (setting == "1" or (setting == "auto" and cpu_bf16_supported()))

    def _cpu_autocast(self):
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16)

    def train_step(self, batch: dict) -> dict:
        with self._cpu_autocast():
            return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        with self._cpu_autocast():
            return super().validation_step(batch)
