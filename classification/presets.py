"""Training presets for the lesion classifiers: ``cpu`` (tests, demo, benchmarks) and ``default`` (GPU).

The paper gives no training schedule; these values are ours. ``cpu`` shrinks the hybrid network (stem
8 channels, growth 4, 3 stages) and trains on 32^3 crops for a few epochs; the 2D baselines keep
torchvision's ResNet-50/DenseNet-121 widths (that is what they are) on 32x32 slices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

__all__ = ["MODELS", "PRESETS", "TrainConfig", "get_preset"]

MODELS = ("hybrid3d", "hybrid3d_noatt", "resnet50_2d", "densenet121_2d")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on besides the data and the seed.

    Attributes:
        preset: the preset's name.
        epochs: maximum epochs (one epoch = one pass over the training lesions, or their slices for 2D).
        patience: epochs without a better validation score before stopping.
        max_time_s: time budget of a run in seconds (None: unlimited); checked after every epoch.
        budget_clock: what ``max_time_s`` counts: "wall" (elapsed time) or "cpu" (this process's CPU time,
            so the budget stays equal on a busy machine; use it with one torch thread).
        batch_size: lesions per batch (3D).
        slice_batch_size: slices per batch (2D).
        lr, weight_decay: Adam.
        input_size: crops are resized to this cube side when they differ (sides must be divisible by
            ``2**hybrid['n_blocks']`` for the hybrid network).
        with_mask: add the lesion mask as a second input channel.
        hybrid: keyword arguments of ``HybridLesionNet3D`` (``use_attention`` is set by the model name).
        aux_weight: weight of the auxiliary loss of the hybrid network.
        window: window preset of ``nnunet_liver.augment.window`` ("paper": random level/width in training,
            the fixed centre window at validation and prediction).
        rotate_deg: small rotations drawn from [-rotate_deg, rotate_deg] about each axis of a 3D crop (in-plane
            for 2D slices), on top of 90-degree in-plane turns and flips of every axis.
        intensity_shift_hu, intensity_scale: HU shift drawn from [-shift, shift] and factor from
            [1 - scale, 1 + scale] before windowing.
        eval_batch_size: lesions per batch at validation/prediction.
    """

    preset: str = "default"
    epochs: int = 200
    patience: int = 30
    max_time_s: float | None = None
    budget_clock: str = "wall"
    batch_size: int = 16
    slice_batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    input_size: int = 64
    with_mask: bool = False
    hybrid: dict = field(default_factory=lambda: dict(features=16, growth=8, n_blocks=4, layers_per_block=2,
                                                      reduction=4, dropout=0.3, head_features=64))
    aux_weight: float = 0.3
    window: str = "paper"
    rotate_deg: float = 15.0
    intensity_shift_hu: float = 20.0
    intensity_scale: float = 0.05
    eval_batch_size: int = 16

    def __post_init__(self) -> None:
        if self.budget_clock not in ("wall", "cpu"):
            raise ValueError(f"budget_clock must be 'wall' or 'cpu', not {self.budget_clock!r}")

    @property
    def in_channels(self) -> int:
        return 2 if self.with_mask else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


PRESETS: dict[str, TrainConfig] = {
    "default": TrainConfig(),
    "cpu": TrainConfig(
        preset="cpu", epochs=12, patience=5, batch_size=8, slice_batch_size=32, input_size=32,
        hybrid=dict(features=8, growth=4, n_blocks=3, layers_per_block=2, reduction=4, dropout=0.3,
                    head_features=32),
        eval_batch_size=16,
    ),
}


def get_preset(name: str, **overrides: Any) -> TrainConfig:
    """A preset with some fields replaced (None values are ignored).

    Raises:
        ValueError: unknown preset or field.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    unknown = set(overrides) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    return PRESETS[name].replace(**overrides)
