"""Training, checkpoints and prediction for the lesion classifiers.

Models (``MODELS``):

- ``hybrid3d``: ``HybridLesionNet3D`` on the 3D crop, trained with ``hybrid_loss`` (BCE on the main logit +
  0.3 x cross entropy on the auxiliary branch), both weighted by the class balance of the training lesions
  (``class_balance_weights``);
- ``hybrid3d_noatt``: the same without channel attention (ablation);
- ``resnet50_2d`` / ``densenet121_2d``: torchvision networks on the axial slices of the crop that contain
  lesion (``lesion_slices``), BCE weighted by the slice class balance; a lesion's label is the majority vote of
  its slices and its score the mean slice probability (``aggregate_slices``).

Inputs: HU crops -> augmentation (training only: flips of every axis, 90-degree in-plane turns, small
in-plane rotations, HU scale/shift) -> window (a random level/width per sample from ``sample_windows`` in
training, the preset's fixed evaluation window at validation and prediction; ``apply_window``) -> scaled
to [-1, 1]; the lesion mask is an optional second channel. Adam; early stopping on the validation AUC
(ties broken by the validation loss; the validation loss alone when the validation part has one class,
the training loss when there is no validation part).

A run writes to its fold folder: ``checkpoint_latest.pt`` (every epoch, for ``resume``),
``checkpoint_best.pt``, ``checkpoint_final.pt`` (best weights, written when training ends),
``predictions.csv`` (test lesions of the fold), ``training_log.json`` and ``progress.png``. Checkpoints are
plain dicts of tensors and Python values, read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_liver.architectures.classifiers2d import (
    aggregate_slices,
    lesion_slices,
    make_densenet121_2d,
    make_resnet50_2d,
)
from nnunet_liver.architectures.hybrid3d import (
    HybridLesionNet3D,
    HybridOutput,
    class_balance_weights,
    hybrid_loss,
)
from nnunet_liver.augment.window import apply_window, as_window_config, sample_windows
from nnunet_liver.classification.crops import CropEntry, load_crop, read_index
from nnunet_liver.classification.presets import MODELS, TrainConfig
from nnunet_liver.classification.splits import fold_labels, load_splits

__all__ = [
    "CHECKPOINT_FORMAT",
    "PREDICTION_COLUMNS",
    "CheckpointError",
    "CropData",
    "augment",
    "build_model",
    "count_flops_per_lesion",
    "count_parameters",
    "is_2d",
    "learning_rate",
    "load_checkpoint",
    "load_crop_data",
    "model_from_checkpoint",
    "model_input",
    "normalise",
    "plot_progress",
    "predict_lesions",
    "resolve_device",
    "run_folder",
    "save_checkpoint",
    "train_fold",
    "training_step",
    "write_predictions",
]

CHECKPOINT_FORMAT = "nnunet_liver.classification/1"
PREDICTION_COLUMNS = ("case_id", "lesion_id", "label", "prob", "pred", "n_slices")
# Resuming may extend or shorten the schedule; anything else must match the checkpoint.
_RESUMABLE_CHANGES = {"epochs", "patience", "max_time_s", "eval_batch_size"}  # not budget_clock: units


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here (another model or configuration, unreadable)."""


def is_2d(model_name: str) -> bool:
    return model_name.endswith("_2d")


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    return torch.device(device)


def run_folder(root: str | os.PathLike, model_name: str, preset: str, seed: int = 0) -> Path:
    """``<root>/<model>__<preset>`` (``__seed<k>`` appended for seeds other than 0); folds go below it."""
    return Path(root) / (f"{model_name}__{preset}" + (f"__seed{seed}" if seed else ""))


