"""Near-duplicate CT volumes: compact fingerprints, a cheap pairwise score, and a voxel-level verification.

Two files can hold the same scan although their bytes, arrays and headers differ: LiTS ships the
3D-IRCADb-01 patients converted from DICOM to NIfTI in its own array orientation and data type. What a
converter or re-export changes, and how each is undone here:

- axis order and direction: every volume is compared in one canonical orientation derived from its
  direction matrix (numpy axes along patient S, P, L, each increasing; :class:`Orientation`), and also
  under the 16 array flips and in-plane transposes of that array, in case a header lies;
- data type and a constant HU offset (a forgotten rescale intercept): all scores are normalised
  cross-correlations (NCC), invariant to an intensity offset; the offset is measured afterwards;
- a few slices cropped or padded at either end: the z shift is searched by cross-correlating per-slice
  statistics, which do not change under in-plane flips;
- resampling and noise: fingerprints are area averages on a fixed physical slab thickness.

A :class:`Fingerprint` (one read of the image, ~2.5 s of CPU for a 512 x 512 x 400 CT) holds, in canonical
orientation, a thumbnail of each 2 mm slab (32 x 32 area averages over the field of view) and two
per-slab profiles (mean and standard deviation of the HU). :func:`compare` scores a pair from the
fingerprints alone in a few milliseconds: profile NCC over every z shift, 16 x 16 thumbnail NCC for each
flip at the best shifts, then the score, the NCC of the 32 x 32 thumbnails' detail (:attr:`Fingerprint.detail`)
with a sub-slab shift, for the best hypotheses. :func:`verify` reads both images (and labels) of the pairs
whose score reaches :data:`CANDIDATE_SCORE` and compares them voxel by voxel after alignment: NCC, HU
offset, and label agreement (Dice of liver and tumour).

A pair is a duplicate when both the score and the detail NCC of the aligned voxels pass their thresholds
(:data:`CANDIDATE_SCORE`, :data:`DUPLICATE_DETAIL_NCC`); the plain voxel NCC is reported but does not decide:
two different abdomens on one grid reach 0.96, dominated by the body outline.
``scripts/bench_merge.py`` measures the distributions that justify the thresholds. Not
handled: in-plane cropping or padding (the fields of view must agree within :data:`FOV_TOLERANCE`),
rotations other than multiples of 90 degrees about z, and intensity changes other than a constant offset
(a rescale slope, a window that clips).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from functools import cached_property
from itertools import permutations, product
from pathlib import Path

import numpy as np

#: bump when the fingerprint changes, so cached fingerprints are recomputed
VERSION = 1
SLAB_MM = 2.0
THUMB = 32
SCREEN = 16
#: the shorter volume must overlap the other over at least this share of its z extent
MIN_OVERLAP = 0.5
#: in-plane field of view (mm) may differ by this relative amount (header rounding, resampling)
FOV_TOLERANCE = 0.05
#: thumbnail NCC from which a pair is verified on its voxels
CANDIDATE_SCORE = 0.9
#: NCC of the aligned voxels' detail (:func:`voxel_detail`) from which a verified pair is a duplicate
DUPLICATE_DETAIL_NCC = 0.7
#: pixel size (mm) the verification's detail is averaged to, and the Gaussian sigma (mm) removed from it
DETAIL_MM = 8.0
#: Gaussian sigma (slabs, pixels, pixels) removed from the thumbnails for the score (:attr:`Fingerprint.detail`)
DETAIL_SIGMA = (1.0, 2.0, 2.0)
_PEAKS = 2
_REFINE = 3


# ------------------------------------------------------------------------------------------------------
# Orientation


@dataclass(frozen=True)
class Orientation:
    """How a stored (z, y, x) numpy array becomes the canonical array (axes along patient S, P, L).

    Attributes:
        axes: canonical axis ``c`` is stored numpy axis ``axes[c]``.
        flips: after the transpose, canonical axis ``c`` is reversed.
    """

    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    def apply(self, arr: np.ndarray) -> np.ndarray:
        """A view of ``arr`` (z, y, x as stored) in canonical orientation."""
        out = np.transpose(arr, self.axes)
        return out[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]

    def relative_to(self, other: "Orientation") -> str:
        """What turns an array stored like ``self`` into one stored like ``other`` ("same" if nothing)."""
        # canonical = T_self(stored_self); stored_other = T_other^-1(canonical)
        parts = []
        perm = tuple(self.axes[other.axes.index(i)] for i in range(3))
        if perm != (0, 1, 2):
            parts.append(f"axes {perm}")
        flipped = [("zyx")[other.axes[c]] for c in range(3) if self.flips[c] != other.flips[c]]
        if flipped:
            parts.append("flip " + "".join(flipped))
        return ", ".join(parts) or "same"


def canonical_orientation(direction) -> Orientation:
    """The :class:`Orientation` of an image with this SimpleITK direction (9 numbers, row-major).

    Each index axis is assigned the patient axis it is closest to (the assignment with the largest total
    alignment, so oblique and gantry-tilted scans work), and flipped if it runs against it.
    """
    d = np.abs(np.asarray(direction, dtype=float).reshape(3, 3))  # d[p, a]: patient axis p, index axis a
    best = max(permutations(range(3)), key=lambda pa: sum(d[pa[a], a] for a in range(3)))
    signed = np.asarray(direction, dtype=float).reshape(3, 3)
    axes, flips = [0, 0, 0], [False, False, False]
    for a, p in enumerate(best):  # index axis a (SimpleITK x, y, z) -> patient axis p (L, P, S)
        c = 2 - p  # canonical numpy axis of patient axis p
        axes[c] = 2 - a  # numpy axis of SimpleITK index axis a
        flips[c] = bool(signed[p, a] < 0)
    return Orientation(tuple(axes), tuple(flips))


# ------------------------------------------------------------------------------------------------------
# Fingerprints


@dataclass
class Fingerprint:
    """Compact description of one CT volume, in canonical orientation (see the module docstring).

    Attributes:
        shape: canonical array shape (slices along S, rows along P, columns along L).
        spacing: mm along the canonical axes.
        orientation: how the stored array maps to the canonical one.
        digest: sha256 of the stored voxel values (integers as integers, whatever the type), shape and spacing.
        profiles: (2, slabs) mean and standard deviation of the HU in each :data:`SLAB_MM` slab.
        thumb: (slabs, THUMB, THUMB) area-averaged HU of each slab over the whole field of view.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: Orientation
    digest: str
    profiles: np.ndarray
    thumb: np.ndarray

    @property
    def fov(self) -> tuple[float, float]:
        """In-plane field of view (mm) along canonical P and L."""
        return self.shape[1] * self.spacing[1], self.shape[2] * self.spacing[2]

    @cached_property
    def screen(self) -> np.ndarray:
        """(slabs, SCREEN, SCREEN) coarser thumbnail for the first pass (float64)."""
        k = THUMB // SCREEN
        g = self.thumb.shape[0]
        return self.thumb.astype(np.float64).reshape(g, SCREEN, k, SCREEN, k).mean(axis=(2, 4))

    @cached_property
    def detail(self) -> np.ndarray:
        """The thumbnail minus its Gaussian blur (sigma 1 slab, 2 pixels): organ-scale structure without the
        body-versus-air contrast that every abdominal CT shares (the raw thumbnails of two different patients
        on one grid correlate up to ~0.96; these up to ~0.8). Flips and transposes commute with it."""
        from scipy import ndimage

        t = self.thumb.astype(np.float64)
        return t - ndimage.gaussian_filter(t, DETAIL_SIGMA, mode="nearest")

    def meta(self) -> dict:
        """JSON-able header (everything but the arrays)."""
        return {"shape": list(self.shape), "spacing": list(self.spacing), "digest": self.digest,
                "orientation": {"axes": list(self.orientation.axes), "flips": list(self.orientation.flips)},
                "version": VERSION}

    @classmethod
    def from_meta(cls, meta: dict, profiles: np.ndarray, thumb: np.ndarray) -> "Fingerprint":
        o = meta["orientation"]
        return cls(tuple(meta["shape"]), tuple(meta["spacing"]), Orientation(tuple(o["axes"]), tuple(o["flips"])),
                   meta["digest"], np.asarray(profiles, np.float32), np.asarray(thumb, np.float32))


