"""``nnunet-liver env``: print the shell lines that make the stock nnUNetv2_* commands find our trainers."""
from __future__ import annotations

import argparse
import shlex


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "env",
        help="print export lines for nnUNet_extTrainer (and optionally nnU-Net's data folders)",
        description='Print shell export lines. Use as: eval "$(nnunet-liver env)". With --root DIR also '
        "sets nnUNet_raw, nnUNet_preprocessed and nnUNet_results to folders under DIR.",
    )
    p.add_argument("--root", default=None, help="working folder holding nnUNet_raw/preprocessed/results")
    p.add_argument("--shell", choices=("sh", "fish"), default="sh", help="syntax of the printed lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_liver.env import nnunet_environment

    for name, value in nnunet_environment(args.root).items():
        if args.shell == "fish":
            print(f"set -gx {name} {shlex.quote(value)};")
        else:
            print(f"export {name}={shlex.quote(value)}")
    return 0
