"""One reader for every image file the commands take in, and the checks that its voxels are what they claim.

``predict`` (CTs), ``convert lits|ircadb`` (CTs and label maps), ``evaluate`` and ``submit`` (label maps) and
``classify extract`` (raw label and instance maps) read through here, so a bad file gets the same one-line
answer everywhere: the path, then the problem. What SimpleITK alone lets through:

- NIfTI NaN and infinities: its NIfTI reader (niftilib) silently turns them into 0;
- truncated files: a ``.nii.gz`` cut short, or a ``.nii`` shorter than its header says, is read without a
  word, the missing voxels filled with zeros (the half-read volume then fails somewhere deep in numpy);
- zero-length axes: niftilib prints ``bad dim[1]`` to stderr and reports "not recognized as a NIFTI file".

So NIfTI files are checked with nibabel first (header, then one streaming pass over the voxel bytes: the gzip
stream must be complete, the data as long as the header says, float data finite) before SimpleITK reads them.
The value checks (:func:`ct_array`, :func:`label_array_checked`) apply to any array, DICOM series included.
"""
from __future__ import annotations

import gzip
import math
import os
import re
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "HU_RANGE",
    "ImageError",
    "check_file",
    "ct_array",
    "label_array_checked",
    "quiet_itk",
    "read_header",
    "read_image",
]

#: every CT stores HU in 16 bits (12-bit scanners give -1024..3071, extended scales reach +-32k); values
#: outside come from an overflowing rescale (slope/intercept) or are not HU at all
HU_RANGE = (-32768.0, 32767.0)
AIR_THRESHOLD_HU = -500.0  # any CT holds air (-1000 HU) or lung below this; the real test CT is clipped at -500
LABEL_MAP_MAX_VALUES = 16  # a "CT" of at most this many small non-negative integers is a label map
_CHUNK = 1 << 24


class ImageError(ValueError):
    """An image file that cannot be used; the message is ``<path>: <problem>``."""


def _nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def _shape_text(shape) -> str:
    return " x ".join(str(int(s)) for s in shape)


