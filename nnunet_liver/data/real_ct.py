"""The two small real abdominal CTs the repository carries (CC BY 4.0; attribution in ``real/README.md``).

Tests, the demo and the benchmarks read them from here, so a clone of the repository (or an installed
package) needs nothing beside it.
"""
from __future__ import annotations

from pathlib import Path

REAL_CT_DIR = Path(__file__).resolve().parent / "real"

#: contrast-enhanced CT cropped around the liver, with a radiologist-corrected liver + tumour mask
CRLM_CT = REAL_CT_DIR / "crlm_liver_ct.nii.gz"
CRLM_SEG = REAL_CT_DIR / "crlm_liver_seg.nii.gz"
#: abdominal CT with scanner geometry (direction diag(-1, -1, 1)) and a model-made liver mask
TOTALSEG_CT = REAL_CT_DIR / "totalseg_abdomen_ct.nii.gz"
TOTALSEG_LIVER = REAL_CT_DIR / "totalseg_abdomen_liver.nii.gz"


def real_ct(name: str) -> Path:
    """Path of one of the carried files by name (e.g. ``"crlm_liver_ct.nii.gz"``); a clear error if absent."""
    path = REAL_CT_DIR / name
    if not path.is_file():
        known = ", ".join(sorted(p.name for p in REAL_CT_DIR.glob("*.nii.gz")))
        raise FileNotFoundError(f"{path}: no such real CT in the package (carried: {known})")
    return path
