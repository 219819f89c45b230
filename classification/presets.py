"""Training presets for the lesion classifiers: ``cpu`` (tests, demo, benchmarks) and ``default`` (GPU).

The paper gives no training schedule; these values are ours. ``default`` is the real-size recipe (64^3 crops,
the full-width hybrid network, random window augmentation, early stopping on the validation AUC).

``cpu`` is the recipe that learns within seconds per fold on a few dozen phantom lesions (issue 11;
measured on 141 phantom lesions, 3 patient-level folds, 10 CPU s per fold, pooled test AUC, 2 seeds; the
numbers are in the README): a narrow hybrid network (stem 8 channels with stride 2, growth 4, 3 stages)
on 32^3 crops that should cover 32 mm (1 mm samples: small lesions need the resolution), the lesion mask
as a second input channel, and the heads also fed with every stage's features averaged over the lesion;
a fixed window (the paper's evaluation window, 71 +- 107 HU: the lesions' absolute HU are what separates
them, which random windows blur); flips and 90-degree turns but no small rotations (their resampling took a
fifth of the budget and did not help); Adam at 3e-3 with a cosine decay over the time budget; the last epoch's
weights (the best epoch on a handful of validation lesions is a coin toss). The 2D baselines keep
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
        max_time_s: time budget of a run in seconds (None: unlimited); checked after every epoch: training
            stops when it is spent or when one more epoch (as long as the last) would end further past it than
            it is now short of it.
        budget_clock: what ``max_time_s`` counts: "wall" (elapsed time) or "cpu" (this process's CPU time,
            so the budget stays equal on a busy machine; use it with one torch thread).
        batch_size: lesions per batch (3D).
        slice_batch_size: slices per batch (2D).
        lr, weight_decay: peak learning rate and weight decay of the optimiser.
        optimizer: "adam" (L2 weight decay) or "adamw" (decoupled weight decay).
        lr_schedule: "constant", or "cosine": the learning rate falls from ``lr`` to 0 along a half cosine
            over the run's progress, the larger of the epoch fraction and (with ``max_time_s``) the fraction of
            the time budget spent, so a time-capped run still ends at a low learning rate.
        warmup: fraction of the progress over which the learning rate rises linearly to ``lr`` (cosine only).
        select: weights kept at the end: "best" (the epoch with the best validation score) or "last" (the
            last epoch; the validation lesions are then only reported, which suits a handful of them).
        train_on_val: train on the fold's validation lesions too (with ``select="last"`` nothing is chosen on
            them); the run then reports no validation score.
        input_size: crops are resized to this cube side when they differ (sides must be divisible by
            ``2**hybrid['n_blocks']`` for the hybrid network).
        with_mask: add the lesion mask as a second input channel.
        hybrid: keyword arguments of ``HybridLesionNet3D`` (``use_attention`` is set by the model name).
        aux_weight: weight of the auxiliary loss of the hybrid network.
        window: window preset name of ``nnunet_liver.augment.window`` ("paper": random level/width in
            training, the fixed centre window at validation and prediction) or a ``WindowConfig.to_dict()``.
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
    optimizer: str = "adam"
    lr_schedule: str = "constant"
    warmup: float = 0.0
    select: str = "best"
    train_on_val: bool = False
    input_size: int = 64
    with_mask: bool = False
    hybrid: dict = field(default_factory=lambda: dict(features=16, growth=8, n_blocks=4, layers_per_block=2,
                                                      reduction=4, dropout=0.3, head_features=64))
    aux_weight: float = 0.3
    window: str | dict = "paper"
    rotate_deg: float = 15.0
    intensity_shift_hu: float = 20.0
    intensity_scale: float = 0.05
    eval_batch_size: int = 16

    def __post_init__(self) -> None:
        for name, allowed in (("budget_clock", ("wall", "cpu")), ("optimizer", ("adam", "adamw")),
                              ("lr_schedule", ("constant", "cosine")), ("select", ("best", "last"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if self.train_on_val and self.select != "last":
            raise ValueError("train_on_val needs select='last': no validation lesions are left to choose an epoch")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must lie in [0, 1), got {self.warmup}")

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


# WindowConfig.fixed(71.0, 213.5).to_dict(): the paper's evaluation window in training too (written out so that
# this module stays free of torch and `--help` instant)
_FIXED_EVAL_WINDOW = {"level": 71.0, "width": 213.5, "level_range": [71.0, 71.0], "width_range": [213.5, 213.5],
                      "p_level": 0.0, "p_width": 0.0, "eval_level": 71.0, "eval_width": 213.5}

PRESETS: dict[str, TrainConfig] = {
    "default": TrainConfig(),
    "cpu": TrainConfig(
        preset="cpu", epochs=60, patience=60, batch_size=8, slice_batch_size=32, input_size=32,
        hybrid=dict(features=8, growth=4, n_blocks=3, layers_per_block=2, reduction=4, dropout=0.3,
                    head_features=32, stem_stride=2, lesion_pooling=True),
        with_mask=True, window=_FIXED_EVAL_WINDOW, rotate_deg=0.0, lr=3e-3, lr_schedule="cosine",
        select="last", eval_batch_size=16,
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