def check_file(path: str | os.PathLike, what: str = "image", *, dims: tuple[int, ...] = (3,),
               scan: bool = True) -> None:
    """The checks SimpleITK cannot make, before it reads ``path``.

    Args:
        what: what the file should be ("CT", "label image", ...), for messages.
        dims: accepted numbers of axes (trailing axes of length 1 do not count).
        scan: read a NIfTI file's voxel bytes (gzip stream complete, data complete, float data finite);
            False checks the header only.

    Raises:
        ImageError: missing, a folder, empty, not a readable NIfTI, a zero-length axis, too many axes,
            truncated or corrupt data, NaN or infinite values.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: a folder, not {_a(what)} file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes), not {_a(what)}")
    if _nifti(path):
        _check_nifti(path, what, dims, scan)


def _check_nifti(path: Path, what: str, dims: tuple[int, ...], scan: bool) -> None:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        img = nib.load(str(path))
        proxy = img.dataobj
        shape, dtype, offset = tuple(int(s) for s in proxy.shape), np.dtype(proxy.dtype), int(proxy.offset)
    except (ImageFileError, OSError, EOFError, ValueError, zlib.error, AttributeError) as e:
        text = _first_line(e)
        detail = ("the file is not gzip data" if "gzip" in text
                  else "no NIfTI-1/NIfTI-2 header" if isinstance(e, ImageFileError) else text)
        raise ImageError(f"{path}: cannot read the {what}: not a valid NIfTI file ({detail})") from None
    if 0 in shape:
        raise ImageError(f"{path}: a zero-length axis (size {_shape_text(shape)}): the {what} holds no voxels")
    effective = len(shape)
    while effective > 3 and shape[effective - 1] == 1:
        effective -= 1
    if effective > max(dims):  # fewer axes: SimpleITK's structure check names them
        raise ImageError(f"{path}: a {effective}D image (size {_shape_text(shape)}); {_a(what)} is "
                         f"{' or '.join(f'{d}D' for d in dims)}")
    expected = offset + math.prod(shape) * dtype.itemsize
    compressed = path.name.lower().endswith(".gz")
    if not compressed:
        size = path.stat().st_size
        if size < expected:
            raise ImageError(f"{path}: truncated: {size} of the {expected} bytes its header announces (an "
                             f"incomplete download or copy?)")
    floating = dtype.kind in "fc"
    if not scan or (not compressed and not floating):
        return
    opener = gzip.open if compressed else open
    n_bytes, n_nan, n_inf = 0, 0, 0
    pending = b""
    try:
        with opener(path, "rb") as f:
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                start, n_bytes = n_bytes, n_bytes + len(chunk)
                if not floating:
                    continue
                lo, hi = max(offset - start, 0), min(expected - start, len(chunk))
                if hi <= lo:
                    continue
                buf = pending + chunk[lo:hi]
                usable = len(buf) - len(buf) % dtype.itemsize
                values = np.frombuffer(buf[:usable], dtype=dtype)
                pending = buf[usable:]
                if not np.isfinite(values).all():
                    nan = np.isnan(values)
                    n_nan += int(np.count_nonzero(nan))
                    n_inf += int(values.size - np.count_nonzero(np.isfinite(values) | nan))
    except EOFError:
        raise ImageError(f"{path}: truncated: the compressed data end before the {expected} bytes its header "
                         f"announces (an incomplete download or copy?)") from None
    except (OSError, zlib.error) as e:
        raise ImageError(f"{path}: corrupt compressed data ({_first_line(e)})") from None
    if n_bytes < expected:
        raise ImageError(f"{path}: truncated: {n_bytes} of the {expected} bytes its header announces")
    if n_nan or n_inf:
        parts = [f"{n} {kind}" for n, kind in ((n_nan, "NaN"), (n_inf, "infinite")) if n]
        raise ImageError(f"{path}: holds {' and '.join(parts)} voxel value(s); {_a(what)} needs finite values")


def _a(what: str) -> str:
    """``what`` with its indefinite article: "a CT", "an image"."""
    return f"{'an' if what[:1].lower() in 'aeio' else 'a'} {what}"


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def itk_message(error: Exception) -> str:
    """The useful last part of a SimpleITK exception (they start with the C++ file and line)."""
    text = " ".join(str(error).split())
    for marker in ("sitk::ERROR:", "ITK ERROR:", "Description:"):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
    text = re.sub(r"^\s*\w+\(0x[0-9a-f]+\):\s*", "", text.strip())
    return text.strip() or type(error).__name__


class quiet_itk:
    """Context manager: ITK's warnings off (it prints them to stderr; our errors say more)."""

    def __enter__(self):
        import SimpleITK as sitk

        self._was = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        return self

    def __exit__(self, *exc) -> None:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalWarningDisplay(self._was)


def _check_structure(where: str, dimension: int, components: int, size, what: str, dims: tuple[int, ...]) -> None:
    if components != 1:
        raise ImageError(f"{where}: {components} values per voxel (colour or vector image), not {_a(what)}")
    if 0 in tuple(size):
        raise ImageError(f"{where}: a zero-length axis (size {_shape_text(size)}): the {what} holds no voxels")
    if dimension not in dims:
        raise ImageError(f"{where}: a {dimension}D image (size {_shape_text(size)}); {_a(what)} is "
                         f"{' or '.join(f'{d}D' for d in dims)}")


def read_header(path: str | os.PathLike, what: str = "image", *, dims: tuple[int, ...] = (3,)):
    """An ``sitk.ImageFileReader`` with the header read (size, spacing, origin, direction), no voxels.

    Raises:
        ImageError: see :func:`check_file` (header-level problems only) and unreadable headers.
    """
    import SimpleITK as sitk

    check_file(path, what, dims=dims, scan=False)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError as e:
        raise ImageError(f"{path}: cannot read the {what} ({itk_message(e)})") from None
    _check_structure(str(path), reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize(), what,
                     dims)
    return reader