def build_model(model_name: str, config: TrainConfig, pretrained: str | os.PathLike | None = None) -> nn.Module:
    """A freshly initialised model (2D baselines: optionally from a local state_dict).

    Raises:
        ValueError: unknown model, pretrained weights for the hybrid network, input size not divisible.
    """
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {', '.join(MODELS)}")
    if model_name.startswith("hybrid3d"):
        if pretrained is not None:
            raise ValueError("--pretrained loads 2D baselines only; the hybrid network is trained from scratch")
        kwargs = {**config.hybrid, "use_attention": model_name == "hybrid3d"}
        model = HybridLesionNet3D(in_channels=config.in_channels, **kwargs)
        if config.input_size % model.input_multiple:
            raise ValueError(f"input size {config.input_size} is not divisible by stem_stride * 2**n_blocks = "
                             f"{model.input_multiple}")
        return model
    if model_name == "densenet121_2d" and config.input_size < 32:
        raise ValueError(f"densenet121_2d needs slices of at least 32 x 32 (five 2x reductions), got {config.input_size}")
    make = make_resnet50_2d if model_name == "resnet50_2d" else make_densenet121_2d
    return make(in_channels=config.in_channels, pretrained_path=None if pretrained is None else os.fspath(pretrained))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class CropData:
    """Crops in memory.

    Attributes:
        entries: index rows, in order.
        images: (N, 1, S, S, S) float32 HU.
        masks: (N, 1, S, S, S) float32 0/1.
        labels: (N,) int64, -1 where unknown.
    """

    entries: list[CropEntry]
    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor

    @property
    def keys(self) -> list[str]:
        return [e.key for e in self.entries]

    def subset(self, keys: Sequence[str]) -> CropData:
        pos = {k: i for i, k in enumerate(self.keys)}
        idx = torch.tensor([pos[k] for k in keys], dtype=torch.long)
        return CropData([self.entries[i] for i in idx.tolist()], self.images[idx], self.masks[idx], self.labels[idx])


def load_crop_data(crop_dir: str | os.PathLike, size: int, entries: Sequence[CropEntry] | None = None) -> CropData:
    """Load cached crops, resized to ``size``^3 when they differ (image trilinear, mask nearest)."""
    entries = list(read_index(crop_dir) if entries is None else entries)
    images, masks = [], []
    for e in entries:
        img, msk = load_crop(crop_dir, e)
        images.append(torch.from_numpy(np.asarray(img, dtype=np.float32)))
        masks.append(torch.from_numpy(np.asarray(msk, dtype=np.float32)))
    x = torch.stack(images)[:, None]
    m = torch.stack(masks)[:, None]
    if x.shape[2:] != (size, size, size):
        x = F.interpolate(x, size=(size,) * 3, mode="trilinear", align_corners=False)
        m = F.interpolate(m, size=(size,) * 3, mode="nearest")
    labels = torch.tensor([e.label for e in entries], dtype=torch.long)
    return CropData(entries, x.contiguous(), m.contiguous(), labels)


