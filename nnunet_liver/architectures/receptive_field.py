"""Effective receptive field of a network, measured from input gradients (Luo et al., NeurIPS 2016).

The gradient of one output position (the centre, by default) with respect to a random input shows which
input voxels that output depends on and how much. Per spatial axis this module reports

* the theoretical extent: first and last input index with a non-zero gradient (what the layers allow);
* the mass extent: the shortest interval of the axis marginal of ``|grad|`` that holds ``mass`` of it;
* the gradient-weighted mean and standard deviation of the input index, in voxels.

Luo et al. show the effective field is roughly Gaussian and much smaller than the theoretical one; the
mass extent and the standard deviation measure it. Two things make the theoretical extent the whole input:
normalisation over space (``InstanceNorm``, and ``BatchNorm`` in training mode: its batch statistics mix
every voxel) and global pooling (squeeze-and-excitation, CBAM channel attention). ``rel_tol`` then shows
the extent of the voxels that matter more than a small fraction of the largest gradient.

Works for 2D and 3D inputs. The caller sets train/eval mode; :func:`effective_receptive_field` never
switches it (:func:`receptive_field_table` puts modules in eval mode and restores their mode afterwards).

    python -m nnunet_liver.architectures.receptive_field torch.nn:Conv3d --kwargs '{"in_channels": 1,
        "out_channels": 4, "kernel_size": 3}' --shape 1 1 16 32 32
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

__all__ = ["effective_receptive_field", "main", "receptive_field_table", "shortest_interval"]


def _first_output(y):
    # deep supervision returns a list of outputs, full resolution first
    return y[0] if isinstance(y, (list, tuple)) else y


def shortest_interval(weights: torch.Tensor, mass: float, centre: float | None = None) -> tuple[int, int]:
    """The shortest index interval ``[first, last]`` whose weights sum to at least ``mass`` of the total.

    Among equally short intervals the one whose middle is nearest ``centre`` wins (then the lowest).

    Args:
        weights: (n,) non-negative weights with a positive sum.
        mass: fraction in (0, 1].
        centre: preferred middle of the interval, in index units.
    """
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    w = weights.detach().double().cpu().flatten()
    total = float(w.sum())
    if not total > 0:
        raise ValueError("weights sum to zero")
    cum = torch.cat([torch.zeros(1, dtype=w.dtype), torch.cumsum(w, 0)])
    # float tolerance: mass 1.0 must find the interval of all non-zero weights despite rounding in cumsum
    need = mass * total * (1 - 1e-12)
    n = w.numel()
    # for each first index, the smallest end (exclusive) with cum[end] - cum[first] >= need
    ends = torch.searchsorted(cum, cum[:-1] + need, right=False)
    valid = ends <= n
    firsts = torch.arange(n)[valid]
    lengths = ends[valid] - firsts
    best = int(lengths.min())
    cand = firsts[lengths == best]
    mid = cand.double() + (best - 1) / 2
    ref = (n - 1) / 2 if centre is None else centre
    first = int(cand[torch.argmin((mid - ref).abs())])
    return first, first + best - 1


def effective_receptive_field(fn: Callable[[torch.Tensor], torch.Tensor], input_shape: Sequence[int], *,
                              centre: Sequence[int] | None = None, mass: float = 0.95, seed: int = 0,
                              n_samples: int = 1, device: torch.device | str = "cpu", channel: int | None = None,
                              rel_tol: float = 0.0) -> dict:
    """Receptive field of one output position of ``fn``, from the input gradient on random inputs.

    ``fn`` gets standard-normal inputs drawn from ``seed``; the gradient of the output at ``centre``
    (summed over output channels, or channel ``channel``) with respect to the input is taken per sample,
    its absolute value summed over input channels and averaged over the ``n_samples`` inputs. Train/eval
    mode is the caller's: in training mode BatchNorm mixes the whole input into every output.

    Args:
        fn: maps x: (1, C, *spatial) to (1, K, *spatial_out), 2D or 3D (a list or tuple of outputs: the
            first is used, as for nnU-Net's deep supervision). A module must already be on ``device``.
        input_shape: (1, C, *spatial).
        centre: output position (one index per spatial axis); default the middle, ``size // 2``.
        mass: fraction of the absolute gradient the mass extent holds, in (0, 1].
        seed: seed of the random inputs.
        n_samples: random inputs to average over.
        device: where the inputs are made.
        channel: output channel to differentiate; None sums over channels.
        rel_tol: gradients at most ``rel_tol`` times the largest one count as zero for the theoretical
            extent (0: any non-zero gradient counts).

    Returns:
        A dict: ``input_shape``, ``output_shape`` (spatial), ``centre_output``, ``centre_input`` (the
        output centre scaled to input coordinates, ``(o + 0.5) * n_in / n_out - 0.5`` per axis), ``mass``,
        ``n_samples``; per spatial axis (tuples): ``theoretical_range`` ((first, last) input indices, None
        for an all-zero gradient), ``theoretical_extent`` (last - first + 1, 0 for none), ``mass_range``,
        ``mass_extent``, ``mean`` and ``std`` (gradient-weighted, voxels); and ``grad_abs``: the averaged
        (*spatial) absolute gradient on the CPU.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) not in (4, 5) or shape[0] != 1:
        raise ValueError(f"input_shape must be (1, C, *spatial) with 2 or 3 spatial axes, got {shape}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    spatial_in = shape[2:]
    gen = torch.Generator().manual_seed(seed)
    acc = torch.zeros(spatial_in, dtype=torch.float64)
    out_shape = pos = None
    with torch.enable_grad():
        for _ in range(n_samples):
            x = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
            y = _first_output(fn(x))
            if y.ndim != x.ndim or y.shape[0] != 1:
                raise ValueError(f"fn must return (1, K, *spatial) with {x.ndim - 2} spatial axes, "
                                 f"got {tuple(y.shape)}")
            out_shape = tuple(y.shape[2:])
            pos = tuple(s // 2 for s in out_shape) if centre is None else tuple(int(c) for c in centre)
            if len(pos) != len(out_shape) or not all(0 <= p < s for p, s in zip(pos, out_shape)):
                raise ValueError(f"centre {pos} is outside the output's spatial shape {out_shape}")
            picked = y[(0, slice(None) if channel is None else channel, *pos)]
            (grad,) = torch.autograd.grad(picked.sum(), x)
            acc += grad.detach().abs().sum(dim=1)[0].double().cpu()
    grad_abs = acc / n_samples
    centre_in = tuple((p + 0.5) * n_in / n_out - 0.5 for p, n_in, n_out in zip(pos, spatial_in, out_shape))

    peak = float(grad_abs.max())
    support = grad_abs > rel_tol * peak if peak > 0 else torch.zeros_like(grad_abs, dtype=torch.bool)
    theo_range, theo_ext, mass_range, mass_ext, means, stds = [], [], [], [], [], []
    for axis in range(len(spatial_in)):
        others = tuple(a for a in range(len(spatial_in)) if a != axis)
        hit = torch.nonzero(support.any(dim=others) if others else support).flatten()
        if hit.numel() == 0:
            theo_range.append(None)
            theo_ext.append(0)
            mass_range.append(None)
            mass_ext.append(0)
            means.append(math.nan)
            stds.append(math.nan)
            continue
        first, last = int(hit[0]), int(hit[-1])
        theo_range.append((first, last))
        theo_ext.append(last - first + 1)
        marginal = grad_abs.sum(dim=others) if others else grad_abs
        lo, hi = shortest_interval(marginal, mass, centre_in[axis])
        mass_range.append((lo, hi))
        mass_ext.append(hi - lo + 1)
        w = marginal / marginal.sum()
        idx = torch.arange(marginal.numel(), dtype=torch.float64)
        mean = float((w * idx).sum())
        means.append(mean)
        stds.append(float((w * (idx - mean) ** 2).sum().sqrt()))
    return {
        "input_shape": shape,
        "output_shape": out_shape,
        "centre_output": pos,
        "centre_input": centre_in,
        "mass": mass,
        "n_samples": n_samples,
        "theoretical_range": tuple(theo_range),
        "theoretical_extent": tuple(theo_ext),
        "mass_range": tuple(mass_range),
        "mass_extent": tuple(mass_ext),
        "mean": tuple(means),
        "std": tuple(stds),
        "grad_abs": grad_abs.float(),
    }


def _dims(values) -> str:
    return " x ".join(str(v) for v in values)


def receptive_field_table(fns: Mapping[str, Callable] | Callable, input_shape: Sequence[int], **kwargs) -> str:
    """A markdown table of :func:`effective_receptive_field` for each named function (or one function).

    Modules are measured in eval mode and put back into their previous mode. ``kwargs`` go to
    :func:`effective_receptive_field`.
    """
    if not isinstance(fns, Mapping):
        fns = {type(fns).__name__: fns}
    rows = []
    mass = kwargs.get("mass", 0.95)
    for name, fn in fns.items():
        modules = [m for m in (fn, getattr(fn, "__self__", None)) if isinstance(m, nn.Module)]
        was_training = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            r = effective_receptive_field(fn, input_shape, **kwargs)
        finally:
            for m, t in zip(modules, was_training):
                m.train(t)
        rows.append(f"| {name} | {_dims(r['input_shape'][2:])} | {_dims(r['output_shape'])} | "
                    f"{_dims(r['theoretical_extent'])} | {_dims(r['mass_extent'])} | "
                    f"{' x '.join(f'{s:.1f}' for s in r['std'])} |")
    head = (f"| network | input | output | theoretical extent | {100 * mass:g}% mass extent | std (voxels) |\n"
            "|---|---|---|---|---|---|")
    return "\n".join([head, *rows])


def _load(spec: str, kwargs: dict):
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit(f"expected MODULE:CALLABLE, got {spec!r}")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj(**kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Print the effective receptive field of a network (or of each network a factory returns).")
    p.add_argument("factory", help="MODULE:CALLABLE returning an nn.Module, a callable, or a dict of them "
                                   "(one table row each, e.g. the streams of a network)")
    p.add_argument("--kwargs", default="{}", help="JSON keyword arguments for the factory")
    p.add_argument("--shape", type=int, nargs="+", required=True, help="input shape: 1 C *spatial")
    p.add_argument("--mass", type=float, default=0.95)
    p.add_argument("--n-samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channel", type=int, default=None)
    p.add_argument("--rel-tol", type=float, default=0.0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    made = _load(args.factory, json.loads(args.kwargs))
    fns = made if isinstance(made, Mapping) else {args.factory: made}
    fns = {k: (v.to(args.device) if isinstance(v, nn.Module) else v) for k, v in fns.items()}
    print(receptive_field_table(fns, args.shape, mass=args.mass, n_samples=args.n_samples, seed=args.seed,
                                channel=args.channel, rel_tol=args.rel_tol, device=args.device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
