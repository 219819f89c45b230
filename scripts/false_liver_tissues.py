#!/usr/bin/env python
"""On which phantom tissues a demo's models paint false liver, and what they make of each lesion (issue 11).

The phantoms are deterministic, so their tissue maps and lesion instances can be regenerated from the
synthesis settings; each test case's regenerated liver/tumour label must equal the ``labelsTs`` file, or the
script stops with an error that names the case. Per model it prints:

* false liver voxels (predicted liver or tumour where the reference is background) by tissue, on the
  slices below the reference liver, on its slices, and above it (the phantoms' z runs from the feet towards
  the head);
* per lesion subtype (cyst, haemangioma, metastasis, HCC): how many lesions have at least one voxel
  predicted tumour, and where their voxels go (background, liver or tumour). A lesion "lost to background"
  is cut out of the liver as if it were outside it (a gallbladder, a bowel loop); one "lost to liver" is
  not seen at all.

    python scripts/false_liver_tissues.py nnunet_liver_demo                  # the default demo's output
    # size, seed, field of view and z margin default to the data set's dataset.json (written by nnunet-liver synth)
    python scripts/false_liver_tissues.py OUT --size 224 --seed 0 --fov liver --json counts.json
    # a converged benchmark's seed-0 predictions (its phantoms: --size 224 --fov liver, data seed 0)
    python scripts/false_liver_tissues.py --labels bench/converged/work/nnUNet_raw/Dataset990_LiverPhantom/labelsTs \
        --predictions bench/converged/work/predictions/seed0 --normal-only
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


OUTCOMES = ("background", "liver", "tumour")


def lesion_outcomes(instances, prediction) -> dict[int, list[int]]:
    """Voxels of each reference lesion (``instances`` id > 0) predicted background, liver and tumour."""
    import numpy as np

    inside = instances > 0
    pred = prediction[inside].astype(np.int64)
    if pred.size and (pred.min() < 0 or pred.max() > 2):
        raise ValueError(f"prediction labels must be 0, 1, 2; found {sorted(set(np.unique(pred)) - {0, 1, 2})}")
    ids = instances[inside].astype(np.int64)
    counts = np.bincount(ids * 3 + pred, minlength=3 * (int(ids.max(initial=0)) + 1)).reshape(-1, 3)
    return {int(i): [int(v) for v in counts[i]] for i in np.unique(ids)}


def add_lesions(total: dict, anatomy, prediction) -> None:
    """Add one case's lesion outcomes to ``total`` (per subtype: lesions, found, voxels per outcome)."""
    subtypes = {les["lesion_id"]: les["subtype"] for les in anatomy.lesions}
    for lesion_id, voxels in lesion_outcomes(anatomy.instances, prediction).items():
        row = total.setdefault(subtypes[lesion_id], {"lesions": 0, "found": 0, **{k: 0 for k in OUTCOMES}})
        row["lesions"] += 1
        row["found"] += int(voxels[2] > 0)
        for k, v in zip(OUTCOMES, voxels):
            row[k] += v


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo_out", type=Path, nargs="?",
                        help="the demo's output folder (with predictions/ and nnunet/)")
    parser.add_argument("--labels", type=Path, help="the test labels (labelsTs) instead of the demo's")
    parser.add_argument("--predictions", type=Path,
                        help="a folder with one folder of predictions per model, instead of the demo's")
    parser.add_argument("--normal-only", action="store_true",
                        help="in each model folder read its normal/ subfolder (the segmentation benchmark's layout)")
    parser.add_argument("--size", type=int,
                        help="synthesis size (default: the data set's dataset.json, else the default demo's, 224)")
    parser.add_argument("--seed", type=int, help="synthesis seed (default: dataset.json, else 0)")
    parser.add_argument("--fov", choices=("liver", "abdomen"), help="field of view (default: dataset.json, else liver)")
    parser.add_argument("--z-margin-mm", type=float,
                        help="synthesis z margin (default: the data set's dataset.json, else 30)")
    parser.add_argument("--json", type=Path, help="also write the counts here")
    args = parser.parse_args(argv)

    import numpy as np
    import SimpleITK as sitk

    from nnunet_liver.data.phantoms import PHANTOM_VERSION, TISSUES, case_anatomy
    from nnunet_liver.data.synth_dataset import SynthSettings

    if args.demo_out is None and (args.labels is None or args.predictions is None):
        parser.error("give the demo's output folder, or both --labels and --predictions")
    labels_dir, pred_root = args.labels, args.predictions
    if args.demo_out is not None:
        labels_dir = labels_dir or next(iter(sorted(args.demo_out.glob("nnunet/nnUNet_raw/*/labelsTs"))), None)
        pred_root = pred_root or args.demo_out / "predictions"
    if labels_dir is None or not labels_dir.is_dir() or not pred_root.is_dir():
        where = args.demo_out if args.demo_out is not None else f"{args.labels} / {args.predictions}"
        print(f"error: {where}: no labelsTs folder or no predictions folder (a demo output has "
              "nnunet/nnUNet_raw/*/labelsTs and predictions/)", file=sys.stderr)
        return 2
    dataset_json = labels_dir.parent / "dataset.json"
    try:
        extra = json.loads(dataset_json.read_text(encoding="utf-8")).get("nnunet_liver", {}) \
            if dataset_json.is_file() else {}
    except ValueError as e:
        print(f"error: {dataset_json}: not valid JSON ({e})", file=sys.stderr)
        return 2
    # the labels do not tell the versions apart (only the bowel changed), the tissue maps do
    version = extra.get("generator_version", 1) if extra else PHANTOM_VERSION
    if version != PHANTOM_VERSION:
        print(f"error: {dataset_json}: phantoms of version {version}, and this checkout draws version "
              f"{PHANTOM_VERSION}: their tissue maps differ; run this script from a checkout of version {version}",
              file=sys.stderr)
        return 2
    # what the command line leaves out comes from dataset.json (written by nnunet-liver synth), then the default demo
    for name, default in (("size", 224), ("seed", 0), ("fov", "liver"), ("z_margin_mm", SynthSettings.z_margin_mm)):
        if getattr(args, name) is None:
            setattr(args, name, extra.get(name, default))
    z_margin = args.z_margin_mm
    margin = SynthSettings(size=args.size, seed=args.seed, fov=args.fov, z_margin_mm=z_margin).liver_margin_mm
    anatomies = {}
    result = {}
    for model in sorted(p for p in pred_root.iterdir() if p.is_dir()):
        folder = model / "normal" if args.normal_only else model
        predictions = sorted(folder.glob("*.nii.gz"))
        if not predictions:
            hint = " (a segmentation benchmark's model folder: add --normal-only)" if (model / "normal").is_dir() \
                else ""
            print(f"error: {folder}: no predictions (*.nii.gz){hint}", file=sys.stderr)
            return 2
        total = {r: {} for r in REGIONS}
        lesions = {}
        for pred_path in predictions:
            ref_path = labels_dir / pred_path.name
            if pred_path.name not in anatomies:
                index = int(pred_path.name.split(".")[0].rsplit("_", 1)[1])
                anatomy = case_anatomy(args.seed, index, args.size, margin)
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
            add_lesions(lesions, anatomy, pred)
        result[model.name] = {"false liver": total, "lesions": lesions}
        print(model.name)
        for region, counts in total.items():
            n = sum(counts.values())
            top = sorted(counts.items(), key=lambda kv: -kv[1])[:4]
            shares = ", ".join(f"{k} {v / n:.0%}" for k, v in top) if n else "-"
            print(f"  {region:16s} {n:8d} false liver voxels: {shares}")
        for subtype, row in sorted(lesions.items()):
            n = sum(row[k] for k in OUTCOMES)
            shares = " / ".join(f"{row[k] / n:.0%}" for k in OUTCOMES) if n else "-"
            print(f"  {subtype:16s} {row['found']:3d} of {row['lesions']:3d} lesions found; their {n} voxels "
                  f"predicted background / liver / tumour: {shares}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
