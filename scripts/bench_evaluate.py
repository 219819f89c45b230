"""Time the full LiTS per-case metric set against Dice alone on a synthetic LiTS-sized case pair.

Builds a 512x512x500 uint8 label pair (an irregular liver blob with lesions; the prediction perturbs the
liver surface, resizes and shifts lesions, misses one, splits none and adds false positives), then times,
in this process:
- ``dice``: liver and tumour Dice with numpy on the full arrays (the floor any evaluation pays);
- ``full``: ``nnunet_liver.evaluation.lits.evaluate_case`` (every metric, lesion detection, burden);
- a breakdown of ``full`` into its stages, and the surface-distance back-ends (KD-tree, EDT).
Prints one JSON object and one markdown line.

    python scripts/bench_evaluate.py [--shape 500 512 512] [--repeats 5] [--seed 0]

Times are the minimum over interleaved repeats (medians are printed too): on a shared machine the minimum
is the least disturbed run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def synthetic_pair(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(reference, prediction) uint8 label maps, (z, y, x): 0 background, 1 liver, 2 tumour."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    centre = np.array([z * 0.5, y * 0.5, x * 0.4])
    semi = np.array([0.16 * z, 0.2 * y, 0.25 * x])
    lo = np.maximum((centre - 1.3 * semi).astype(int), 0)
    hi = np.minimum((centre + 1.3 * semi).astype(int), shape)
    gz, gy, gx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    gz, gy, gx = ((g - c) / s for g, c, s in zip((gz, gy, gx), centre, semi))
    r = np.sqrt(gz ** 2 + gy ** 2 + gx ** 2).astype(np.float32)

    def wobble(phase: float, amplitude: float) -> np.ndarray:
        return amplitude * (np.sin(3 * gx + phase) * np.cos(2 * gy - phase) + 0.5 * np.sin(4 * gz + 2 * phase))

    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    reference = np.zeros(shape, np.uint8)
    prediction = np.zeros(shape, np.uint8)
    reference[box][r < 1 + wobble(0.0, 0.08)] = 1
    prediction[box][r < 1 + wobble(0.0, 0.08) + wobble(1.3, 0.015)] = 1

    def ball(target: np.ndarray, c: np.ndarray, radius: float) -> None:
        b = tuple(slice(max(int(ci - radius - 1), 0), int(ci + radius + 2)) for ci in c)
        bz, by, bx = np.ogrid[b[0], b[1], b[2]]
        inside = (bz - c[0]) ** 2 + (by - c[1]) ** 2 + (bx - c[2]) ** 2 <= radius ** 2
        target[b][inside] = 2

    liver_voxels = np.argwhere(reference[box] == 1) + lo
    for k in range(10):
        c = liver_voxels[rng.integers(len(liver_voxels))].astype(float)
        radius = rng.uniform(3, 16)
        ball(reference, c, radius)
        if k == 0:
            continue  # missed lesion
        ball(prediction, c + rng.normal(0, 1.0, 3), radius * rng.uniform(0.8, 1.15))
    for _ in range(3):  # false positives
        ball(prediction, liver_voxels[rng.integers(len(liver_voxels))].astype(float), rng.uniform(2, 5))
    return reference, prediction


def dice_only(reference: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    out = {}
    for name, (r, p) in (("liver", (reference > 0, prediction > 0)), ("tumour", (reference == 2, prediction == 2))):
        inter = np.count_nonzero(r & p)
        total = np.count_nonzero(r) + np.count_nonzero(p)
        out[name] = 2.0 * inter / total if total else 1.0
    return out


def timed(fns: dict, repeats: int) -> tuple[dict[str, float], dict[str, float], dict]:
    """Minimum and median seconds per function, runs interleaved so that load changes hit all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    results: dict = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return ({k: min(v) for k, v in times.items()}, {k: statistics.median(v) for k, v in times.items()}, results)


