#!/usr/bin/env python
"""On which phantom tissues a demo's models paint false liver (issue 11's overshoot).

The phantoms are deterministic, so their tissue maps can be regenerated from the synthesis settings; each
test case's regenerated liver/tumour label must equal the ``labelsTs`` file, or the script stops with an
error that names the case. False liver voxels (predicted liver or tumour where the reference is
background) are counted by tissue on the slices below the reference liver, on its slices, and above it
(the phantoms' z runs from the feet towards the head).

    python scripts/false_liver_tissues.py nnunet_liver_demo                  # the default demo's output
    python scripts/false_liver_tissues.py OUT --size 224 --seed 0 --fov liver --json counts.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REGIONS = ("below the liver", "liver slices", "above the liver")


def tissue_counts(label, tissues, prediction, names) -> dict[str, dict[str, int]]:
    """False liver voxels per region (see :data:`REGIONS`) and tissue name."""
    import numpy as np

    fp = (prediction > 0) & (label == 0)
    zs = np.flatnonzero(label.any(axis=(1, 2)))
    if zs.size == 0:
        raise ValueError("the reference has no liver")
    out = {}
    for region, sel in zip(REGIONS, (slice(0, zs[0]), slice(zs[0], zs[-1] + 1), slice(zs[-1] + 1, None))):
        counts = np.bincount(tissues[sel][fp[sel]], minlength=len(names))
        out[region] = {names[i]: int(counts[i]) for i in np.flatnonzero(counts)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo_out", type=Path, help="the demo's output folder (with predictions/ and nnunet/)")
    parser.add_argument("--size", type=int, default=224, help="synthesis size (default: the default demo's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fov", default="liver", choices=("liver", "abdomen"))
    parser.add_argument("--json", type=Path, help="also write the counts here")
    args = parser.parse_args(argv)

    import numpy as np
    import SimpleITK as sitk

    from nnunet_liver.data.phantoms import TISSUES, _case_generators, sample_anatomy
    from nnunet_liver.data.synth_dataset import SynthSettings

    labels_dir = next(iter(sorted(args.demo_out.glob("nnunet/nnUNet_raw/*/labelsTs"))), None)
    pred_root = args.demo_out / "predictions"
    if labels_dir is None or not pred_root.is_dir():
        print(f"error: {args.demo_out} has no nnunet/nnUNet_raw/*/labelsTs or predictions/: not a demo output",
              file=sys.stderr)
        return 2
    margin = SynthSettings(size=args.size, seed=args.seed, fov=args.fov).liver_margin_mm
    anatomies = {}
    result = {}
    for folder in sorted(p for p in pred_root.iterdir() if p.is_dir()):
        total = {r: {} for r in REGIONS}
        for pred_path in sorted(folder.glob("*.nii.gz")):
            ref_path = labels_dir / pred_path.name
            if pred_path.name not in anatomies:
                index = int(pred_path.name.split(".")[0].rsplit("_", 1)[1])
                anatomy = sample_anatomy(_case_generators(args.seed, index)[0], args.size, margin)
                ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_path)))
                if ref.shape != anatomy.label.shape or not np.array_equal(ref, anatomy.label):
                    print(f"error: {ref_path}: the phantom regenerated with --size {args.size} --seed {args.seed} "
                          f"--fov {args.fov} does not match this label; pass the settings the demo used",
                          file=sys.stderr)
                    return 2
                anatomies[pred_path.name] = anatomy
            anatomy = anatomies[pred_path.name]
            pred = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_path)))
            for region, counts in tissue_counts(anatomy.label, anatomy.tissues, pred, TISSUES).items():
                for name, n in counts.items():
                    total[region][name] = total[region].get(name, 0) + n
        result[folder.name] = total
        print(folder.name)
        for region, counts in total.items():
            n = sum(counts.values())
            top = sorted(counts.items(), key=lambda kv: -kv[1])[:4]
            shares = ", ".join(f"{k} {v / n:.0%}" for k, v in top) if n else "-"
            print(f"  {region:16s} {n:8d} false liver voxels: {shares}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
