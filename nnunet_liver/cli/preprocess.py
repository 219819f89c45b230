"""``nnunet-liver plan_and_preprocess``: nnU-Net fingerprint + planning + preprocessing, keeping raw HU."""
from __future__ import annotations

import argparse
import os


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan_and_preprocess",
        help="nnU-Net planning and preprocessing with this project's HU-keeping planner",
        description="Like nnUNetv2_plan_and_preprocess, but CT channels keep raw Hounsfield units (needed by "
        "random window augmentation and the fixed-window baselines). Writes the default plans name "
        "(nnUNetPlans), so the stock nnUNetv2_train finds it.",
    )
    p.add_argument("-d", dest="dataset_ids", type=int, nargs="+", required=True, help="dataset id(s)")
    p.add_argument("-c", dest="configurations", nargs="+", default=["2d", "3d_fullres"],
                   help="configurations to preprocess (default: 2d 3d_fullres)")
    p.add_argument("-np", dest="num_processes", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes (default min(2, cores))")
    p.add_argument("--verify_dataset_integrity", action="store_true",
                   help="run nnU-Net's dataset integrity check first")
    p.add_argument("--paper-spacing", action="store_true",
                   help="3d_fullres target spacing 1 x 1 x 2.5 mm as in the paper (default: nnU-Net's choice)")
    p.add_argument("-overwrite_plans_name", dest="plans_name", default="nnUNetPlans",
                   help="plans identifier (default nnUNetPlans)")
    p.add_argument("-gpu_memory_target", type=float, default=None,
                   help="GPU memory target in GB for planning (nnU-Net default 8)")
    p.add_argument("--no_pp", action="store_true", help="plan only, do not preprocess")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing plans of the same name that were not made by nnunet-liver")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_liver.cli.main import UsageError, check_num_processes
    from nnunet_liver.env import activate, require_paths
    from nnunet_liver.planners.api import plan_and_preprocess

    activate()
    require_paths("nnUNet_raw", "nnUNet_preprocessed")
    check_num_processes(args)
    for dataset_id in args.dataset_ids:
        try:
            plan_and_preprocess(
                dataset_id, configurations=args.configurations, num_processes=args.num_processes,
                verify=args.verify_dataset_integrity, paper_spacing=args.paper_spacing,
                plans_name=args.plans_name, gpu_memory_target_in_gb=args.gpu_memory_target,
                preprocess=not args.no_pp, overwrite=args.overwrite, verbose=args.verbose,
            )
        except (FileNotFoundError, FileExistsError, ValueError) as e:
            raise UsageError(str(e)) from None
    return 0
