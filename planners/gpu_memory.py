"""Peak GPU memory of one mixed-precision training step, estimated on the CPU; patch and batch for a GPU.

nnU-Net sizes its plans with a proxy (the summed feature-map sizes of a ``PlainConvUNet``, compared with a
reference value that was tuned by hand to fit 8 GB). That proxy does not know other networks (the
dual-stream model's 2D stream, attention gates, a second 3D stream). This module instead measures what
autograd really keeps for backward, for any ``nn.Module``, and adds the rest of a training step:

    peak = FRAGMENTATION_FACTOR * ALLOCATED_CALIBRATION * (parameters + gradients + optimizer state
           + half-precision weight copies + saved activations + largest temporary) + CUDA_CONTEXT_GIB

Saved activations are counted with :func:`torch.autograd.graph.saved_tensors_hooks` in one training
forward pass (with a Dice + BCE loss over every output) under autocast, at a small calibration patch on
the CPU, and scaled linearly in batch and patch voxels (exact for fully convolutional networks whose patch
is a multiple of the network's total stride, up to per-channel vectors: the H200 network below, measured at
32 x 64 x 64 and scaled, is within 0.03 % of a direct count at 48 x 96 x 96; tested on tiny networks). On the CPU, bfloat16 autocast stands in for CUDA's
float16 autocast: both keep convolution outputs in 2 bytes per element. The op lists differ (torch 2.14,
``ATen/autocast_mode.h`` for CUDA; measured for the CPU): CUDA runs softmax, log_softmax, layer_norm,
group_norm, exp/log/pow, sum/prod/cumsum and the upsample_* ops in float32, the CPU keeps them in bfloat16;
the CPU runs max_pool3d, avg_pool3d and adaptive_avg_pool3d in float32, CUDA in float16. Both run
convolutions and matmuls in half precision, instance/batch norm and LeakyReLU in their input's precision,
and binary_cross_entropy_with_logits / mse_loss in float32. For U-Nets made of conv, instance norm and
(leaky) ReLU the two count the same bytes; a network that keeps full-resolution tensors through
group/layer norm or softmax would be undercounted for CUDA (up to 2x for those tensors).

**Not validated on a GPU by this module.** The constants below are calibrated against the project's one
GPU measurement and nnU-Net's own design target; see their comments, and re-calibrate them with
``scripts/gpu_check.py`` (``train_peak_mem_gib``) when a GPU run of the target network exists.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

GIB = 2 ** 30

#: GPU memory presets in GiB, like nnU-Net's ResEnc M/L/XL presets (a "24 GB" RTX 3090 has 24 GiB =
#: 24576 MiB; likewise 11 GiB for an RTX 2080 Ti, 40/80 GiB for A100s). Default: the paper's RTX 3090.
GPU_TARGETS_GB: dict[str, float] = {"11GB": 11, "24GB": 24, "40GB": 40, "80GB": 80}
DEFAULT_GPU_TARGET_GB: float = 24
GPU_MEMORY_ENV = "NNUNET_LIVER_GPU_MEMORY_GB"

#: The project's one GPU figure: on an H200, ``scripts/gpu_check.py`` trained ``LiverUNetTrainer`` (nnU-Net's
#: planned 3d_fullres PlainConvUNet behind a window layer, for 8 phantoms of 256^2 (6 in fold 0's training
#: split): patch 64 x 192 x 192, batch 2, 6 stages with strides 1,2,2,2,2,(1,2,2), features 32..320, 2 convs
#: per stage, instance norm, 2 region outputs with deep supervision, float16 autocast, SGD with momentum,
#: torch.compile off) to ``torch.cuda.max_memory_allocated`` = 5.3 GiB (README, "GPU recipe").
MEASURED_ALLOCATED_GIB_H200: float = 5.3
#: This module's sum (parameters, gradients, momentum, weight copies, saved activations, largest
#: temporary) for that network: ``python -m nnunet_liver.planners.gpu_memory --calibrate`` (a test checks it).
SUM_GIB_H200: float = 5.380
#: ``max_memory_allocated`` / this module's sum, from the H200 figure (0.985). What the sum misses
#: (cuDNN workspaces, two adjacent layers' gradients alive together in backward, the loss targets, the window
#: layer) about cancels what it over-counts (the largest temporary is a guess: one float32 copy of the
#: largest saved tensor). One network, one run: a different architecture may need its own figure.
ALLOCATED_CALIBRATION: float = MEASURED_ALLOCATED_GIB_H200 / SUM_GIB_H200

#: GiB the CUDA context, cuDNN/cuBLAS handles and loaded kernels take on the device, outside PyTorch's
#: allocator (so not in ``max_memory_allocated``). An assumption, not measured here: figures commonly
#: reported for a PyTorch process on Ampere/Hopper GPUs are 0.5-1 GiB; 0.75 GiB is the middle of that range.
CUDA_CONTEXT_GIB: float = 0.75

#: nnU-Net's planner assumption for the H200 network: its proxy (``compute_conv_feature_map_size`` of the
#: planned network with 3 output channels, 510,452,928 at batch 2) against its reference (560,000,000 at
#: batch 2 = 8 GB; ``ExperimentPlanner.UNet_reference_val_3d``, ``UNet_reference_val_corresp_GB``).
NNUNET_PROXY_GB_H200: float = 8 * 510_452_928 / 560_000_000  # 7.29 GB

#: Peak GPU memory / peak allocated, beyond the context: the caching allocator's reserved-but-unused
#: blocks (fragmentation) plus headroom. Solved so that the H200 network, measured at 5.3 GiB allocated,
#: comes out at nnU-Net's own budget for it: (7.29 - 0.75) / 5.3 = 1.23, i.e. 23 % over the allocated peak
#: (plausible for PyTorch's caching allocator, whose reserved memory commonly exceeds its allocated peak by
#: 5-25 %; not measured here). With it, this estimate and nnU-Net's proxy agree within 4 % for its
#: 3d_fullres U-Nets at batch 2 from 128^3 (estimate 6.7 GiB, proxy 6.5 GB) to 128 x 160^2 (9.7 / 10.1); at
#: 128 x 128 x 160, about nnU-Net's 8 GB limit, 8.0 GiB against 8.1 GB.
FRAGMENTATION_FACTOR: float = (NNUNET_PROXY_GB_H200 - CUDA_CONTEXT_GIB) / MEASURED_ALLOCATED_GIB_H200

#: Optimizer state per parameter, in fp32 copies: SGD with momentum (nnU-Net's default) 1, Adam/AdamW 2.
OPTIMIZER_STATE_COPIES = {"sgd": 0, "sgd_momentum": 1, "adam": 2, "adamw": 2}

#: The largest temporary is one float32 copy of the largest saved activation (e.g. a float32 gradient or
#: normalisation buffer at full resolution during backward): its elements x 4 bytes.
TEMPORARY_BYTES_PER_ELEMENT = 4


# ----------------------------------------------------------------------------------------------------------
# GPU target
# ----------------------------------------------------------------------------------------------------------

def parse_gpu_memory_gb(value: str | float) -> float:
    """A GPU memory target in GiB from a number (``24``, ``"24"``, ``"10.5"``) or a preset (``"24GB"``).

    Raises:
        ValueError: not a finite number, not a preset name, or below 2 GiB (less than the context and
            one small network need).
        TypeError: neither a string nor a number (``None``, a bool).
    """
    if isinstance(value, str):
        text = value.strip()
        presets = {k.lower(): v for k, v in GPU_TARGETS_GB.items()}
        if text.lower() in presets:
            return float(presets[text.lower()])
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"GPU memory target must be a number of GiB or one of {', '.join(GPU_TARGETS_GB)}, "
                             f"got {value!r}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"GPU memory target must be a number of GiB, got {value!r}")
    else:
        number = float(value)
    if not math.isfinite(number) or number < 2:
        raise ValueError(f"GPU memory target must be a finite number of GiB >= 2, got {value!r}")
    return number


def gpu_memory_target_gb(environ: Mapping[str, str] | None = None,
                         default: float = DEFAULT_GPU_TARGET_GB) -> float:
    """The target from ``NNUNET_LIVER_GPU_MEMORY_GB`` (unset or empty: ``default``). Call it at the edge
    (command line, trainer construction) and pass the number down.

    Raises:
        ValueError: the variable holds junk; the message names the variable.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get(GPU_MEMORY_ENV, "")
    if not raw.strip():
        return float(default)
    try:
        return parse_gpu_memory_gb(raw)
    except ValueError as e:
        raise ValueError(f"{GPU_MEMORY_ENV}={raw!r}: {e}") from None