def area_weights(n: int, m: int) -> np.ndarray:
    """(m, n) matrix averaging n equal cells into m equal bins by overlap length (rows sum to 1).

    Symmetric under reversal (``W[::-1, ::-1] == W``), so thumbnails of a flipped array are flipped thumbnails.
    """
    src = np.arange(n + 1) / n
    dst = np.arange(m + 1) / m
    lo = np.maximum(src[None, :-1], dst[:-1, None])
    hi = np.minimum(src[None, 1:], dst[1:, None])
    return np.clip(hi - lo, 0, None) * m


def slab_average(values: np.ndarray, spacing: float, step: float = SLAB_MM) -> np.ndarray:
    """Average of per-slice ``values`` (slices, ...) over slabs of ``step`` mm centred on 0, step, 2 step, ...

    Slice k covers ``[(k - 0.5) spacing, (k + 0.5) spacing]``; slabs reaching past the first or last slice
    average the part they cover. Exact for any spacing, thinner or thicker than ``step``.
    """
    n = values.shape[0]
    cum = np.concatenate([np.zeros((1,) + values.shape[1:]), np.cumsum(values * spacing, axis=0)])
    count = int(np.floor((n - 1) * spacing / step + 1e-6)) + 1
    centres = np.arange(count) * step
    lo_edge, hi_edge = -0.5 * spacing, (n - 0.5) * spacing

    def integral(x):
        x = np.clip(x, lo_edge, hi_edge)
        pos = (x - lo_edge) / spacing
        i = np.minimum(np.floor(pos).astype(int), n - 1)
        frac = (pos - i).reshape((-1,) + (1,) * (values.ndim - 1))
        return cum[i] + frac * (cum[i + 1] - cum[i])

    a, b = np.clip(centres - step / 2, lo_edge, hi_edge), np.clip(centres + step / 2, lo_edge, hi_edge)
    width = (b - a).reshape((-1,) + (1,) * (values.ndim - 1))
    return (integral(b) - integral(a)) / width