def read_image(path: str | os.PathLike, what: str = "image", *, dims: tuple[int, ...] = (3,)):
    """``sitk.ReadImage`` after :func:`check_file`, with the structure checked (one value per voxel, no
    zero-length axis, ``dims`` axes).

    Raises:
        ImageError: the file and its problem.
    """
    import SimpleITK as sitk

    check_file(path, what, dims=dims)
    try:
        with quiet_itk():
            image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ImageError(f"{path}: cannot read the {what} ({itk_message(e)}; a corrupt or truncated file?)"
                         ) from None
    _check_structure(str(path), image.GetDimension(), image.GetNumberOfComponentsPerPixel(), image.GetSize(),
                     what, dims)
    return image


def _array(image_or_array) -> np.ndarray:
    if isinstance(image_or_array, np.ndarray):
        return image_or_array
    import SimpleITK as sitk

    return sitk.GetArrayViewFromImage(image_or_array)


def ct_array(image_or_array, where: str, *, require_air: bool = True, rescale: str = "") -> np.ndarray:
    """Check that voxels can be Hounsfield units; return them as a float32 array.

    Args:
        image_or_array: a SimpleITK image or its array.
        where: the file (or series) named in messages.
        require_air: refuse volumes without air (below -500 HU): MR-like ranges, crops without air.
        rescale: DICOM rescale tags, named when the range overflows.

    Raises:
        ImageError: NaN or infinite values, values outside :data:`HU_RANGE` (an overflowing rescale), a
            label map (a handful of small non-negative integers), no air (``require_air``).
    """
    arr = _array(image_or_array)
    if arr.size == 0:
        raise ImageError(f"{where}: no voxels")
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        n_nan = int(np.count_nonzero(np.isnan(arr)))
        n_inf = int(arr.size - np.count_nonzero(np.isfinite(arr))) - n_nan
        parts = [f"{n} {kind}" for n, kind in ((n_nan, "NaN"), (n_inf, "infinite")) if n]
        raise ImageError(f"{where}: holds {' and '.join(parts)} voxel value(s); a CT needs finite Hounsfield units")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < HU_RANGE[0] or hi > HU_RANGE[1]:
        cause = f" (rescale {rescale} overflows)" if rescale else " (an overflowing rescale slope/intercept?)"
        raise ImageError(f"{where}: intensities {lo:.6g}..{hi:.6g} lie outside the range of Hounsfield units "
                         f"({HU_RANGE[0]:g}..{HU_RANGE[1]:g}){cause}; not a CT")
    if lo >= 0 and hi <= 255 and (arr.dtype.kind in "iub" or np.array_equal(arr, np.round(arr))):
        present = np.flatnonzero(np.bincount(np.asarray(arr, dtype=np.uint8).ravel(), minlength=256))
        if present.size <= LABEL_MAP_MAX_VALUES:
            raise ImageError(f"{where}: holds only the values {', '.join(map(str, present.tolist()))}: a label "
                             f"map (segmentation), not a CT")
    if require_air and lo > AIR_THRESHOLD_HU:
        why = ("no negative values (an MR-like range)" if lo >= 0
               else f"no air (nothing at or below {AIR_THRESHOLD_HU:g} HU)")
        raise ImageError(f"{where}: intensities {lo:g}..{hi:g} are not Hounsfield units of a CT: {why}")
    return np.asarray(arr, dtype=np.float32)


def label_array_checked(image_or_array, where: str, *, what: str = "label image",
                        max_value: int = 255) -> np.ndarray:
    """Check that voxels are labels (finite non-negative integers up to ``max_value``); return the array as
    read (a view of the image, its own dtype).

    Raises:
        ImageError: NaN or infinite values, fractions, negative values or values above ``max_value``.
    """
    arr = _array(image_or_array)
    if arr.dtype.kind in "fc":
        if not np.isfinite(arr).all():
            kind = "NaN" if np.isnan(arr).any() else "infinite"
            raise ImageError(f"{where}: the {what} holds {kind} values")
        if not np.array_equal(arr, np.round(arr)):
            raise ImageError(f"{where}: the {what} holds non-integer values")
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < 0:
            raise ImageError(f"{where}: the {what} holds values {lo:g}..{hi:g}; labels are non-negative integers "
                             f"(a CT given as a label map?)")
        if hi > max_value:
            raise ImageError(f"{where}: the {what} holds values up to {hi:g}, above {max_value} (a CT given as a "
                             f"label map?)")
    return arr