# ----------------------------------------------------------------------------------------------------------
# Saved tensors
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SavedTensorProfile:
    """What autograd saved in one training forward at ``patch_size`` x ``batch_size`` (bytes, each storage
    counted once). ``largest_activation_elements``: elements of the largest saved activation storage.
    ``parameter_bytes`` are parameters saved as they are (not counted as activations);
    ``weight_copy_bytes`` are autocast's half-precision copies of parameters (constant in the patch)."""

    patch_size: tuple[int, ...]
    batch_size: int
    activation_bytes: int
    largest_activation_elements: int
    weight_copy_bytes: int
    parameter_bytes: int
    bytes_by_dtype: dict[str, int] = field(default_factory=dict)
    n_tensors: int = 0

    @property
    def voxels(self) -> int:
        return math.prod(self.patch_size) * self.batch_size

    def scaled(self, patch_size: Sequence[int], batch_size: int) -> SavedTensorProfile:
        """Activations scaled linearly in batch x patch voxels; parameters and weight copies unchanged."""
        f = math.prod(patch_size) * batch_size / self.voxels
        return SavedTensorProfile(tuple(int(p) for p in patch_size), int(batch_size),
                                  round(self.activation_bytes * f), round(self.largest_activation_elements * f),
                                  self.weight_copy_bytes, self.parameter_bytes,
                                  {k: round(v * f) for k, v in self.bytes_by_dtype.items()}, self.n_tensors)