def array_digest(arr: np.ndarray, spacing) -> str:
    """sha256 of voxel values (integral values hashed as integers, whatever the stored type), shape, spacing."""
    h = hashlib.sha256(json.dumps({"shape": list(arr.shape), "spacing": [round(float(s), 5) for s in spacing]}
                                  ).encode())
    step = 16
    integral = arr.dtype.kind in "iub" or all(np.array_equal(arr[i:i + step], np.round(arr[i:i + step]))
                                              for i in range(0, arr.shape[0], step))
    if integral:
        lo, hi = (arr.min(), arr.max()) if arr.size else (0, 0)
        dtype = np.int16 if -32768 <= lo and hi <= 32767 else np.int64
    else:
        dtype = np.float64
    for i in range(0, arr.shape[0], step):
        h.update(np.ascontiguousarray(arr[i:i + step], dtype=dtype).tobytes())
    return h.hexdigest()


def fingerprint_array(arr: np.ndarray, spacing_xyz, direction) -> Fingerprint:
    """Fingerprint of a stored (z, y, x) array with SimpleITK spacing (x, y, z) and direction."""
    orientation = canonical_orientation(direction)
    stored_spacing = tuple(float(s) for s in spacing_xyz)[::-1]  # numpy axis order
    spacing = tuple(stored_spacing[a] for a in orientation.axes)
    canon = orientation.apply(arr)
    nz, ny, nx = canon.shape
    if min(canon.shape) < 1 or ny < 2 or nx < 2:
        raise ValueError(f"volume of shape {canon.shape} is too small to fingerprint")
    wy, wx = area_weights(ny, THUMB).astype(np.float32), area_weights(nx, THUMB).astype(np.float32)
    thumbs = np.empty((nz, THUMB, THUMB), np.float64)
    mean_sq = np.empty(nz, np.float64)
    step = max(1, 2**22 // (ny * nx))  # slabs of ~16 MB in float32
    for k in range(0, nz, step):
        s = np.asarray(canon[k:k + step], dtype=np.float32)
        thumbs[k:k + step] = wy @ (s @ wx.T)
        mean_sq[k:k + step] = np.einsum("kij,kij->k", s, s, dtype=np.float64) / (ny * nx)
    slab_thumb = slab_average(thumbs, spacing[0])
    slab_mean = slab_thumb.mean(axis=(1, 2))  # area weights keep the mean
    slab_sq = slab_average(mean_sq, spacing[0])
    profiles = np.stack([slab_mean, np.sqrt(np.maximum(slab_sq - slab_mean**2, 0.0))])
    return Fingerprint((nz, ny, nx), spacing, orientation, array_digest(arr, spacing_xyz),
                       profiles.astype(np.float32), slab_thumb.astype(np.float32))


def fingerprint_image(path: str | os.PathLike) -> Fingerprint:
    """Read one image (a clear error naming the file if it cannot be read) and fingerprint it."""
    import SimpleITK as sitk

    from nnunet_liver.data.converters import ConversionError, read_image

    image = read_image(path)
    try:
        return fingerprint_array(sitk.GetArrayViewFromImage(image), image.GetSpacing(), image.GetDirection())
    except ValueError as e:
        raise ConversionError(f"{path}: {e}") from None


# ------------------------------------------------------------------------------------------------------
# Pairwise comparison of fingerprints


@dataclass(frozen=True)
class Alignment:
    """Array operations that bring B's canonical array onto A's (applied in this order).

    Attributes:
        flip_z: reverse B along S (its header has S backwards, or lies).
        transpose: swap B's in-plane axes.
        flip_y, flip_x: reverse B along P, L (after the transpose).
        shift_mm: B's slice at height z (mm above its first slice, after ``flip_z``) lies at ``z + shift_mm``
            above A's first slice.
    """

    flip_z: bool = False
    transpose: bool = False
    flip_y: bool = False
    flip_x: bool = False
    shift_mm: float = 0.0

    def apply(self, b: np.ndarray) -> np.ndarray:
        """Flips and transpose (not the shift) applied to a (z, y, x) canonical array or thumbnail stack."""
        if self.flip_z:
            b = b[::-1]
        if self.transpose:
            b = np.swapaxes(b, 1, 2)
        return b[:, ::-1 if self.flip_y else 1, ::-1 if self.flip_x else 1]

    @property
    def array_flips(self) -> str:
        """The array operations beyond what the headers say ("none" if the headers tell the whole story)."""
        ops = [n for n, on in (("flip z", self.flip_z), ("transpose yx", self.transpose), ("flip y", self.flip_y),
                               ("flip x", self.flip_x)) if on]
        return ", ".join(ops) or "none"


@dataclass(frozen=True)
class Match:
    """A scored pair. ``score``: NCC of the 32 x 32 slab thumbnails' detail over the overlap; ``screen``: the
    16 x 16 thumbnail NCC of the first pass; ``profile``: NCC of the per-slab profiles; ``overlap_mm``: the
    z extent both cover."""

    score: float
    screen: float
    profile: float
    alignment: Alignment
    overlap_mm: float


IN_PLANE = tuple(product((False, True), repeat=3))  # (transpose, flip_y, flip_x)


def _ncc_all_shifts(a: np.ndarray, b: np.ndarray, min_overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """NCC of ``a[i]`` with ``b[i - d]`` over their overlap, for every shift d with at least ``min_overlap``
    samples; ``a``, ``b``: (channels, n). Returns (shifts, NCC averaged over channels)."""
    na, nb = a.shape[1], b.shape[1]
    shifts = np.arange(-(nb - 1), na)
    lo_a, hi_a = np.maximum(0, shifts), np.minimum(na, nb + shifts)
    lo_b, hi_b = lo_a - shifts, hi_a - shifts
    n = (hi_a - lo_a).astype(float)
    keep = n >= min_overlap
    total = np.zeros(len(shifts))
    for ca, cb in zip(a.astype(np.float64), b.astype(np.float64)):
        ca, cb = ca - ca.mean(), cb - cb.mean()
        sa, sb = np.concatenate([[0], np.cumsum(ca)]), np.concatenate([[0], np.cumsum(cb)])
        qa, qb = np.concatenate([[0], np.cumsum(ca**2)]), np.concatenate([[0], np.cumsum(cb**2)])
        sum_a, sum_b = sa[hi_a] - sa[lo_a], sb[hi_b] - sb[lo_b]
        var_a = qa[hi_a] - qa[lo_a] - sum_a**2 / n
        var_b = qb[hi_b] - qb[lo_b] - sum_b**2 / n
        cross = np.correlate(ca, cb, mode="full") - sum_a * sum_b / n  # index k <-> shift k - (nb - 1)
        denom = np.sqrt(np.maximum(var_a, 0) * np.maximum(var_b, 0))
        total += np.where(denom > 1e-9, cross / np.maximum(denom, 1e-9), 0.0)
    return shifts[keep], total[keep] / a.shape[0]


def _top_peaks(values: np.ndarray, count: int, gap: int = 3) -> list[int]:
    order, chosen = np.argsort(-values, kind="stable"), []
    for i in order:
        if all(abs(int(i) - j) > gap for j in chosen):
            chosen.append(int(i))
            if len(chosen) == count:
                break
    return chosen


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = float(np.sqrt(np.vdot(a, a) * np.vdot(b, b)))
    return float(np.vdot(a, b) / denom) if denom > 0 else 0.0


def _fov_ok(a: Fingerprint, b: Fingerprint, transpose: bool) -> bool:
    fa, fb = a.fov, b.fov[::-1] if transpose else b.fov
    return all(abs(np.log(x / y)) <= np.log1p(FOV_TOLERANCE) for x, y in zip(fa, fb))


def _in_plane_ncc(a: np.ndarray, b: np.ndarray, d: int, ops) -> np.ndarray:
    """NCC of ``a[i]`` with ``op(b)[i - d]`` over their overlap, for each in-plane op (transpose, flip_y,
    flip_x); a, b: (slabs, s, s). The ops permute pixels, so B's mean and norm are computed once."""
    lo, hi = max(0, d), min(len(a), len(b) + d)
    x, y = a[lo:hi], b[lo - d:hi - d]
    n = x.size
    sx, sy = float(x.sum(dtype=np.float64)), float(y.sum(dtype=np.float64))
    var = (float(np.vdot(x, x)) - sx * sx / n) * (float(np.vdot(y, y)) - sy * sy / n)
    if n == 0 or var <= 0:
        return np.zeros(len(ops))
    dots = [float(np.vdot(x, Alignment(transpose=t, flip_y=fy, flip_x=fx).apply(y))) for t, fy, fx in ops]
    return (np.array(dots) - sx * sy / n) / np.sqrt(var)


def _refine(a: np.ndarray, b: np.ndarray, d: int) -> tuple[float, float]:
    """Best NCC of ``a[i]`` with ``b`` at ``i - d - f`` (linear interpolation between slabs), f in [-1, 1];
    a, b: (slabs, s, s) float64, contiguous.

    NCC(f) follows in closed form from the inner products of A with B at shifts d - 1, d, d + 1 and of those
    with each other (the interpolated slab is a weighted sum of two of them), over the slabs all three cover.
    With fewer than two such slabs, the NCC at shift d. Returns (NCC, f).
    """
    lo, hi = max(0, d + 1), min(len(a), len(b) + d - 1)
    if hi - lo < 2:
        lo, hi = max(0, d), min(len(a), len(b) + d)
        return (_ncc(a[lo:hi], b[lo - d:hi - d]) if hi > lo else 0.0), 0.0
    x = a[lo:hi]
    ys = [b[lo - d - k:hi - d - k] for k in (0, 1, -1)]
    n = x.size
    sx, sy = float(x.sum()), np.array([y.sum() for y in ys])
    c = np.array([np.vdot(x, y) for y in ys]) - sx * sy / n
    g = np.array([[np.vdot(u, v) for v in ys] for u in ys]) - np.outer(sy, sy) / n
    f = np.linspace(-1, 1, 81)
    w = np.zeros((len(f), 3))
    w[:, 0] = 1 - np.abs(f)
    w[f > 0, 1] = f[f > 0]
    w[f < 0, 2] = -f[f < 0]
    den = np.sqrt(max(float(np.vdot(x, x)) - sx * sx / n, 0.0) * np.maximum(np.einsum("fi,ij,fj->f", w, g, w), 0))
    score = np.where(den > 0, (w @ c) / np.where(den > 0, den, 1), 0.0)
    k = int(np.argmax(score))
    return float(score[k]), float(f[k])


def compare(a: Fingerprint, b: Fingerprint, *, check_fov: bool = True) -> Match | None:
    """Best alignment of B onto A over z direction, in-plane flips/transpose and z shift; None when no
    hypothesis is possible (fields of view differ with ``check_fov``, or too little z overlap)."""
    ops = [op for op in IN_PLANE if not check_fov or _fov_ok(a, b, op[0])]
    if not ops:
        return None
    na, nb = a.thumb.shape[0], b.thumb.shape[0]
    min_overlap = max(2, int(np.ceil(MIN_OVERLAP * min(na, nb))))
    screen_a, screen_b = a.screen, b.screen
    hypotheses = []  # (screen NCC, profile NCC, flip_z, op, integer shift)
    for flip_z in (False, True):
        pb = b.profiles[:, ::-1] if flip_z else b.profiles
        shifts, nccs = _ncc_all_shifts(a.profiles, pb, min_overlap)
        sb = np.ascontiguousarray(screen_b[::-1]) if flip_z else screen_b
        for peak in _top_peaks(nccs, _PEAKS):
            d = int(shifts[peak])
            for op, score in zip(ops, _in_plane_ncc(screen_a, sb, d, ops)):
                hypotheses.append((float(score), float(nccs[peak]), flip_z, op, d))
    if not hypotheses:
        return None
    hypotheses.sort(key=lambda h: -h[0])
    best = None
    for screen, profile, flip_z, op, d in hypotheses[:_REFINE]:
        score, f = _refine(a.detail, np.ascontiguousarray(Alignment(flip_z, *op).apply(b.detail)), d)
        if best is None or score > best.score:
            overlap = min(na, nb + d) - max(0, d)
            best = Match(round(score, 6), round(screen, 6), round(profile, 6),
                         Alignment(flip_z, *op, shift_mm=round((d + f) * SLAB_MM, 3)),
                         round((overlap - 1) * SLAB_MM, 1))
    return best


# ------------------------------------------------------------------------------------------------------
# Voxel-level verification of a candidate pair


@dataclass(frozen=True)
class Evidence:
    """What a verified pair looks like voxel by voxel, B mapped onto A's grid.

    Attributes:
        detail_ncc: NCC of the voxels' detail over the overlap (:func:`voxel_detail`): what decides.
        voxel_ncc: NCC of the HU over the overlap.
        hu_offset: mean HU of B minus A over the overlap (a forgotten rescale intercept shows here).
        z_shift_slices: the shift in A's slices.
        overlap_slices: A's slices that B covers.
        header: how B's stored array differs from A's according to the headers.
        label_*: None without both labels. ``same_label``: identical on the overlap.
    """

    detail_ncc: float
    voxel_ncc: float
    hu_offset: float
    z_shift_slices: float
    overlap_slices: int
    header: str
    same_label: bool | None = None
    label_dice_liver: float | None = None
    label_dice_tumour: float | None = None
    liver_ml_a: float | None = None
    liver_ml_b: float | None = None
    tumour_ml_a: float | None = None
    tumour_ml_b: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def voxel_detail(slices: np.ndarray, block: int, sigma: float) -> np.ndarray:
    """In-plane detail of (k, y, x) slices: block means of ``block`` x ``block`` voxels (~:data:`DETAIL_MM`,
    rows and columns past the last whole block dropped) minus their Gaussian blur of ``sigma`` blocks.

    Fine enough to tell two abdomens apart (organ-scale structure, not the body outline), coarse enough that
    resampling and noise barely change it.
    """
    from scipy import ndimage

    k, y, x = slices.shape
    block = max(1, min(block, y, x))
    y, x = y // block * block, x // block * block
    s = slices[:, :y, :x]
    if block > 1:
        s = s.reshape(k, y // block, block, x // block, block).mean(axis=(2, 4))
    return s - ndimage.gaussian_filter(s, (0, sigma, sigma), mode="nearest")


def _sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, sum a, sum b, sum a^2, sum b^2, sum ab): what an NCC over many slabs accumulates."""
    return np.array([a.size, a.sum(), b.sum(), np.vdot(a, a), np.vdot(b, b), np.vdot(a, b)], dtype=np.float64)


def _ncc_from_sums(sums: np.ndarray) -> float:
    n, sa, sb, aa, bb, ab = sums
    if n == 0:
        return 0.0
    var_a, var_b = aa - sa * sa / n, bb - sb * sb / n
    return float((ab - sa * sb / n) / np.sqrt(var_a * var_b)) if var_a > 0 and var_b > 0 else 0.0


def _dice(inter: float, size_a: float, size_b: float) -> float:
    return 1.0 if size_a + size_b == 0 else 2.0 * inter / (size_a + size_b)


class _Resampler:
    """B's canonical (already flipped/transposed) array sampled on A's canonical grid, slab by slab."""

    def __init__(self, a_shape, a_spacing, b_shape, b_spacing, shift_mm: float):
        self.scale = np.array([a_spacing[0] / b_spacing[0], b_shape[1] / a_shape[1], b_shape[2] / a_shape[2]])
        # B index = scale * A index + offset (in-plane: the same field of view; z: the shift)
        self.offset = np.array([-shift_mm / b_spacing[0], 0.5 * self.scale[1] - 0.5, 0.5 * self.scale[2] - 0.5])
        self.b_shape = b_shape
        zb = self.scale[0] * np.arange(a_shape[0]) + self.offset[0]
        inside = np.flatnonzero((zb >= -0.5) & (zb <= b_shape[0] - 0.5))
        self.k0, self.k1 = (int(inside[0]), int(inside[-1]) + 1) if len(inside) else (0, 0)
        z_int = abs(self.scale[0] - 1) < 1e-4 and abs(self.offset[0] - round(self.offset[0])) < 0.02
        self.direct = bool(z_int and b_shape[1:] == tuple(a_shape[1:]))

    def take(self, b: np.ndarray, k0: int, k1: int, order: int) -> np.ndarray:
        """B on A's slices k0:k1 (all rows and columns) as float32 (order 1) or its own type (order 0)."""
        if self.direct:
            j0 = k0 + int(round(self.offset[0]))
            j = np.clip(np.arange(j0, j0 + k1 - k0), 0, self.b_shape[0] - 1)
            return np.asarray(b[j], dtype=np.float32 if order else b.dtype)
        from scipy import ndimage

        out_shape = (k1 - k0, int(round(self.b_shape[1] / self.scale[1])), int(round(self.b_shape[2] / self.scale[2])))
        offset = self.offset + np.array([self.scale[0] * k0, 0, 0])
        return ndimage.affine_transform(b, self.scale, offset=offset, output_shape=out_shape, order=order,
                                        output=np.float32 if order else b.dtype, mode="nearest")


def _canonical(path, what: str):
    """(image, canonical view of its voxels, canonical spacing, orientation); the view lives as long as the
    image does, so callers keep both."""
    import SimpleITK as sitk

    from nnunet_liver.data.converters import read_image

    image = read_image(path, what)
    o = canonical_orientation(image.GetDirection())
    spacing = tuple(float(s) for s in image.GetSpacing())[::-1]
    return image, o.apply(sitk.GetArrayViewFromImage(image)), tuple(spacing[x] for x in o.axes), o


def verify(image_a, image_b, alignment: Alignment, *, label_a=None, label_b=None) -> Evidence:
    """Compare B with A voxel by voxel after ``alignment`` (from :func:`compare`); labels too when both given.

    The z shift is refined to whole slices when both volumes have the same slice spacing (the copy was
    cropped or padded): the one of ``round(shift)`` and its neighbours with the best NCC on a subsample.
    """
    keep = []  # the SimpleITK images own the voxels the views below point to
    img, a, a_spacing, a_orient = _canonical(image_a, "image")
    keep.append(img)
    img, b_raw, b_spacing, b_orient = _canonical(image_b, "image")
    keep.append(img)
    b = alignment.apply(b_raw)
    if alignment.transpose:
        b_spacing = (b_spacing[0], b_spacing[2], b_spacing[1])
    shifts = [alignment.shift_mm]
    if abs(a_spacing[0] - b_spacing[0]) < 1e-4 * a_spacing[0] and b.shape[1:] == a.shape[1:]:
        whole = round(alignment.shift_mm / a_spacing[0])
        shifts = [(whole + k) * a_spacing[0] for k in (0, -1, 1)]
    if len(shifts) > 1:
        def quick(shift):
            r = _Resampler(a.shape, a_spacing, b.shape, b_spacing, shift)
            if r.k1 - r.k0 < 2:
                return -2.0
            idx = np.arange(r.k0, r.k1, max(1, (r.k1 - r.k0) // 24))
            sub_a = np.stack([np.asarray(a[k, ::4, ::4], np.float32) for k in idx])
            sub_b = np.stack([r.take(b, k, k + 1, 1)[0, ::4, ::4] for k in idx])
            return _ncc(sub_a, sub_b)
        shift = max(shifts, key=quick)
    else:
        shift = shifts[0]
    r = _Resampler(a.shape, a_spacing, b.shape, b_spacing, shift)
    la = lb = None
    if label_a is not None and label_b is not None:
        img, la, _, _ = _canonical(label_a, "label")
        keep.append(img)
        img, lb_raw, _, _ = _canonical(label_b, "label")
        keep.append(img)
        lb = alignment.apply(lb_raw)
    if not r.direct:  # ndimage would copy a strided view for every slab
        b = np.ascontiguousarray(b)
        lb = None if lb is None else np.ascontiguousarray(lb)
    sums = np.zeros(6)  # of the HU, centred on A's first slab mean for precision
    detail_sums = np.zeros(6)
    block = max(1, int(round(DETAIL_MM / min(a_spacing[1], a_spacing[2]))))
    sigma = DETAIL_MM / (block * min(a_spacing[1], a_spacing[2]))
    counts = np.zeros(7)  # liver a, b, both; tumour a, b, both; differing voxels
    centre = None
    step = max(1, 2**21 // max(1, a.shape[1] * a.shape[2]))
    for k in range(r.k0, r.k1, step):
        k1 = min(k + step, r.k1)
        sa = np.asarray(a[k:k1], dtype=np.float64)
        sb = r.take(b, k, k1, 1).astype(np.float64)
        if centre is None:
            centre = float(sa.mean())
        sa -= centre
        sb -= centre
        sums += _sums(sa, sb)
        detail_sums += _sums(voxel_detail(sa, block, sigma), voxel_detail(sb, block, sigma))
        if la is not None:
            xa, xb = np.asarray(la[k:k1]), r.take(lb, k, k1, 0)
            for i, (ma, mb) in enumerate(((xa >= 1, xb >= 1), (xa == 2, xb == 2))):
                counts[3 * i:3 * i + 3] += [ma.sum(), mb.sum(), (ma & mb).sum()]
            counts[6] += np.count_nonzero(xa != xb)
    n = sums[0]
    if n == 0:
        return Evidence(0.0, 0.0, 0.0, round(shift / a_spacing[0], 3), 0, b_orient.relative_to(a_orient))
    mean_a, mean_b = sums[1] / n, sums[2] / n
    labels = {}
    if la is not None:
        voxel_ml_a = float(np.prod(a_spacing)) / 1000
        labels = dict(same_label=bool(counts[6] == 0),
                      label_dice_liver=round(_dice(counts[2], counts[0], counts[1]), 4),
                      label_dice_tumour=round(_dice(counts[5], counts[3], counts[4]), 4),
                      liver_ml_a=round(counts[0] * voxel_ml_a, 2), liver_ml_b=round(counts[1] * voxel_ml_a, 2),
                      tumour_ml_a=round(counts[3] * voxel_ml_a, 2), tumour_ml_b=round(counts[4] * voxel_ml_a, 2))
    return Evidence(detail_ncc=round(_ncc_from_sums(detail_sums), 6), voxel_ncc=round(_ncc_from_sums(sums), 6),
                    hu_offset=round(float(mean_b - mean_a), 2),
                    z_shift_slices=round(shift / a_spacing[0], 3), overlap_slices=r.k1 - r.k0,
                    header=b_orient.relative_to(a_orient), **labels)


def is_duplicate(match: Match | None, evidence: Evidence | None) -> bool:
    return (match is not None and evidence is not None and match.score >= CANDIDATE_SCORE
            and evidence.detail_ncc >= DUPLICATE_DETAIL_NCC)


def load_cache(path: Path) -> dict[str, tuple[dict, Fingerprint]]:
    """Fingerprints cached by :func:`save_cache`: key -> (file fingerprint record, Fingerprint)."""
    if not Path(path).is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            index = json.loads(str(z["index"]))
            return {key: (entry["file"], Fingerprint.from_meta(entry["meta"], z[f"p{i}"], z[f"t{i}"]))
                    for i, (key, entry) in enumerate(index.items()) if entry["meta"].get("version") == VERSION}
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return {}  # a damaged cache is recomputed


def save_cache(path: Path, entries: dict[str, tuple[dict, Fingerprint]]) -> None:
    """Write fingerprints (key -> (file record, Fingerprint)) as one compressed .npz, staged."""
    from nnunet_liver.data.io import staged_file

    index, arrays = {}, {}
    for i, (key, (file_record, fp)) in enumerate(entries.items()):
        index[key] = {"file": file_record, "meta": fp.meta()}
        arrays[f"p{i}"], arrays[f"t{i}"] = fp.profiles, fp.thumb.astype(np.float32)
    with staged_file(path, overwrite=True) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, index=np.array(json.dumps(index)), **arrays)
