"""2D slice-based baselines for lesion classification (paper.md, 3.2: ResNet-50 and DenseNet-121, majority vote).

The networks are torchvision's ``resnet50`` / ``densenet121`` built with ``weights=None`` (nothing is
downloaded), with the first conv rebuilt for ``in_channels`` and a single-logit head returning (batch,).
Pretrained weights come only from a local state_dict file. Torch/torchvision only: no nnU-Net imports.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.models import densenet121, resnet50

__all__ = [
    "LogitLinear",
    "make_resnet50_2d",
    "make_densenet121_2d",
    "load_pretrained",
    "lesion_slices",
    "aggregate_slices",
]


class LogitLinear(nn.Linear):
    """Linear layer with one output, returning (batch,) instead of (batch, 1).

    A subclass rather than a wrapper, so the state_dict keys stay torchvision's (``fc.weight``,
    ``classifier.weight``) and ImageNet checkpoints line up.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__(in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).squeeze(-1)


def make_resnet50_2d(in_channels: int = 1, pretrained_path: str | os.PathLike | None = None) -> nn.Module:
    """ResNet-50 for single-logit slice classification.

    Args:
        in_channels: channels of the input slices.
        pretrained_path: optional local state_dict file (see :func:`load_pretrained`).

    Returns:
        Module mapping (batch, in_channels, H, W) to logits (batch,).
    """
    net = resnet50(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = LogitLinear(net.fc.in_features)
    if pretrained_path is not None:
        load_pretrained(net, pretrained_path, first_conv="conv1.weight", head_prefix="fc.")
    return net


def make_densenet121_2d(in_channels: int = 1, pretrained_path: str | os.PathLike | None = None) -> nn.Module:
    """DenseNet-121 for single-logit slice classification.

    Args:
        in_channels: channels of the input slices.
        pretrained_path: optional local state_dict file (see :func:`load_pretrained`).

    Returns:
        Module mapping (batch, in_channels, H, W) to logits (batch,).
    """
    net = densenet121(weights=None)
    net.features.conv0 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.classifier = LogitLinear(net.classifier.in_features)
    if pretrained_path is not None:
        load_pretrained(net, pretrained_path, first_conv="features.conv0.weight", head_prefix="classifier.")
    return net


# torchvision's released DenseNet checkpoints use "norm.1"-style keys; its own loader renames them the same way.
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Convert a first-conv kernel (out, c, k, k) to ``in_channels`` inputs.

    Grey-scale from RGB sums the colour kernels (the response to a grey image is unchanged); other counts
    repeat the mean kernel scaled by ``c / in_channels``, as timm's ``adapt_input_conv`` does.
    """
    c = weight.shape[1]
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (c / in_channels)


def load_pretrained(net: nn.Module, path: str | os.PathLike, *, first_conv: str, head_prefix: str) -> None:
    """Load a local state_dict into ``net`` in place.

    The file is read with ``torch.load(..., weights_only=True)``; a ``{"state_dict": ...}`` wrapper and a
    ``module.`` prefix (DataParallel) are accepted. The first-conv kernel is converted when only its input
    channels differ (ImageNet RGB -> 1 channel: summed); head tensors (``head_prefix``) whose shapes differ
    from the model's (e.g. 1000 ImageNet classes) are skipped and keep their random initialisation.

    Args:
        net: the torchvision model.
        path: state_dict file.
        first_conv: key of the first conv kernel.
        head_prefix: key prefix of the classification head.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a state_dict, or its keys/shapes do not match ``net`` (the message names
            the file and the offending keys).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors have no common base class
        raise ValueError(f"could not read a state_dict from {path}: {err}") from err
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state_dict (a mapping of names to tensors)")

    model_state = net.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        key = _LEGACY_DENSENET_KEY.sub(r"\1\2", key)
        converted[key] = value
    if first_conv in converted and first_conv in model_state:
        w, target = converted[first_conv], model_state[first_conv]
        only_inputs_differ = (w.shape[0], *w.shape[2:]) == (target.shape[0], *target.shape[2:])
        if w.ndim == 4 and w.shape != target.shape and only_inputs_differ:
            converted[first_conv] = _adapt_first_conv(w, target.shape[1])
    for key in [k for k in converted if k.startswith(head_prefix)]:
        if key in model_state and converted[key].shape != model_state[key].shape:
            del converted[key]

    # Checkpoints written before torch 0.4.1 carry no batch-norm counters; the model keeps its own.
    missing = sorted(
        k
        for k in model_state
        if k not in converted and not k.startswith(head_prefix) and not k.endswith("num_batches_tracked")
    )
    unexpected = sorted(k for k in converted if k not in model_state)
    mismatched = sorted(
        f"{k}: file {tuple(converted[k].shape)} vs model {tuple(model_state[k].shape)}"
        for k in converted
        if k in model_state and converted[k].shape != model_state[k].shape
    )
    if missing or unexpected or mismatched:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                parts.append(f"{len(keys)} {name} (e.g. {', '.join(keys[:3])})")
        raise ValueError(f"state_dict in {path} does not match {type(net).__name__}: " + "; ".join(parts))
    net.load_state_dict(converted, strict=False)


def lesion_slices(crop: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Axial slices of a lesion crop that contain lesion voxels, ready for a 2D classifier.

    The axial axis is the first spatial axis (nnU-Net's (z, y, x) order).

    Args:
        crop: (D, H, W) or (channels, D, H, W) image crop.
        mask: (D, H, W) lesion mask; non-zero is lesion.

    Returns:
        (n_slices, channels, H, W) float tensor, slices in z order; the centre slice ``D // 2`` alone when the
        mask is empty.
    """
    crop = torch.as_tensor(crop, dtype=torch.float32)
    mask = torch.as_tensor(mask)
    if crop.ndim == 3:
        crop = crop[None]
    if crop.ndim != 4 or mask.shape != crop.shape[1:]:
        raise ValueError(f"crop (C, D, H, W) or (D, H, W) and mask (D, H, W) expected, got {tuple(crop.shape)} "
                         f"and {tuple(mask.shape)}")
    index = torch.nonzero((mask != 0).flatten(1).any(dim=1)).flatten()
    if index.numel() == 0:
        index = torch.tensor([mask.shape[0] // 2])
    return crop[:, index].transpose(0, 1).contiguous()


def aggregate_slices(slice_probs: Sequence[float] | torch.Tensor | np.ndarray) -> tuple[int, float]:
    """Fuse slice predictions of one lesion.

    Args:
        slice_probs: (n_slices,) malignancy probabilities.

    Returns:
        Majority-vote label over slices (slice label = prob >= 0.5; a tie is broken by mean prob >= 0.5) and the
        mean probability (the lesion score for ROC/AUC).
    """
    p = np.asarray(torch.as_tensor(slice_probs).detach().cpu(), dtype=np.float64).ravel()
    if p.size == 0:
        raise ValueError("no slice probabilities given")
    mean = float(p.mean())
    votes = int((p >= 0.5).sum())
    if 2 * votes == p.size:
        return int(mean >= 0.5), mean
    return int(2 * votes > p.size), mean