def _fake_mode():
    """torch's FakeTensorMode: every operation yields a tensor of the right shape, dtype and storage sharing
    without computing it, so counting saved tensors costs no arithmetic (bf16 autocast on a CPU without
    native bf16 took 42 s for one 16 x 32^2 U-Net forward; fake: 0.3 s and the same bytes within 0.02 %:
    only the norms' per-channel statistics come out bf16 instead of float32)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


def _storage_key(storage: torch.UntypedStorage) -> int:
    """Identity of a storage: its StorageImpl's address, which also tells apart the storages of fake tensors
    (whose data pointers are all 0)."""
    return int(storage._cdata)


def _is_parameter_copy(t: torch.Tensor, param_ids: set[int]) -> bool:
    """A cast of a parameter made by autocast (ToCopyBackward0 whose input is a parameter's AccumulateGrad)."""
    fn = t.grad_fn
    if fn is None or not type(fn).__name__.startswith("ToCopyBackward"):
        return False
    for nxt, _ in fn.next_functions:
        variable = getattr(nxt, "variable", None)
        if variable is not None and id(variable) in param_ids:
            return True
    return False


def nnunet_like_loss(outputs: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """A stand-in for nnU-Net's Dice + BCE (region training) with deep supervision: for every output,
    BCE with logits (float32 under autocast) plus a soft Dice of the sigmoid, against all-zero targets."""
    outs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    total = outs[0].new_zeros((), dtype=torch.float32)
    for i, o in enumerate(outs):
        target = torch.zeros_like(o, dtype=torch.float32)
        p = torch.sigmoid(o)
        axes = tuple(range(2, o.ndim))
        dice = (2 * (p * target).sum(axes) + 1) / (p.sum(axes) + target.sum(axes) + 1)
        total = total + 0.5 ** i * (F.binary_cross_entropy_with_logits(o, target) - dice.mean())
    return total


def _autocast_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    if dtype == torch.float32:
        return None
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float16, torch.bfloat16 or torch.float32, got {dtype}")
    # CPU stand-in for CUDA float16: bfloat16 (same 2 bytes; CPU float16 convolutions are slow or missing)
    return torch.bfloat16 if device.type == "cpu" else dtype


def measure_saved_tensors(net: nn.Module, patch_size: Sequence[int], batch_size: int = 1,
                          input_channels: int = 1, dtype: torch.dtype = torch.float16, *,
                          loss_fn: Callable | None = None, device: str | torch.device = "cpu",
                          fake: bool = True) -> SavedTensorProfile:
    """Run one training forward (``net.train()``, autocast, ``loss_fn`` over the outputs) at exactly
    ``patch_size`` x ``batch_size`` and count the tensors autograd saves for backward.

    With ``fake`` (default) nothing is computed: the pass runs under torch's FakeTensorMode, which gives
    every tensor its real shape, dtype and storage; ``fake=False`` computes it (the tests check both agree).
    Each storage is counted once (its StorageImpl): an in-place LeakyReLU and the
    convolution that follows save the same tensor. Saved tensors stay alive until backward, so a pointer
    cannot be reused during the pass. Tensors a custom ``autograd.Function`` keeps as plain ``ctx``
    attributes (instead of ``ctx.save_for_backward``) are not seen. Activation checkpointing
    (``torch.utils.checkpoint``, non-reentrant) is counted as it stores: a checkpointed segment adds only
    its input; the segment's activations recomputed during backward are not counted. ``net``'s training
    mode and buffers are restored afterwards; no backward is run.
    """
    device = torch.device(device)
    loss_fn = nnunet_like_loss if loss_fn is None else loss_fn
    params = list(net.parameters())
    param_ptrs = {_storage_key(p.untyped_storage()) for p in params}
    param_ids = {id(p) for p in params}
    seen: dict[int, tuple[int, int, str]] = {}  # storage pointer: bytes, elements, dtype
    copies: dict[int, int] = {}
    param_bytes: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # no storage (e.g. a nested or sparse tensor)
            return t
        ptr, nbytes = _storage_key(storage), storage.nbytes()
        if ptr in param_ptrs:
            param_bytes[ptr] = nbytes
        elif _is_parameter_copy(t, param_ids):
            copies[ptr] = nbytes
        elif ptr not in seen:
            seen[ptr] = (nbytes, nbytes // t.element_size(), str(t.dtype).replace("torch.", ""))
        return t

    cast = _autocast_dtype(device, dtype)
    was_training = net.training
    buffers = {name: b.detach().clone() for name, b in net.named_buffers()}  # e.g. batch-norm statistics
    net.train()
    try:
        with _fake_mode() if fake else contextlib.nullcontext(), \
                torch.autocast(device.type, dtype=cast or torch.bfloat16, enabled=cast is not None), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            x = torch.randn(int(batch_size), int(input_channels), *(int(p) for p in patch_size), device=device)
            loss = loss_fn(net(x))
        del loss
    finally:
        net.train(was_training)
        with torch.no_grad():
            for name, b in net.named_buffers():
                b.copy_(buffers[name])
    by_dtype: dict[str, int] = {}
    for nbytes, _, name in seen.values():
        by_dtype[name] = by_dtype.get(name, 0) + nbytes
    return SavedTensorProfile(tuple(int(p) for p in patch_size), int(batch_size),
                              sum(n for n, _, _ in seen.values()), max((e for _, e, _ in seen.values()), default=0),
                              sum(copies.values()), sum(param_bytes.values()), by_dtype, len(seen))


def shape_divisor(net: nn.Module, ndim: int) -> tuple[int, ...]:
    """Per-axis product of a network's strides: ``net.shape_divisor`` if it defines one (an int or one per
    axis), else the product of ``net.encoder.strides`` (dynamic_network_architectures' U-Nets; strides with
    fewer axes than the patch apply to its last axes), else 1s (the calibration then runs at full size on
    every axis). A network with a second path that strides further (e.g. a contextual 3D stream) should
    define ``shape_divisor``, or the caller passes ``calibration=``."""
    own = getattr(net, "shape_divisor", None)
    if own is not None:
        own = list(own) if isinstance(own, Iterable) else [own] * ndim
        if len(own) != ndim:
            raise ValueError(f"{type(net).__name__}.shape_divisor has {len(own)} axes, the patch {ndim}")
        return tuple(int(d) for d in own)
    strides = getattr(getattr(net, "encoder", None), "strides", None)
    if strides is None:
        return (1,) * ndim
    div = [1] * ndim
    for s in strides:
        s = [int(s)] * ndim if isinstance(s, int) else [int(k) for k in s]
        s = [1] * (ndim - len(s)) + s[-ndim:]  # a 2D encoder inside a 3D network strides the last axes
        div = [d * k for d, k in zip(div, s)]
    return tuple(div)


def calibration_patch(patch_size: Sequence[int], divisor: Sequence[int], keep_axes: Iterable[int] = (),
                      multiple: int = 2) -> tuple[int, ...]:
    """The small patch to measure at: ``multiple`` x the divisor per axis (so the deepest feature map keeps
    ``multiple`` voxels per axis and instance norm has more than one voxel), never above ``patch_size``.
    Axes in ``keep_axes``, axes with divisor 1 (no downsampling, or a network whose strides are unknown)
    and axes where the patch is not a multiple of the divisor keep their full size, so that every feature
    map of the calibration patch is an exact fraction of the real one."""
    keep = set(keep_axes)
    out = []
    for axis, (p, d) in enumerate(zip(patch_size, divisor)):
        p, d = int(p), int(d)
        out.append(p if axis in keep or d <= 1 or p % d else min(p, multiple * d))
    return tuple(out)


def activation_bytes(net: nn.Module, patch_size: Sequence[int], batch_size: int = 1, input_channels: int = 1,
                     dtype: torch.dtype = torch.float16, **kwargs) -> int:
    """Bytes of the tensors autograd saves for backward in one training forward at ``patch_size`` x
    ``batch_size`` under autocast (parameters and their half-precision copies excluded), measured at a
    small calibration patch with batch 1 and scaled linearly in voxels. See :func:`activation_profile`."""
    return activation_profile(net, patch_size, batch_size, input_channels, dtype, **kwargs).activation_bytes


def activation_profile(net: nn.Module, patch_size: Sequence[int], batch_size: int = 1, input_channels: int = 1,
                       dtype: torch.dtype = torch.float16, *, calibration: Sequence[int] | None = None,
                       loss_fn: Callable | None = None, device: str | torch.device = "cpu") -> SavedTensorProfile:
    """:func:`measure_saved_tensors` at ``calibration`` (default :func:`calibration_patch` from the
    network's :func:`shape_divisor`; a network with a ``z_margin`` keeps axis 0 at full size, since its
    z padding is not linear in the patch), scaled to ``patch_size`` x ``batch_size``."""
    patch_size = tuple(int(p) for p in patch_size)
    if calibration is None:
        keep = (0,) if getattr(net, "z_margin", 0) else ()
        calibration = calibration_patch(patch_size, shape_divisor(net, len(patch_size)), keep)
    measured = measure_saved_tensors(net, calibration, 1, input_channels, dtype, loss_fn=loss_fn, device=device)
    return measured.scaled(patch_size, batch_size)


# ----------------------------------------------------------------------------------------------------------
# Peak of a training step
# ----------------------------------------------------------------------------------------------------------

def _parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def estimate_training_peak(net: nn.Module, patch_size: Sequence[int], batch_size: int, input_channels: int = 1,
                           dtype: torch.dtype = torch.float16, *, optimizer: str = "sgd_momentum",
                           profile: SavedTensorProfile | None = None, **profile_kwargs) -> dict:
    """Estimated peak GPU memory (GiB) of one training step of ``net`` (float32 master weights, autocast).

    Returns a dict of GiB figures: ``parameters``, ``gradients``, ``optimizer_state`` (float32, ``optimizer``
    in :data:`OPTIMIZER_STATE_COPIES`), ``weight_copies`` (autocast's half-precision parameter copies),
    ``activations`` (saved for backward), ``largest_temporary``, their ``sum``, ``allocated``
    (``sum`` x :data:`ALLOCATED_CALIBRATION`: compare with ``torch.cuda.max_memory_allocated``) and
    ``peak`` (``allocated`` x :data:`FRAGMENTATION_FACTOR` + :data:`CUDA_CONTEXT_GIB`: compare with the
    GPU's memory); plus ``patch_size``, ``batch_size`` and ``parameter_count``. Not validated on a GPU.

    ``profile``: a :class:`SavedTensorProfile` measured before (any patch and batch), rescaled instead of
    measuring again; otherwise ``profile_kwargs`` (``calibration``, ``loss_fn``, ``device``) go to
    :func:`activation_profile`.
    """
    if optimizer not in OPTIMIZER_STATE_COPIES:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZER_STATE_COPIES)}, got {optimizer!r}")
    if profile is None:
        profile = activation_profile(net, patch_size, batch_size, input_channels, dtype, **profile_kwargs)
    else:
        profile = profile.scaled(patch_size, batch_size)
    n = _parameter_count(net)
    parts = {
        "parameters": 4 * n,
        "gradients": 4 * n,
        "optimizer_state": 4 * n * OPTIMIZER_STATE_COPIES[optimizer],
        "weight_copies": profile.weight_copy_bytes,
        "activations": profile.activation_bytes,
        "largest_temporary": profile.largest_activation_elements * TEMPORARY_BYTES_PER_ELEMENT,
    }
    out = {k: v / GIB for k, v in parts.items()}
    out["sum"] = sum(parts.values()) / GIB
    out["allocated"] = out["sum"] * ALLOCATED_CALIBRATION
    out["peak"] = out["allocated"] * FRAGMENTATION_FACTOR + CUDA_CONTEXT_GIB
    out.update(patch_size=list(profile.patch_size), batch_size=int(batch_size), parameter_count=n)
    return out


# ----------------------------------------------------------------------------------------------------------
# Choosing patch and batch
# ----------------------------------------------------------------------------------------------------------

def choose_patch_and_batch(build_net: Callable[[Sequence[int]], nn.Module], candidate_patches: Iterable[Sequence[int]],
                           target_gb: float, min_batch: int = 2, *, max_batch: int = 64,
                           dataset_voxels: float | None = None, max_dataset_covered: float = 0.05,
                           input_channels: int = 1, dtype: torch.dtype = torch.float16,
                           optimizer: str = "sgd_momentum", **profile_kwargs) -> tuple[tuple[int, ...], int, dict]:
    """The largest candidate patch (in voxels) whose estimated peak at ``min_batch`` fits ``target_gb``,
    then the largest batch (up to ``max_batch``) that still fits, capped like nnU-Net's planner so that one
    batch covers at most ``max_dataset_covered`` of ``dataset_voxels`` (never below ``min_batch``).

    ``build_net(patch)`` returns the network planned for that patch (its depth may depend on the patch).
    Activations are measured once per patch (at batch 1) and scaled, so growing the batch costs nothing.

    Returns ``(patch, batch_size, estimate)`` with ``estimate`` from :func:`estimate_training_peak`.

    Raises:
        ValueError: no candidate fits at ``min_batch``; the message gives the smallest candidate's estimate.
    """
    if min_batch < 1:
        raise ValueError(f"min_batch must be >= 1, got {min_batch}")
    candidates = sorted({tuple(int(p) for p in c) for c in candidate_patches}, key=lambda c: (-math.prod(c), c))
    if not candidates:
        raise ValueError("no candidate patches")
    smallest = None
    for patch in candidates:
        net = build_net(patch)
        profile = activation_profile(net, patch, 1, input_channels, dtype, **profile_kwargs)
        estimate = functools.partial(estimate_training_peak, net, patch, input_channels=input_channels,
                                     dtype=dtype, optimizer=optimizer, profile=profile)
        est = estimate(min_batch)
        smallest = est
        if est["peak"] > target_gb:
            continue
        cap = max_batch
        if dataset_voxels is not None:
            cap = min(cap, max(min_batch, round(dataset_voxels * max_dataset_covered / math.prod(patch))))
        batch = min_batch
        while batch < cap:
            nxt = estimate(batch + 1)
            if nxt["peak"] > target_gb:
                break
            batch, est = batch + 1, nxt
        return patch, batch, est
    raise ValueError(f"no candidate patch fits {target_gb} GiB at batch {min_batch}: the smallest, "
                     f"{list(candidates[-1])}, needs an estimated {smallest['peak']:.2f} GiB")


# ----------------------------------------------------------------------------------------------------------
# Command line: python -m nnunet_liver.planners.gpu_memory [--patch Z Y X] [--batch B] [--calibrate]
# ----------------------------------------------------------------------------------------------------------

def nnunet_3d_fullres_unet(strides: Sequence[Sequence[int]], num_classes: int = 3, input_channels: int = 1,
                           deep_supervision: bool = True) -> nn.Module:
    """nnU-Net's default 3d_fullres network for ``strides``: dynamic_network_architectures' PlainConvUNet,
    features 32 doubling up to 320, 2 convs per stage (encoder and decoder), 3x3x3 kernels, instance norm,
    LeakyReLU (what ``ExperimentPlanner.get_plans_for_configuration`` writes into the plans)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    n = len(strides)
    return PlainConvUNet(input_channels, n, [min(32 * 2 ** i, 320) for i in range(n)], nn.Conv3d, [[3, 3, 3]] * n,
                         [list(s) for s in strides], [2] * n, num_classes, [2] * (n - 1), conv_bias=True,
                         norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision)


#: The H200 network of :data:`MEASURED_ALLOCATED_GIB_H200` (nnU-Net's plans for the 256^2 phantoms).
H200_PATCH = (64, 192, 192)
H200_STRIDES = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))


def _format(est: dict) -> str:
    keys = ("parameters", "gradients", "optimizer_state", "weight_copies", "activations", "largest_temporary",
            "sum", "allocated", "peak")
    return "\n".join(f"  {k:18s} {est[k]:7.3f} GiB" for k in keys)


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Estimated peak GPU training memory (float16 autocast, SGD) of "
                                            "nnU-Net's default 3d_fullres PlainConvUNet.")
    p.add_argument("--patch", type=int, nargs=3, default=(128, 128, 128), metavar=("Z", "Y", "X"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--num-classes", type=int, default=3)
    p.add_argument("--calibrate", action="store_true",
                   help="print this module's sum for the H200 network of the calibration (SUM_GIB_H200)")
    args = p.parse_args(argv)
    if args.calibrate:
        net = nnunet_3d_fullres_unet(H200_STRIDES, num_classes=2)
        est = estimate_training_peak(net, H200_PATCH, 2)
        print(f"H200 network {list(H200_PATCH)} x 2: sum {est['sum']:.3f} GiB (SUM_GIB_H200 = {SUM_GIB_H200}), "
              f"measured allocated {MEASURED_ALLOCATED_GIB_H200} GiB\n{_format(est)}")
        return
    # nnU-Net's topology rule at isotropic spacing: stride 2 on every axis whose feature map stays >= 4 voxels
    strides = [[1, 1, 1]]
    edge = list(args.patch)
    while True:
        step = [2 if e % 2 == 0 and e // 2 >= 4 else 1 for e in edge]
        if step == [1, 1, 1]:
            break
        strides.append(step)
        edge = [e // k for e, k in zip(edge, step)]
    net = nnunet_3d_fullres_unet(strides, num_classes=args.num_classes)
    est = estimate_training_peak(net, args.patch, args.batch)
    proxy = 8 * net.compute_conv_feature_map_size(list(args.patch)) * args.batch / 2 / 560_000_000
    print(f"nnU-Net 3d_fullres PlainConvUNet, patch {list(args.patch)}, batch {args.batch}, strides {strides}, "
          f"{est['parameter_count']:,} parameters\n{_format(est)}\n"
          f"nnU-Net's own proxy for this network: {proxy:.2f} GB of its 8 GB reference "
          f"(UNet_reference_val_3d); not validated on a GPU")


if __name__ == "__main__":
    main()
