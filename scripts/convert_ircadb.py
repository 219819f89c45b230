"""Convert 3D-IRCADb-01 into an nnU-Net raw data set: the same as ``nnunet-liver convert ircadb``.

    python scripts/convert_ircadb.py SRC [-d 502] [--name 3DIRCADb] [-o RAW_ROOT] [--cysts-as-tumour] [-np N]

SRC holds the patient folders 3Dircadb1.N (PATIENT_DICOM and MASKS_DICOM as folders or zip files).
Writes imagesTr, labelsTr, lesions.csv, case_mapping.json and dataset.json. See
``nnunet-liver convert ircadb --help``.
"""
from __future__ import annotations

import sys

from nnunet_liver.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["convert", "ircadb", *sys.argv[1:]]))