def main(argv: list[str] | None = None) -> dict:
    from nnunet_liver.cli.main import tolerant_streams

    tolerant_streams()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(500, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 0.75, 0.75), metavar=("SZ", "SY", "SX"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write results.json and results.md to this folder")
    args = parser.parse_args(argv)

    from scipy import ndimage

    from nnunet_liver.evaluation import lits

    t0 = time.perf_counter()
    ref, pred = synthetic_pair(tuple(args.shape), args.seed)
    build_s = time.perf_counter() - t0
    spacing = args.spacing

    best, median, results = timed({"dice": lambda: dice_only(ref, pred),
                                   "full": lambda: lits.evaluate_case(ref, pred, spacing)}, args.repeats)
    dice_s, full_s = best["dice"], best["full"]
    dice, case = results["dice"], results["full"]

    # Breakdown of evaluate_case, stage by stage.
    stages: dict[str, float] = {}
    t = time.perf_counter()
    box = lits.bounding_box(ref | pred, margin=1)
    r, p = np.ascontiguousarray(ref[box]), np.ascontiguousarray(pred[box])
    stages["bounding_box_and_crop"] = time.perf_counter() - t
    rl, pl, rt, pt = r > 0, p > 0, r == 2, p == 2
    t = time.perf_counter()
    lits.binary_metrics(rl, pl, spacing, distances=False)
    lits.binary_metrics(rt, pt, spacing, distances=False)
    stages["overlap_counts_on_crop"] = time.perf_counter() - t
    for name, (a, b) in (("liver", (rl, pl)), ("tumour", (rt, pt))):
        t = time.perf_counter()
        bb = lits.bounding_box(a | b, margin=1)
        sa, sb = lits.surface(a[bb]), lits.surface(b[bb])
        stages[f"{name}_surfaces"] = time.perf_counter() - t
        for method in ("kdtree", "edt"):
            t = time.perf_counter()
            lits.surface_distances(a, b, spacing, method=method)
            stages[f"{name}_distances_{method}_incl_surfaces"] = time.perf_counter() - t
        stages[f"{name}_surface_voxels"] = int(np.count_nonzero(sa)) + int(np.count_nonzero(sb))
    t = time.perf_counter()
    ndimage.binary_erosion(rl, ndimage.generate_binary_structure(3, 2))
    stages["liver_scipy_binary_erosion_one_mask_for_comparison"] = time.perf_counter() - t
    t = time.perf_counter()
    lits.lesion_evaluation(rt, pt, spacing)
    stages["lesion_detection_and_lesion_metrics"] = time.perf_counter() - t

    crop_voxels = int(np.prod([s.stop - s.start for s in box]))
    det = case["lesions"]["detection"]
    report = dict(
        shape=list(args.shape), spacing=list(spacing), crop_voxels=crop_voxels,
        crop_fraction=crop_voxels / ref.size, build_seconds=round(build_s, 3),
        dice_seconds=round(dice_s, 4), full_seconds=round(full_s, 4), ratio=round(full_s / dice_s, 2),
        median_dice_seconds=round(median["dice"], 4), median_full_seconds=round(median["full"], 4),
        median_ratio=round(median["full"] / median["dice"], 2), repeats=args.repeats, timing="min over repeats",
        dice=dice, full_liver_dice=case["liver"]["dice"], full_tumour_dice=case["tumour"]["dice"],
        liver_hd95_mm=case["liver"]["hd95"], lesions=dict(n_reference=case["lesions"]["n_reference"],
                                                           n_prediction=case["lesions"]["n_prediction"], **det),
        stages_seconds={k: (round(v, 4) if isinstance(v, float) else v) for k, v in stages.items()},
    )
    line = (f"| {'x'.join(map(str, args.shape[::-1]))} uint8 | Dice alone {dice_s:.3f} s | full LiTS metric set "
            f"{full_s:.3f} s | ratio {full_s / dice_s:.2f}x |")
    print(json.dumps(report, indent=2))
    print(line)
    if args.out:
        from pathlib import Path

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        (out / "results.md").write_text("# LiTS evaluation cost (synthetic case pair)\n\n"
                                        "| case | Dice alone | full metric set | ratio |\n|---|---|---|---|\n"
                                        + line + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