def augment(x: torch.Tensor, mask: torch.Tensor, config: TrainConfig,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips of every axis, 90-degree in-plane turns, small rotations and HU scale/shift.

    Rotations: 3D crops (isotropic in mm) turn by up to ``config.rotate_deg`` about each of the three axes;
    2D slices turn in-plane.

    Args:
        x: (batch, channels, *spatial) HU, 2D slices or 3D crops; the last two axes are the axial plane
            (square).
        mask: (batch, channels, *spatial) 0/1, moved with the image (nearest neighbour).
        config: rotation and intensity ranges.
        generator: CPU generator for every draw.

    Returns:
        Augmented (x, mask), same shapes.
    """
    b, nd = x.shape[0], x.ndim - 2
    u = torch.rand(b, nd + 6, generator=generator)
    xs, ms = [], []
    for i in range(b):
        xi, mi = x[i], mask[i]
        flips = [1 + d for d in range(nd) if u[i, d] < 0.5]
        if flips:
            xi, mi = xi.flip(flips), mi.flip(flips)
        k = int(u[i, nd] * 4) % 4
        if k:
            xi, mi = torch.rot90(xi, k, dims=(-2, -1)), torch.rot90(mi, k, dims=(-2, -1))
        xs.append(xi)
        ms.append(mi)
    x, mask = torch.stack(xs), torch.stack(ms)
    if config.rotate_deg > 0:
        angles = (2 * u[:, [nd + 1, nd + 4, nd + 5]] - 1) * math.radians(config.rotate_deg)
        theta = torch.zeros(b, nd, nd + 1)
        theta[:, :, :nd] = _rotation(angles[:, 0], 0, 1, nd)  # in-plane: affine_grid's x/y
        if nd == 3:  # then about affine_grid's x axis (y-z plane) and y axis (x-z plane)
            theta[:, :, :nd] = theta[:, :, :nd] @ _rotation(angles[:, 1], 1, 2, 3) @ _rotation(angles[:, 2], 0, 2, 3)
        theta = theta.to(x.device)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        mask = F.grid_sample(mask, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    scale = (1 + (2 * u[:, nd + 2] - 1) * config.intensity_scale).to(x.device)
    shift = ((2 * u[:, nd + 3] - 1) * config.intensity_shift_hu).to(x.device)
    view = (b,) + (1,) * (x.ndim - 1)
    return x * scale.view(view) + shift.view(view), mask


def _rotation(angle: torch.Tensor, i: int, j: int, n: int) -> torch.Tensor:
    """(batch, n, n) rotations by ``angle`` in the plane of coordinates i and j."""
    r = torch.eye(n).repeat(angle.shape[0], 1, 1)
    c, s = torch.cos(angle), torch.sin(angle)
    r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
    return r


def normalise(x: torch.Tensor, level: float | torch.Tensor, width: float | torch.Tensor) -> torch.Tensor:
    """Window HU and scale to [-1, 1] (``2 * apply_window - 1``)."""
    return 2.0 * apply_window(x, level, width) - 1.0


def model_input(x_hu: torch.Tensor, mask: torch.Tensor, config: TrainConfig, *, train: bool,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Windowed, normalised network input: random windows when ``train``, the fixed evaluation window otherwise.

    Args:
        x_hu: (batch, 1, *spatial) HU.
        mask: (batch, 1, *spatial) 0/1 (used when ``config.with_mask``).
    """
    window = as_window_config(config.window)
    if train:
        level, width = sample_windows(window, x_hu.shape[0], generator=generator, device=x_hu.device)
    else:
        level, width = window.eval_level, window.eval_width
    x = normalise(x_hu, level, width)
    return torch.cat([x, mask.to(x.dtype)], dim=1) if config.with_mask else x


def _logit(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.logit if isinstance(out, HybridOutput) else out


def _slices(data: CropData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lesion slices of every crop: (M, 1, S, S) HU, (M, 1, S, S) mask, (M,) lesion index."""
    xs, ms, owner = [], [], []
    for i in range(len(data.entries)):
        both = lesion_slices(torch.cat([data.images[i], data.masks[i]]), data.masks[i, 0])  # (n, 2, S, S)
        xs.append(both[:, :1])
        ms.append(both[:, 1:])
        owner.append(torch.full((both.shape[0],), i, dtype=torch.long))
    return torch.cat(xs), torch.cat(ms), torch.cat(owner)


@torch.no_grad()
def predict_lesions(model: nn.Module, model_name: str, data: CropData, config: TrainConfig,
                    device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Lesion probabilities in eval mode with the fixed evaluation window.

    Returns:
        ``prob`` (N,) P(malignant) (2D: mean over slices), ``pred`` (N,) 0/1 (2D: majority vote of slices,
        3D: prob >= 0.5), ``n_slices`` (N,) (1 for 3D).
    """
    was_training = model.training
    model.eval()
    device = torch.device(device)
    n = len(data.entries)
    try:
        if is_2d(model_name):
            xs, ms, owner = _slices(data)
            probs = []
            step = max(config.slice_batch_size, 1)
            for a in range(0, xs.shape[0], step):
                inp = model_input(xs[a:a + step].to(device), ms[a:a + step].to(device), config, train=False)
                probs.append(torch.sigmoid(_logit(model, inp)).float().cpu())
            slice_prob = torch.cat(probs) if probs else torch.zeros(0)
            prob, pred, n_sl = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
            for i in range(n):
                p = slice_prob[owner == i]
                pred[i], prob[i] = aggregate_slices(p)
                n_sl[i] = p.numel()
            return {"prob": prob, "pred": pred, "n_slices": n_sl}
        probs = []
        step = max(config.eval_batch_size, 1)
        for a in range(0, n, step):
            inp = model_input(data.images[a:a + step].to(device), data.masks[a:a + step].to(device), config,
                              train=False)
            probs.append(torch.sigmoid(_logit(model, inp)).float().cpu())
        prob = torch.cat(probs).numpy().astype(np.float64)
        return {"prob": prob, "pred": (prob >= 0.5).astype(np.int64), "n_slices": np.ones(n, dtype=np.int64)}
    finally:
        model.train(was_training)


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, x_hu: torch.Tensor, mask: torch.Tensor,
                  y: torch.Tensor, *, config: TrainConfig, pos_weight: torch.Tensor | float | None,
                  generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                  augment_batch: bool = True) -> float:
    """One optimisation step on one batch; returns the loss.

    The loss is weighted by the class balance: ``pos_weight = n_benign / n_malignant`` of the training samples
    (``class_balance_weights``), on the BCE of the main logit (2D: of the slice logit) and, for the hybrid
    network, on its auxiliary cross entropy (``hybrid_loss``). ``pos_weight=None`` gives unweighted losses.

    Args:
        x_hu, mask: (batch, 1, *spatial) HU crop or slices and lesion mask (CPU).
        y: (batch,) 0/1 labels.
        augment_batch: apply :func:`augment` (the random window is always drawn).
    """
    model.train()
    if augment_batch:
        x_hu, mask = augment(x_hu, mask, config, generator)
    inp = model_input(x_hu.to(device), mask.to(device), config, train=True, generator=generator)
    y = y.to(device)
    out = model(inp)
    pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32, device=device)
    if isinstance(out, HybridOutput):
        loss = hybrid_loss(out, y, pw, aux_weight=config.aux_weight)
    else:
        loss = F.binary_cross_entropy_with_logits(out, y.float(), pos_weight=pw)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def learning_rate(config: TrainConfig, progress: float) -> float:
    """The learning rate at ``progress`` in [0, 1] of a run (see ``TrainConfig.lr_schedule``)."""
    if config.lr_schedule == "constant":
        return config.lr
    progress = min(max(progress, 0.0), 1.0)
    if progress < config.warmup:
        return config.lr * (progress + 1e-3) / config.warmup
    t = (progress - config.warmup) / (1 - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * t))


