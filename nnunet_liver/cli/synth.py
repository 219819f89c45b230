"""``nnunet-liver synth``: write the synthetic liver-CT phantom data set (nnU-Net raw format)."""
from __future__ import annotations

import argparse
import os


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="generate synthetic liver-CT phantoms as an nnU-Net raw data set",
        description="Generate Dataset<ID>_<name> (imagesTr, labelsTr, imagesTs, labelsTs, imagesTs_shifted, "
        "dataset.json, lesions.csv, cases.csv) under $nnUNet_raw (or -o). Same seed, same files.",
    )
    p.add_argument("-d", dest="dataset_id", type=int, default=990, help="dataset id (default 990)")
    p.add_argument("--name", default="LiverPhantom", help="dataset name (default LiverPhantom)")
    p.add_argument("-o", dest="raw_root", default=None, help="raw data root (default: $nnUNet_raw)")
    p.add_argument("--num-train", type=int, default=24, help="training cases (default 24)")
    p.add_argument("--num-test", type=int, default=8, help="test cases (default 8)")
    p.add_argument("--size", type=int, default=128, help="in-plane voxels per side (default 128)")
    p.add_argument("--fov", default="abdomen", choices=("abdomen", "liver"),
                   help="field of view: the whole abdomen (default) or cropped around the liver (25 mm in-plane, "
                   "--z-margin-mm in z), as liver pipelines crop; --size stays the whole abdomen's matrix")
    p.add_argument("--z-margin-mm", type=float, default=30.0,
                   help="--fov liver: mm kept above and below the liver, as far as the abdomen reaches (default 30)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("-np", dest="num_processes", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes (default min(2, cores))")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data set of the same name")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_liver.cli.main import UsageError, check_num_processes, raw_root
    from nnunet_liver.data.synth_dataset import SynthSettings, write_phantom_dataset

    root = raw_root(args)
    check_num_processes(args)
    if args.fov != "liver" and args.z_margin_mm != SynthSettings.z_margin_mm:
        raise UsageError("--z-margin-mm needs --fov liver (the whole-abdomen field of view has no margin)")
    settings = SynthSettings(num_train=args.num_train, num_test=args.num_test, size=args.size, seed=args.seed,
                             fov=args.fov, z_margin_mm=args.z_margin_mm)
    try:
        folder = write_phantom_dataset(root, settings, dataset_id=args.dataset_id, name=args.name,
                                       overwrite=args.overwrite, num_processes=args.num_processes,
                                       progress=not args.no_progress)
    except (ValueError, FileExistsError, PermissionError) as e:
        raise UsageError(str(e)) from None
    print(f"wrote {folder}")
    return 0
