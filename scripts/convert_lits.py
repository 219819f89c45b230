"""Convert LiTS into an nnU-Net raw data set: the same as ``nnunet-liver convert lits``.

    python scripts/convert_lits.py SRC [-d 501] [--name LiTS] [-o RAW_ROOT] [-np N] [--overwrite]

SRC holds volume-N.nii / segmentation-N.nii (directly or in "Training Batch 1", "Training Batch 2", ...)
and test-volume-N.nii. See ``nnunet-liver convert lits --help``.
"""
from __future__ import annotations

import sys

from nnunet_liver.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["convert", "lits", *sys.argv[1:]]))