def _progress(config: TrainConfig, epoch: int, fraction: float, elapsed: float, epoch_cost: float) -> float:
    """Progress of a run at ``fraction`` of ``epoch``: the larger of the epoch fraction and the fraction of the
    time budget spent (``elapsed`` before this epoch plus ``fraction`` of the last epoch's cost)."""
    progress = (epoch + fraction) / config.epochs
    if config.max_time_s:
        progress = max(progress, (elapsed + fraction * epoch_cost) / config.max_time_s)
    return progress


def _weighted_bce(prob: np.ndarray, y: np.ndarray, pos_weight: float) -> float:
    p = np.clip(prob, 1e-7, 1 - 1e-7)
    return float(np.mean(-(pos_weight * y * np.log(p) + (1 - y) * np.log(1 - p))))


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from nnunet_liver.evaluation.classification_metrics import auc_score

    return auc_score(y, p) if y.size else float("nan")


# ----------------------------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write a checkpoint atomically (a crash never leaves a truncated file under the final name)."""
    from nnunet_liver.data.io import staged_file

    with staged_file(path, overwrite=True) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, expected_model: str | None = None) -> dict:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: missing or unreadable file, not a classifier checkpoint, or another model than
            ``expected_model``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors share no base class
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a lesion-classifier checkpoint of nnunet-liver")
    if expected_model is not None and ckpt["model"] != expected_model:
        raise CheckpointError(f"{path} holds a {ckpt['model']} model, not {expected_model}")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> tuple[nn.Module, TrainConfig]:
    """The model (eval mode, CPU) and configuration stored in a checkpoint."""
    config = TrainConfig.from_dict(ckpt["config"])
    model = build_model(ckpt["model"], config)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit {ckpt['model']}: {str(e)[:300]}") from None
    return model.eval(), config


def _can_extend(ckpt: dict, config: TrainConfig) -> bool:
    """Whether a finished run stopped by a limit that ``config`` raises (more epochs or more time)."""
    reason = ckpt.get("stop_reason")
    if reason == "max epochs":
        return config.epochs > ckpt["epoch"] + 1
    if reason == "time budget":
        return config.max_time_s is None or config.max_time_s > ckpt["elapsed_s"]
    return False


