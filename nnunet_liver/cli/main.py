"""The ``nnunet-liver`` command: one entry point, one sub-command per module in ``COMMANDS``.

Each command module exposes ``add_parser(subparsers)``, which registers its sub-command and sets
``func`` (called with the parsed arguments, returning an exit code). Heavy imports (torch, nnU-Net)
happen inside the commands so that ``--help`` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Order is the order shown in --help.
COMMANDS = (
    "nnunet_liver.cli.demo",
    "nnunet_liver.cli.env",
    "nnunet_liver.cli.evaluate",
    "nnunet_liver.cli.synth",
    "nnunet_liver.cli.preprocess",
    "nnunet_liver.cli.convert",
    "nnunet_liver.cli.merge",
    "nnunet_liver.cli.splits",
    "nnunet_liver.cli.submit",
    "nnunet_liver.cli.classify",
    "nnunet_liver.cli.predict",
    "nnunet_liver.cli.postprocess",
    "nnunet_liver.cli.cohort",
    "nnunet_liver.cli.report",
    "nnunet_liver.cli.bench",
)


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def raw_root(args: argparse.Namespace) -> str:
    """The raw data root of a command that writes a data set: ``-o`` or ``$nnUNet_raw``."""
    root = args.raw_root or os.environ.get("nnUNet_raw")
    if not root:
        raise UsageError("no raw data root: pass -o RAW_ROOT or set nnUNet_raw")
    return root


def check_num_processes(args: argparse.Namespace) -> int:
    if args.num_processes < 1:
        raise UsageError(f"-np must be positive, got {args.num_processes}")
    return args.num_processes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-liver",
        description="nnU-Net v2 plugin for liver and liver-tumour CT: phantoms, planning that keeps HU, "
        "dual-stream attention trainers, lesion classification, LiTS evaluation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def tolerant_streams() -> None:
    """Let a console that cannot show UTF-8 print "\\xb1" for "±" instead of crashing on it.

    Python switches to UTF-8 by itself under the C locale, but not with ``PYTHONUTF8=0`` or a legacy
    locale; our summaries carry "±", "Δ" and "×". Files are always written as UTF-8 (explicit encoding).
    """
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    tolerant_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"nnunet-liver {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nnunet-liver {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # run the imported module's main: under ``python -m`` this file is also ``__main__``, whose UsageError
    # would not be the class the commands raise
    from nnunet_liver.cli.main import main as _main

    sys.exit(_main())