def _config_differences(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if k not in _RESUMABLE_CHANGES and a.get(k) != b.get(k))


# ----------------------------------------------------------------------------------------------------------------
# progress


def plot_progress(history: dict, path: str | os.PathLike, title: str = "") -> None:
    """Training curve: training and validation loss (left axis), validation AUC (right axis), per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nnunet_liver.data.io import staged_file

    epochs = np.arange(len(history["train_loss"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, history["train_loss"], label="train loss", color="tab:blue")
    if any(np.isfinite(history["val_loss"])):
        ax.plot(epochs, history["val_loss"], label="val loss", color="tab:red")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, history["val_auc"], label="val AUC", color="tab:green", ls="--", marker=".")
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_ylabel("val AUC")
    if history.get("best_epoch") is not None:
        ax.axvline(history["best_epoch"], color="grey", lw=0.8, ls=":")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="best", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with staged_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# training


def write_predictions(path: str | os.PathLike, data: CropData, pred: dict[str, np.ndarray], *,
                      overwrite: bool = True) -> None:
    """Per-lesion predictions as CSV (``PREDICTION_COLUMNS``), written atomically."""
    from nnunet_liver.data.io import staged_file

    with staged_file(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(PREDICTION_COLUMNS)
            for e, p, c, n in zip(data.entries, pred["prob"], pred["pred"], pred["n_slices"]):
                w.writerow([e.case_id, e.lesion_id, e.label if e.label >= 0 else "", f"{p:.6f}", int(c), int(n)])


def train_fold(*, crop_dir: str | os.PathLike, out_dir: str | os.PathLike, model_name: str, fold: int,
               config: TrainConfig, seed: int = 0, device: torch.device | str = "cpu", resume: bool = False,
               pretrained: str | os.PathLike | None = None, progress: bool = True,
               log: Callable[[str], None] = print) -> dict:
    """Train one model on one fold, with early stopping, then predict the fold's test lesions.

    Args:
        crop_dir: crop cache with ``index.csv`` and ``splits.json``.
        out_dir: the fold folder (created).
        model_name: one of ``MODELS``.
        fold: fold index in ``splits.json``.
        config: training configuration.
        seed: seeds initialisation, shuffling and augmentation (with the fold).
        device: torch device.
        resume: continue from ``checkpoint_latest.pt`` when present. A finished run is left as it is, unless
            it stopped at the epoch or time limit and ``config`` raises that limit.
        pretrained: local state_dict for the 2D baselines.
        progress: tqdm bar over epochs.
        log: messages.

    Returns:
        Summary (also in ``training_log.json``): epochs run, best epoch and its validation AUC, stop reason,
        training seconds, test AUC and accuracy of the fold, class counts, pos_weight, parameters.

    Raises:
        SplitError: unknown fold or one class in its training part.
        CheckpointError: ``resume`` from a checkpoint of another model or configuration; an existing run
            without ``resume``.
        ValueError: bad model options.
    """
    from tqdm import tqdm

    device = torch.device(device)
    entries = read_index(crop_dir)
    labels = {e.key: e.label for e in entries}
    splits = load_splits(Path(crop_dir) / "splits.json", list(labels))
    counts = fold_labels(splits, fold, labels)
    parts = splits["folds"][fold]
    out = Path(out_dir)
    latest, best_path, final_path = out / "checkpoint_latest.pt", out / "checkpoint_best.pt", out / "checkpoint_final.pt"

    ckpt = None
    if latest.is_file() or final_path.is_file():
        if not resume:
            raise CheckpointError(f"{out} already holds a training run: pass --continue to resume it or "
                                  f"--overwrite to start again")
        ckpt = load_checkpoint(latest if latest.is_file() else final_path, expected_model=model_name)
        diff = _config_differences(ckpt["config"], config.to_dict())
        diff += [k for k, v in (("fold", fold), ("seed", seed)) if ckpt.get(k) != v]
        if {k: sorted(v) for k, v in ckpt.get("keys", {}).items()} != {k: sorted(v) for k, v in parts.items()}:
            diff.append("splits (splits.json changed since this run)")
        if diff:
            raise CheckpointError(f"{out} holds a run with another configuration (differs in: {', '.join(diff)}); "
                                  f"use --overwrite to start again")
        if ckpt.get("finished") and final_path.is_file() and not _can_extend(ckpt, config):
            log(f"{model_name} fold {fold}: already finished ({out})")
            return json.loads((out / "training_log.json").read_text(encoding="utf-8"))["summary"]

    torch.manual_seed(seed * 1000 + fold)
    model = build_model(model_name, config, pretrained=None if ckpt else pretrained).to(device)
    opt_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_class(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed * 1000 + fold + 1)

    data = load_crop_data(crop_dir, config.input_size, entries)
    train_keys, val_keys = list(parts["train"]), list(parts["val"])
    if config.train_on_val:
        train_keys, val_keys = train_keys + val_keys, []
    train, val, test = data.subset(train_keys), data.subset(val_keys), data.subset(parts["test"])
    if is_2d(model_name):
        tr_x, tr_m, owner = _slices(train)
        tr_y = train.labels[owner]
    else:
        tr_x, tr_m, tr_y = train.images, train.masks, train.labels
    pos_weight, _ = class_balance_weights(tr_y)
    lesion_pos_weight = float(class_balance_weights(train.labels)[0])
    batch = config.slice_batch_size if is_2d(model_name) else config.batch_size

    history = {"train_loss": [], "val_loss": [], "val_auc": [], "epoch_s": [], "best_epoch": None}
    start_epoch, best_score, stale, elapsed = 0, None, 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        generator.set_state(ckpt["generator"])
        history = ckpt["history"]
        start_epoch, stale, elapsed = ckpt["epoch"] + 1, ckpt["stale"], ckpt["elapsed_s"]
        best_score = tuple(ckpt["best_score"]) if ckpt["best_score"] is not None else None
        log(f"{model_name} fold {fold}: resuming at epoch {start_epoch}")
    out.mkdir(parents=True, exist_ok=True)

    def state(epoch: int, finished: bool = False, weights: dict | None = None) -> dict:
        return {"format": CHECKPOINT_FORMAT, "model": model_name, "config": config.to_dict(), "fold": fold,
                "seed": seed, "epoch": epoch, "finished": finished, "stop_reason": stop_reason,
                "state_dict": weights if weights is not None else model.state_dict(),
                "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "history": history,
                "best_score": list(best_score) if best_score is not None else None, "stale": stale,
                "elapsed_s": elapsed, "keys": {k: list(v) for k, v in parts.items()}}

    pw = pos_weight.to(device)
    stop_reason = "max epochs"
    bar = tqdm(range(start_epoch, config.epochs), desc=f"{model_name} fold {fold}", unit="epoch",
               disable=not progress, leave=False, initial=start_epoch, total=config.epochs)
    epoch = start_epoch - 1
    last_plot = time.perf_counter()
    clock = time.process_time if config.budget_clock == "cpu" else time.perf_counter
    epoch_cost = 0.0  # budget units the last epoch took: the learning-rate schedule extrapolates within an epoch
    for epoch in bar:
        # stop when the budget is spent, or when the next epoch (as long as the last) would end further past it
        # than it is now short of it: a 2D baseline's epoch is most of a demo budget
        if config.max_time_s is not None and elapsed + epoch_cost / 2 > config.max_time_s:
            stop_reason = "time budget"
            epoch -= 1  # this epoch was not trained: the checkpoint records the last one that was
            break
        t0, c0 = time.perf_counter(), clock()
        model.train()
        order = torch.randperm(tr_x.shape[0], generator=generator)
        losses = []
        for a in range(0, len(order), batch):
            idx = order[a:a + batch]
            if idx.numel() < 2:  # batch norm needs two samples
                continue
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, _progress(config, epoch, a / len(order), elapsed, epoch_cost))
            losses.append(training_step(model, optimizer, tr_x[idx], tr_m[idx], tr_y[idx], config=config,
                                        pos_weight=pw, generator=generator, device=device))
        train_loss = float(np.mean(losses)) if losses else float("nan")
        if val.entries:
            vp = predict_lesions(model, model_name, val, config, device)
            yv = val.labels.numpy()
            val_loss, val_auc = _weighted_bce(vp["prob"], yv, lesion_pos_weight), _auc(yv, vp["prob"])
            score = (val_auc if math.isfinite(val_auc) else -math.inf, -val_loss)
        else:
            val_loss, val_auc = float("nan"), float("nan")
            score = (-math.inf, -train_loss)
        epoch_cost = clock() - c0
        elapsed += epoch_cost
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val_loss)
        history["val_auc"].append(val_auc)
        history["epoch_s"].append(time.perf_counter() - t0)
        if config.select == "last":  # the validation lesions are reported, not used to choose weights
            score = (float(epoch),)
        if best_score is None or score > tuple(best_score):
            best_score, stale = score, 0
            history["best_epoch"] = epoch
            if config.select == "best":  # "last": written once when training ends
                save_checkpoint(best_path, state(epoch))
        else:
            stale += 1
        save_checkpoint(latest, state(epoch))
        if time.perf_counter() - last_plot > 30:  # the figure costs ~0.4 s; refreshed at least twice a minute
            plot_progress(history, out / "progress.png", title=f"{model_name} fold {fold} ({config.preset})")
            last_plot = time.perf_counter()
        bar.set_postfix(loss=f"{train_loss:.3f}", val_auc=f"{val_auc:.3f}", best=history["best_epoch"])
        if stale >= config.patience:
            stop_reason = "early stopping"
            break
    else:
        if config.max_time_s is not None and elapsed + epoch_cost / 2 > config.max_time_s:
            stop_reason = "time budget"
    bar.close()
    if history["best_epoch"] is None:
        raise CheckpointError(f"{model_name} fold {fold}: no epoch was trained (epochs={config.epochs})")

    save_checkpoint(latest, state(epoch, finished=True))  # last-epoch weights: what --continue goes on from
    if config.select == "last":
        save_checkpoint(best_path, state(epoch))
    best = load_checkpoint(best_path, expected_model=model_name)
    model.load_state_dict(best["state_dict"])
    t0 = time.perf_counter()
    pred = predict_lesions(model, model_name, test, config, device)
    predict_s = time.perf_counter() - t0
    write_predictions(out / "predictions.csv", test, pred)
    yt = test.labels.numpy()
    summary = {
        "model": model_name, "fold": fold, "seed": seed, "preset": config.preset,
        "epochs_run": len(history["train_loss"]), "best_epoch": history["best_epoch"],
        "best_val_auc": history["val_auc"][history["best_epoch"]], "stop_reason": stop_reason,
        "train_seconds": elapsed, "test_predict_seconds": predict_s,
        "test_lesions_per_s": len(test.entries) / predict_s if predict_s > 0 else float("nan"),
        "test_auc": _auc(yt, pred["prob"]),
        "test_accuracy": float(np.mean(pred["pred"] == yt)) if yt.size else float("nan"),
        "counts": {k: list(v) for k, v in counts.items()}, "pos_weight": float(pos_weight),
        "n_parameters": count_parameters(model), "device": str(device),
    }
    save_checkpoint(final_path, state(history["best_epoch"], finished=True, weights=best["state_dict"]))
    from nnunet_liver.data.io import json_safe, staged_file

    with staged_file(out / "training_log.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(json_safe({"summary": summary, "config": config.to_dict(),
                                              "history": history}), indent=1), encoding="utf-8")
    plot_progress(history, out / "progress.png", title=f"{model_name} fold {fold} ({config.preset})")
    return summary


def count_flops_per_lesion(model_name: str, config: TrainConfig, mean_slices: float = 1.0) -> float:
    """Forward FLOPs to classify one lesion (2D: one slice times ``mean_slices``), counted on the meta device.

    Counts what ``torch.utils.flop_counter`` counts: convolutions and matrix products (2 FLOPs per MAC).
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(model_name, config).to("meta").eval()
    s = config.input_size
    shape = (1, config.in_channels, s, s) if is_2d(model_name) else (1, config.in_channels, s, s, s)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(shape, device="meta"))
    return counter.get_total_flops() * (mean_slices if is_2d(model_name) else 1.0)
