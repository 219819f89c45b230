"""Synthetic contrast-enhanced abdominal CT phantoms with liver lesions (pure numpy/scipy).

The phantoms are the embedded default data set for tests, the CPU demo and the benchmarks. A case has two
independent parts:

* an :class:`Anatomy` (:func:`sample_anatomy`): voxel grid and spacing, a tissue-index map, the labels
  (0 background, 1 liver, 2 tumour), lesion instances and a lesion table, plus the smooth texture fields
  and per-lesion enhancement models needed to render it;
* :class:`ScanConditions` (:func:`sample_conditions`): contrast phase, per-tissue HU, noise, blur and
  calibration offset.

:func:`render` turns the two into an int16 HU volume. :func:`generate_case` and :func:`generate_shifted`
draw everything from ``np.random.default_rng([seed, case_index])``: the same anatomy is rendered under
normal conditions or under out-of-distribution ("shifted") conditions, the robustness split.

Coordinates. Arrays are (z, y, x), as ``SimpleITK.GetArrayFromImage`` returns them; ``spacing`` is
(x, y, z) in mm; the physical position of a voxel is ``index * spacing`` (origin 0, identity direction,
LPS): x grows to the patient's left, y to the posterior, z to the head. The liver therefore lies at small
x, the spine at large y, the lungs in the top slices.

Anatomy model (all sizes in mm, so that lesion sizes are realistic whatever the grid):

* Field of view: in-plane spacing ``U(0.7, 1.0) * 512 / size`` (the 358-512 mm field of view of an
  abdominal CT); slice spacing 1.5-3x the in-plane spacing (log-uniform); the slices cover the liver
  (140-190 mm high) plus 30-80 mm above (lung bases, heart) and 50-160 mm below, at least 16 slices:
  at size 128 mostly 34-63 slices (median 45, ~0.35 x size), at sizes 48 and 64 mostly 16-32.
* Body: a super-ellipse cross-section with smooth Fourier irregularity and a flattened back,
  subcutaneous fat of varying thickness, a muscle wall, ribs in the wall, paraspinal and psoas muscles,
  a vertebral column (cancellous body with a cortical shell, discs, spinal canal; arch and processes as
  "thin_bone", cortex and marrow mixed at these voxel sizes), aorta, inferior vena cava, a diaphragm
  with two domes, lung bases and heart above it, stomach (wall, fluid, an air cap), bowel loops in
  visceral fat (an enhancing wall around fluid with or without an air-fluid level, faeces with gas
  bubbles, or gas), spleen, kidneys (cortex, medulla, sinus fat) in perirenal fat, gallbladder.
* Liver: a smooth union of five ellipsoids (large right lobe, its inferior tip, medial segment, thin
  left lateral lobe reaching across the midline, caudate lobe), warped by a low-frequency random
  displacement field and moulded by the abdominal wall, the diaphragm dome, the kidney, the gallbladder
  fossa and the vena cava. Portal and hepatic venous trees (gently curved, tapering branching tubes
  grown towards random liver points) run inside it. Intrahepatic vessels carry label 1 (liver), as in
  LiTS; the vena cava, the extrahepatic portal vein and the gallbladder are background.
* Texture: a low-frequency field (~60 mm; liver amplitude ``texture_hu``, 2-6 HU) and a mid-frequency
  mottle (~12 mm) with per-tissue amplitudes; the spleen is heterogeneous in the arterial phase.

Lesion model. 0-6 lesions per case (20% of cases none); equivalent diameters drawn from a power law
(density ~ d^-1.5) on 6-50 mm: median ~13 mm, ~70% under 20 mm, ~15% over 30 mm. A lesion's voxel
volume is calibrated to its drawn diameter, but a grid cannot hold a lesion smaller than about ten
voxels: below that the diameter is raised to the grid's minimum (about 9-15 mm at size 128, 23-41 mm at
size 48); ``Anatomy.lesion_models`` keeps the drawn diameter. Lesions lie inside the liver (clipped to
it, at most a third cut off at the border, at least half of their neighbours and 40% of their in-plane
neighbours liver), are one face-connected component each, and are at least two voxels apart in every
direction, so face and full connectivity give the same components; lesions under 8 voxels are redrawn
elsewhere (12 tries) or dropped. Subtypes (50% benign by expectation; lesions of one case share a
dominant subtype with probability 0.6):

* metastasis: hypodense (20-40 HU below the liver in the portal phase), lobulated, enhancing rim
  (strong arterial rim in 15%), necrotic fluid core when large, blurred margin; 30% of those under 18 mm
  are cyst-like (20-40 HU, sharp, homogeneous);
* HCC: arterial hyperenhancement (20-60 HU) with a mosaic texture, washout in the portal (20-40 HU
  below) and delayed phases, an enhancing capsule in half of those over 15 mm;
* cyst: 0-20 HU (20% proteinaceous, 20-38 HU), sharp, round, homogeneous, no enhancement;
* haemangioma: discontinuous peripheral nodules at blood-pool HU that fill in centripetally towards the
  delayed phase around a hypodense centre; a quarter of those under 20 mm flash-fill.

40% of metastases and HCC (about 20% of all lesions) are low-contrast: 10-20 HU in the portal phase
(HCC: 10-20 HU arterial hyperenhancement too). Thin peripheral compartments (rim, capsule, margin) are
weighted by their thickness over the voxel size (partial volume).

Lesion HU follow a linear enhancement model: ``native + a * E_liver + b * E_blood`` per compartment,
where ``E_liver`` and ``E_blood`` are the scan's liver and blood-pool enhancement over their native
values. The coefficients are calibrated so that each drawn contrast target is met exactly in the
noise-free reference rendering of its phase; a badly timed scan with weaker enhancement therefore also
has weaker lesion contrast. ``contrast_hu`` in the lesion table is mean lesion HU minus mean HU of the
liver parenchyma within two voxels around it, in a noise-free, unblurred rendering under
:func:`reference_conditions` (portal phase, mid-range values).

Speed: about 0.1 s per case at size 64 and 0.3-0.5 s at size 128 on one core (measured on version 1; the bowel
loops of version 2 cost about a third more: 2.27 against 1.68 s per case at size 224, liver field of view).

Typical use::

    anatomy, conditions, image = generate_case(seed=0, case_index=3, size=128)
    sitk_image = SimpleITK.GetImageFromArray(image); sitk_image.SetSpacing(anatomy.spacing)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage, special
from scipy.spatial import cKDTree

#: Changes whenever the same seed draws other images. 1: the bowel as solid soft tissue (35-60 HU); 2: bowel
#: loops with an enhancing wall around fluid, faeces or gas, and a stomach wall around fluid (every other
#: tissue, the liver and the lesions drawn as in 1).
PHANTOM_VERSION = 2
PHASES = ("arterial", "portal", "delayed")
SUBTYPES = ("metastasis", "hcc", "cyst", "haemangioma")
SUBTYPE_LABEL = {"metastasis": "malignant", "hcc": "malignant", "cyst": "benign", "haemangioma": "benign"}
TISSUES = (
    "air", "lung", "fat", "muscle", "bowel", "gas", "cancellous", "cortical", "disc", "csf", "thin_bone",
    "aorta", "ivc", "portal_vein", "hepatic_vein", "heart", "liver", "spleen", "kidney_cortex",
    "kidney_medulla", "gallbladder", "lesion", "bowel_fluid", "feces",
)
TISSUE_INDEX = {name: i for i, name in enumerate(TISSUES)}
HU_RANGE = (-1024, 3071)
MIN_LESION_VOXELS = 8
LESION_GAP_VOXELS = 2

# Phase-dependent HU ranges (uniform draws): typical multiphase liver-CT values (aorta 250-350 arterial,
# portal vein 160-200 portal, liver 60-80 / 100-130 / 90-100, as the phantom issue asks).
_PHASE_HU = {
    "arterial": {"aorta": (250, 350), "portal_vein": (100, 160), "hepatic_vein": (55, 90), "ivc": (60, 110),
                 "liver": (60, 80), "spleen": (90, 130), "kidney_cortex": (170, 240), "kidney_medulla": (70, 110),
                 "muscle": (45, 55), "bowel": (35, 55)},
    "portal": {"aorta": (150, 200), "portal_vein": (160, 200), "hepatic_vein": (140, 180), "ivc": (120, 160),
               "liver": (100, 130), "spleen": (110, 130), "kidney_cortex": (160, 200), "kidney_medulla": (130, 170),
               "muscle": (50, 60), "bowel": (40, 60)},
    "delayed": {"aorta": (110, 130), "portal_vein": (110, 130), "hepatic_vein": (105, 125), "ivc": (105, 125),
                "liver": (90, 100), "spleen": (95, 110), "kidney_cortex": (130, 160), "kidney_medulla": (140, 180),
                "muscle": (50, 60), "bowel": (40, 55)},
}
_STATIC_HU = {"air": (-1005, -995), "lung": (-870, -820), "fat": (-115, -90), "gas": (-990, -940),
              "cancellous": (200, 300), "cortical": (750, 950), "disc": (80, 100), "csf": (5, 20),
              "thin_bone": (350, 550), "gallbladder": (0, 20)}
# Bowel and stomach contents: fluid (water, chyme) and faeces (mottled, with gas bubbles). Drawn from a
# generator of their own (see :func:`sample_conditions`), so the other tissues' draws are those of the
# phantoms made before the bowel had a lumen.
_CONTENT_HU = {"bowel_fluid": (0, 25), "feces": (-60, 10)}
_PHASE_PROBS = (0.25, 0.55, 0.20)
_BLOOD_NATIVE_HU = 40.0
# unenhanced HU of the tissues that enhance (the liver's is drawn per scan)
_NATIVE_HU = {"aorta": _BLOOD_NATIVE_HU, "ivc": _BLOOD_NATIVE_HU, "portal_vein": _BLOOD_NATIVE_HU,
              "hepatic_vein": _BLOOD_NATIVE_HU, "heart": _BLOOD_NATIVE_HU, "spleen": 45.0, "kidney_cortex": 30.0,
              "kidney_medulla": 30.0, "bowel": 35.0, "muscle": 45.0}
# Nominal (mid-range) values of the reference rendering (:func:`reference_conditions`), in which the
# lesion contrast targets are met.
_NOMINAL_LIVER_NATIVE = 58.0
_NOMINAL_LIVER = {"arterial": 70.0, "portal": 115.0, "delayed": 95.0}
_NOMINAL_BLOOD = {"arterial": 300.0 - _BLOOD_NATIVE_HU, "portal": 180.0 - _BLOOD_NATIVE_HU,
                  "delayed": 120.0 - _BLOOD_NATIVE_HU}
# Texture amplitudes (HU) per tissue: low-frequency field (~60 mm) and mid-frequency mottle (~12 mm).
_TEX_LOW = {"fat": 5, "muscle": 3, "bowel": 8, "lung": 25, "cancellous": 25, "spleen": 3, "kidney_cortex": 4,
            "kidney_medulla": 4, "heart": 5}
_TEX_MID = {"fat": 4, "muscle": 3, "bowel": 12, "lung": 20, "cancellous": 30, "spleen": 2, "kidney_cortex": 4,
            "kidney_medulla": 6, "liver": 1.5, "heart": 4, "gallbladder": 1, "bowel_fluid": 3, "feces": 35}
_SPLEEN_ARTERIAL_MOTTLE_HU = 18.0


@dataclass(frozen=True)
class ScanConditions:
    """Everything that changes between two scans of the same anatomy.

    Attributes:
        phase: "arterial", "portal" or "delayed".
        tissue_hu: mean HU per tissue name (:data:`TISSUES`) after the contrast-phase shifts; the entry
            "lesion" is a placeholder (lesions are rendered from their own enhancement models).
        noise_sd: standard deviation of the (spatially correlated) noise, HU.
        blur_sigma_mm: in-plane Gaussian point-spread sigma, mm (the slice profile adds blur along z).
        hu_offset: global calibration offset added to every voxel, HU (0 for normal scans).
        liver_native_hu: unenhanced liver HU of this scan; ``tissue_hu["liver"]`` minus it is the liver
            enhancement that drives lesion enhancement.
        blood_enhancement_hu: blood-pool enhancement over native blood (aorta in the arterial phase,
            portal vein in the portal phase, mean vessel in the delayed phase), HU.
        texture_hu: amplitude of the smooth parenchymal inhomogeneity of the liver, HU.
        noise_corr_vox: in-plane correlation (Gaussian sigma, voxels) of the noise texture.
        shifted: True for the robustness split.
        shift: what the robustness split changed, by how much (empty for normal scans).
    """

    phase: str
    tissue_hu: dict[str, float]
    noise_sd: float
    blur_sigma_mm: float
    hu_offset: float
    liver_native_hu: float
    blood_enhancement_hu: float
    texture_hu: float
    noise_corr_vox: float
    shifted: bool = False
    shift: dict[str, float] = field(default_factory=dict)

    @property
    def liver_enhancement_hu(self) -> float:
        return self.tissue_hu["liver"] - self.liver_native_hu


@dataclass
class LesionModel:
    """Geometry fields and enhancement parameters of one lesion, for rendering.

    ``rho``, ``texture`` and ``aux`` cover ``box`` (a tuple of z, y, x slices of the volume): ``rho`` is
    the normalised radial coordinate (0 at the centre, about 1 in the outer voxel layer), ``texture`` a
    unit-variance smooth field, ``aux`` a smooth field mapped to [0, 1] (haemangioma nodules, HCC
    mosaic). The lesion's voxels are those of ``Anatomy.instances == lesion_id`` in the box.
    ``sampled_diameter_mm`` is the drawn size, ``target_diameter_mm`` that size raised to the grid's
    minimum; ``params`` holds the enhancement parameters (see ``_lesion_params``).
    """

    lesion_id: int
    subtype: str
    box: tuple[slice, slice, slice]
    rho: np.ndarray = field(repr=False)
    texture: np.ndarray = field(repr=False)
    aux: np.ndarray = field(repr=False)
    sampled_diameter_mm: float
    target_diameter_mm: float
    low_contrast: bool
    params: dict


@dataclass
class Anatomy:
    """Geometry and lesions of one case, independent of the scan conditions.

    Attributes:
        spacing: (x, y, z) voxel spacing in mm, SimpleITK order.
        tissues: uint8 tissue index map (z, y, x); names in :data:`TISSUES`.
        label: uint8 (z, y, x): 0 background, 1 liver (with intrahepatic vessels), 2 tumour.
        instances: uint16 (z, y, x): 0 or the lesion id 1..n.
        lesions: one dict per lesion with keys lesion_id, centroid_voxel (z, y, x), centroid_mm (x, y, z),
            volume_ml, diameter_mm (equivalent sphere of the voxels), label ("benign"/"malignant"),
            subtype, contrast_hu (see the module docstring).
        texture_low: unit-variance low-frequency field (z, y, x), float32.
        texture_mid: unit-variance mid-frequency field (z, y, x), float32.
        lesion_models: rendering models, one per lesion, in lesion-id order.
        meta: the drawn anatomical parameters (mm), for inspection.
    """

    spacing: tuple[float, float, float]
    tissues: np.ndarray = field(repr=False)
    label: np.ndarray = field(repr=False)
    instances: np.ndarray = field(repr=False)
    lesions: list[dict]
    texture_low: np.ndarray = field(repr=False)
    texture_mid: np.ndarray = field(repr=False)
    lesion_models: list[LesionModel] = field(default_factory=list, repr=False)
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# small helpers


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smooth_field(rng: np.random.Generator, coords: tuple[np.ndarray, np.ndarray, np.ndarray],
                  corr_mm: float | tuple[float, float, float]) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field on a rectilinear grid.

    A sum of Gaussian bumps on a lattice with random weights, evaluated separably (three small matrix
    products), so it costs far less than filtering a full-resolution noise volume.

    Args:
        rng: random generator.
        coords: 1D physical coordinates (mm) of the (z, y, x) grid lines.
        corr_mm: correlation length (twice the bump sigma), one value or one per axis.
    """
    corr = np.broadcast_to(np.asarray(corr_mm, dtype=np.float64), (3,))
    mats = []
    for c, L in zip(coords, corr):
        sigma = 0.5 * float(L)
        lo, hi = float(c.min()) - 2 * sigma, float(c.max()) + 2 * sigma
        n = max(2, int(math.ceil((hi - lo) / sigma)) + 1)
        centres = np.linspace(lo, hi, n)
        mats.append(np.exp(-0.5 * ((c[:, None] - centres[None, :]) / sigma) ** 2).astype(np.float32))
    coef = rng.standard_normal(tuple(m.shape[1] for m in mats), dtype=np.float32)
    # three plain 2D matrix products (batched small products are slow under BLAS threading)
    (nz, kz), (ny, ky), (nx, kx) = (m.shape for m in mats)
    f = (mats[0] @ coef.reshape(kz, ky * kx)).reshape(nz, ky, kx)
    f = (mats[1] @ f.transpose(1, 0, 2).reshape(ky, nz * kx)).reshape(ny, nz, kx).transpose(1, 0, 2)
    f = (np.ascontiguousarray(f).reshape(nz * ny, kx) @ mats[2].T).reshape(nz, ny, nx)
    f -= f.mean()
    f /= f.std() + 1e-6
    return f.astype(np.float32, copy=False)


def _ellipsoid_sd(X, Y, Z, centre, axes, yaw: float = 0.0) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipsoid, rotated by ``yaw`` (radians) about z."""
    dx, dy, dz = X - centre[0], Y - centre[1], Z - centre[2]
    if yaw:
        c, s = math.cos(yaw), math.sin(yaw)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    q = np.sqrt((dx / axes[0]) ** 2 + (dy / axes[1]) ** 2 + (dz / axes[2]) ** 2)
    return (q - 1.0) * min(axes)


def _smooth_union(fields: list[np.ndarray], k: float) -> np.ndarray:
    """Smooth minimum of signed distances (log-sum-exp with softness ``k`` mm)."""
    m = fields[0]
    for f in fields[1:]:
        m = np.minimum(m, f)
    acc = np.zeros_like(m)
    for f in fields:
        acc += np.exp(-(f - m) / k)
    return m - k * np.log(acc)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


_FACE = ndimage.generate_binary_structure(3, 1)
_FACE_XY = np.zeros((3, 3, 3), dtype=bool)
_FACE_XY[1] = ndimage.generate_binary_structure(2, 1)


def _share(mask: np.ndarray, region: np.ndarray, structure: np.ndarray) -> float:
    """Fraction of the voxels bordering ``mask`` (through ``structure``) that lie in ``region``."""
    shell = ndimage.binary_dilation(mask, structure) & ~mask
    return float(region[shell].mean()) if shell.any() else 0.0


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


@dataclass
class _Grid:
    """Voxel grid with physical coordinates: x, y relative to the body centre, z from the first slice."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # x, y, z
    xs: np.ndarray
    ys: np.ndarray
    zs: np.ndarray
    origin_offset: tuple[float, float]  # physical x, y (mm, from voxel 0) of the body centre

    @property
    def X(self) -> np.ndarray:
        return self.xs[None, None, :]

    @property
    def Y(self) -> np.ndarray:
        return self.ys[None, :, None]

    @property
    def Z(self) -> np.ndarray:
        return self.zs[:, None, None]

    @property
    def voxel_volume(self) -> float:
        return float(np.prod(self.spacing))

    def to_index(self, p: np.ndarray) -> np.ndarray:
        """Body coordinates (x, y, z) mm -> fractional voxel index (z, y, x)."""
        sx, sy, sz = self.spacing
        return np.array([p[2] / sz, (p[1] + self.origin_offset[1]) / sy, (p[0] + self.origin_offset[0]) / sx])

    def to_body(self, idx: np.ndarray) -> np.ndarray:
        """Voxel index (..., 3) as (z, y, x) -> body coordinates (..., 3) as (x, y, z) mm."""
        sx, sy, sz = self.spacing
        idx = np.asarray(idx, dtype=np.float64)
        return np.stack([idx[..., 2] * sx - self.origin_offset[0], idx[..., 1] * sy - self.origin_offset[1],
                         idx[..., 0] * sz], axis=-1)


# --------------------------------------------------------------------------------------------------
# anatomy


def _sample_grid(rng: np.random.Generator, size: int, meta: dict) -> _Grid:
    s = rng.uniform(0.7, 1.0) * 512.0 / size
    ratio = math.exp(rng.uniform(math.log(1.5), math.log(3.0)))
    sz = s * ratio
    liver_h = rng.uniform(140, 190)
    m_top, m_bot = rng.uniform(30, 80), rng.uniform(50, 160)
    extent = liver_h + m_top + m_bot
    nz = int(min(max(16, math.ceil(extent / sz)), max(16, size)))
    extra = nz * sz - extent
    m_bot += extra / 2
    ox, oy = rng.uniform(-10, 10), rng.uniform(-15, 5)
    fov = size * s
    cx, cy = (size - 1) / 2 * s + ox, (size - 1) / 2 * s + oy
    xs = (np.arange(size) * s - cx).astype(np.float32)
    ys = (np.arange(size) * s - cy).astype(np.float32)
    zs = (np.arange(nz) * sz).astype(np.float32)
    meta.update(fov_mm=fov, slice_ratio=ratio, liver_bottom_mm=m_bot, liver_top_mm=m_bot + liver_h,
                liver_height_mm=liver_h)
    return _Grid(shape=(nz, size, size), spacing=(s, s, sz), xs=xs, ys=ys, zs=zs, origin_offset=(cx, cy))


def _fourier(theta: np.ndarray, coef: np.ndarray, phase: np.ndarray) -> np.ndarray:
    out = np.zeros_like(theta)
    for k, (c, p) in enumerate(zip(coef, phase), start=2):
        out += c * np.cos(k * theta + p)
    return out


def _segment_mask(grid: _Grid, a: np.ndarray, b: np.ndarray, r0: float, r1: float, r_floor: float,
                  out: np.ndarray, value: int | bool = True) -> None:
    """Rasterise a tapered capsule from a to b (body mm) into ``out`` (in place)."""
    sx, sy, sz = grid.spacing
    rmax = max(r0, r1, r_floor)
    lo = np.minimum(a, b) - rmax
    hi = np.maximum(a, b) + rmax
    ilo = np.floor(grid.to_index(lo)).astype(int)
    ihi = np.ceil(grid.to_index(hi)).astype(int) + 1
    ilo = np.maximum(ilo, 0)
    ihi = np.minimum(ihi, grid.shape)
    if np.any(ihi <= ilo):
        return
    x = grid.xs[ilo[2]:ihi[2]][None, None, :]
    y = grid.ys[ilo[1]:ihi[1]][None, :, None]
    z = grid.zs[ilo[0]:ihi[0]][:, None, None]
    d = b - a
    L2 = float(d @ d) + 1e-9
    t = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1] + (z - a[2]) * d[2]) / L2, 0.0, 1.0)
    dist2 = (x - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2 + (z - a[2] - t * d[2]) ** 2
    r = np.maximum(r0 + (r1 - r0) * t, r_floor)
    hit = dist2 <= r * r
    sl = out[ilo[0]:ihi[0], ilo[1]:ihi[1], ilo[2]:ihi[2]]
    if out.dtype == bool:
        sl |= hit
    else:
        sl[hit] = value


def _grow_tree(rng: np.random.Generator, start: np.ndarray, targets: list[np.ndarray], r0: float,
               pts: np.ndarray, depth: int, r_min: float) -> list[tuple]:
    """Branching venous tree: segments (a, b, r_a, r_b) grown from ``start`` towards liver points.

    Each primary branch runs to its target; every branch then splits in two, each child heading for a
    random liver point (``pts``, body mm) ahead of it within reach, shorter and thinner (Murray-like).
    """
    segs = []
    stack = [(start, t, r0, depth) for t in targets]
    while stack:
        a, b, r, dep = stack.pop()
        L = float(np.linalg.norm(b - a))
        if L < 1e-3:
            continue
        r_end = r * 0.85
        # a gently curved branch: three pieces through two jittered intermediate points
        pts3 = [a]
        for f in (1 / 3, 2 / 3):
            pts3.append(a + f * (b - a) + rng.normal(0.0, 0.06 * L, 3))
        pts3.append(b)
        for k in range(3):
            segs.append((pts3[k], pts3[k + 1], r + (r_end - r) * k / 3, r + (r_end - r) * (k + 1) / 3))
        if dep == 0 or r_end * 0.75 < r_min:
            continue
        d = (b - a) / L
        v = pts - b
        dist = np.linalg.norm(v, axis=1) + 1e-9
        cosang = (v @ d) / dist
        first = None
        for _ in range(2):
            Lc = max(L * rng.uniform(0.65, 0.95), 12.0)
            ok = (dist > 0.5 * Lc) & (dist < 1.3 * Lc) & (cosang > 0.35)
            if first is not None:
                ok &= ((v @ first) / dist) < 0.8
            cand = np.flatnonzero(ok)
            if cand.size == 0:
                continue
            p = pts[cand[rng.integers(cand.size)]]
            first = (p - b) / np.linalg.norm(p - b)
            stack.append((b, p, r_end * rng.uniform(0.72, 0.86), dep - 1))
    return segs


@dataclass
class _Body:
    """State shared by the painting stages of :func:`_build_anatomy` (all lengths in mm)."""

    grid: _Grid
    meta: dict
    tissues: np.ndarray  # uint8 (z, y, x)
    body: np.ndarray  # inside the skin
    d_skin: np.ndarray  # in-plane depth below the skin
    cavity: np.ndarray  # inside the muscle wall
    t_fat: np.ndarray  # (y, x) subcutaneous fat thickness
    t_mus: np.ndarray  # (y, x) muscle wall thickness
    a_in: float  # inner (cavity) semi-axes, left-right and antero-posterior
    b_in: float
    below: np.ndarray | None = None  # abdominal cavity under the diaphragm
    z_d: np.ndarray | None = None  # (1, y, x) height of the diaphragm
    liver_region: np.ndarray | None = None
    organ_warp: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # smooth displacement fields
    spine: dict = field(default_factory=dict)
    landmarks: dict = field(default_factory=dict)
    gut: np.ndarray | None = None  # bowel loops' region as first painted (stomach excluded)
    stomach: np.ndarray | None = None

    def paint(self, mask: np.ndarray, tissue: str, *, cut_liver: bool = True) -> None:
        """Paint ``tissue`` over ``mask``; unless told otherwise the liver loses those voxels."""
        self.tissues[mask] = TISSUE_INDEX[tissue]
        if cut_liver and self.liver_region is not None:
            self.liver_region &= ~mask


def _paint_body_wall(rng: np.random.Generator, grid: _Grid, meta: dict) -> _Body:
    """Body outline (super-ellipse, smooth irregularity, flat back), subcutaneous fat, muscle wall."""
    X, Y, Z = grid.X, grid.Y, grid.Z
    nz, ny, nx = grid.shape
    s = grid.spacing[0]
    half_fov = 0.5 * nx * s
    zmid = 0.5 * (meta["liver_bottom_mm"] + meta["liver_top_mm"])
    A, B = rng.uniform(150, 185), rng.uniform(105, 135)
    off_x = abs(grid.origin_offset[0] - (nx - 1) / 2 * s)
    off_y = abs(grid.origin_offset[1] - (ny - 1) / 2 * s)
    A = min(A, half_fov - off_x - 3 * s)
    B = min(B, 0.8 * A, half_fov - off_y - 3 * s)
    p_exp = rng.uniform(2.0, 2.6)
    kz = rng.uniform(0.0, 0.08)
    back = rng.uniform(0.84, 0.93)
    decay = np.array([0.01, 0.012, 0.012, 0.008, 0.006])  # harmonics 2..6: bumps, not a tilted ellipse
    c_lo, c_hi = rng.normal(0, 1, 5) * decay, rng.normal(0, 1, 5) * decay
    ph = rng.uniform(0, 2 * np.pi, 5)
    theta2 = np.arctan2(Y[0] / B, X[0] / A)  # (ny, nx)
    wz = np.clip((grid.zs - grid.zs.min()) / max(float(np.ptp(grid.zs)), 1.0), 0, 1)[:, None, None]
    eps = (1 - wz) * _fourier(theta2, c_lo, ph) + wz * _fourier(theta2, c_hi, ph)  # varies slowly along z
    scale_z = 1.0 - kz * ((Z - zmid) / 200.0) ** 2
    r_body = (np.abs(X / (A * scale_z)) ** p_exp + np.abs(Y / (B * scale_z)) ** p_exp) ** (1.0 / p_exp)
    body = np.broadcast_to((r_body < 1.0 + eps) & (Y < back * B), grid.shape).copy()
    d_skin = np.empty(grid.shape, dtype=np.float32)
    for k in range(nz):
        d_skin[k] = ndimage.distance_transform_edt(body[k], sampling=(s, s))

    t_fat0, t_mus0 = rng.uniform(8, 35), rng.uniform(7, 14)
    t_fat = np.maximum(t_fat0 * (1 + 0.35 * _fourier(theta2, rng.normal(0, 0.5, 3), rng.uniform(0, 6.3, 3))), 4.0)
    t_mus = t_mus0 * (1 + 0.3 * np.clip(Y[0] / B, 0, 1)) * np.ones_like(t_fat)
    wall_in = (t_fat + t_mus)[None]
    tissues = np.zeros(grid.shape, dtype=np.uint8)
    tissues[body] = TISSUE_INDEX["fat"]
    tissues[body & (d_skin >= t_fat[None]) & (d_skin < wall_in)] = TISSUE_INDEX["muscle"]
    meta.update(body_semi_axes_mm=(A, B), fat_mm=t_fat0, muscle_wall_mm=t_mus0)
    b = _Body(grid=grid, meta=meta, tissues=tissues, body=body, d_skin=d_skin, cavity=body & (d_skin >= wall_in),
              t_fat=t_fat, t_mus=t_mus, a_in=A - t_fat0 - t_mus0, b_in=B - t_fat0 - t_mus0)
    # vertebral column geometry, needed to place muscles, kidneys and vessels
    b.spine = {"y": back * B - rng.uniform(75, 95), "rx": rng.uniform(20, 25), "ry": rng.uniform(16, 20),
               "level_h": rng.uniform(30, 36), "disc_h": rng.uniform(7, 10)}
    b.spine["phase"] = rng.uniform(0, b.spine["level_h"])
    return b


def _paint_chest_and_bowel(rng: np.random.Generator, b: _Body) -> None:
    """Diaphragm (two domes, the right higher) with lungs and heart above; bowel, stomach, muscles below."""
    g, meta = b.grid, b.meta
    X, Y, Z = g.X, g.Y, g.Z
    zb, zt, H = meta["liver_bottom_mm"], meta["liver_top_mm"], meta["liver_height_mm"]
    a_in, b_in = b.a_in, b.b_in
    h_r = rng.uniform(45, 70)
    h_l = h_r - rng.uniform(10, 25)
    z_base = zt + rng.uniform(2, 8) - h_r
    wx, wy = 0.45 * a_in, 0.65 * b_in
    g_r = np.exp(-0.5 * (((X + 0.45 * a_in) / wx) ** 2 + (Y / wy) ** 2))
    g_l = np.exp(-0.5 * (((X - 0.45 * a_in) / wx) ** 2 + (Y / wy) ** 2))
    # the posterior recesses reach lower
    b.z_d = z_base + np.maximum(h_r * g_r, h_l * g_l) - 20.0 * np.clip(Y / b_in, 0, 1)  # (1, ny, nx)
    diaph = rng.uniform(4, 6)
    b.below = b.cavity & (Z < b.z_d - diaph)
    b.paint(b.cavity & (Z >= b.z_d), "lung")
    b.paint(b.cavity & (Z >= b.z_d - diaph) & (Z < b.z_d), "muscle")

    # visceral fat with bowel loops and gas
    coords = (g.zs, g.ys, g.xs)
    bowel_f = _smooth_field(rng, coords, rng.uniform(25, 40))
    gas_f = _smooth_field(rng, coords, 15.0)
    thr = float(special.ndtri(1 - rng.uniform(0.35, 0.55)))
    bowel = b.below & (bowel_f > thr)
    b.paint(bowel, "bowel")
    b.paint(bowel & (gas_f > 1.4), "gas")
    b.gut = bowel.copy()  # loops, wall and contents are drawn once the other organs have taken their place

    # paraspinal muscles (erector spinae) and psoas
    Yv, rv_y = b.spine["y"], b.spine["ry"]
    for side in (-1, 1):
        cxm, cym = side * rng.uniform(30, 40), Yv + rv_y + rng.uniform(25, 35)
        ax, ay = rng.uniform(25, 35), rng.uniform(18, 26)
        m2 = ((X[0] - cxm) / ax) ** 2 + ((Y[0] - cym) / ay) ** 2 < 1.0
        b.paint(m2[None] & b.body & (b.d_skin >= b.t_fat[None]), "muscle")
        psoas_top = zb + rng.uniform(0.1, 0.35) * H
        cxp = side * rng.uniform(35, 48)
        rp = 6.0 + 20.0 * np.clip((psoas_top - Z) / 100.0, 0, 1)  # (nz, 1, 1): thickens caudally
        ps = ((X - cxp) / rp) ** 2 + ((Y - (Yv - 3)) / (0.8 * rp)) ** 2 < 1.0
        b.paint(ps & b.cavity & (Z < psoas_top), "muscle")

    # heart on the central diaphragm (only its lower part is in the volume)
    xh, yh = rng.uniform(10, 35), -0.25 * b_in
    ih = np.clip(np.round(g.to_index(np.array([xh, yh, 0.0]))).astype(int), 0, np.array(g.shape) - 1)
    zh = float(b.z_d[0, ih[1], ih[2]])
    heart_ax = (rng.uniform(55, 70), rng.uniform(45, 55), rng.uniform(45, 55))
    heart = _ellipsoid_sd(X, Y, Z, (xh, yh, zh + 0.85 * heart_ax[2]), heart_ax) < 0
    b.paint(heart & b.cavity & (Z >= b.z_d), "heart")

    # stomach (left upper quadrant) with an air-fluid level (supine: air anterior, small y)
    st_c = (rng.uniform(40, 70), -rng.uniform(0.05, 0.3) * b_in, zb + rng.uniform(0.45, 0.7) * H)
    st_ax = (rng.uniform(35, 50), rng.uniform(30, 45), rng.uniform(40, 60))
    stomach = (_ellipsoid_sd(X, Y, Z, st_c, st_ax) + 6 * bowel_f < 0) & b.below
    b.paint(stomach, "bowel")
    b.paint(stomach & (Y < st_c[1] - st_ax[1] * rng.uniform(0.3, 0.7)), "gas")
    b.gut &= ~stomach
    b.stomach = stomach


def _structure_bowel(rng: np.random.Generator, b: _Body) -> None:
    """Turn the bowel region left after the organs are painted into loops with walls and contents.

    The region is split into round loops (seeds 9-16 mm in radius, a fifth of them colon-like, 16-25 mm),
    separated by fat where a voxel lies outside its seed's radius or on the border between two seeds.
    Each loop keeps a 2.5 mm enhancing wall ("bowel", at least one voxel thick in-plane; along z the thicker
    slices can let a lumen touch the fat above or below it) around a lumen of fluid
    (half of the loops; a third of those with an air-fluid level), faeces with gas bubbles (three in
    ten) or gas. The stomach keeps its gas cap and gets a 3 mm wall around fluid. Without this the bowel
    was solid soft tissue of 35-60 HU, which passes for liver in the arterial phase.
    """
    g = b.grid
    sx, sy, sz = g.spacing
    t = b.tissues
    fat, wall_t, fluid, feces, gas = (TISSUE_INDEX[n] for n in ("fat", "bowel", "bowel_fluid", "feces", "gas"))
    wall_mm = max(2.5, sx, sy)  # at least a voxel: contents never touch fat in-plane
    gut = b.gut & ((t == wall_t) | (t == gas))
    if gut.any():
        idx = np.argwhere(gut)
        pts = idx * np.array([sz, sy, sx])
        volume = len(idx) * g.voxel_volume
        colon = rng.random(10_000) < 0.2
        radius = np.where(colon, rng.uniform(16, 25, 10_000), rng.uniform(9, 16, 10_000))
        n = int(np.clip(round(2.5 * volume / (4.0 / 3.0 * math.pi * float(np.mean(radius ** 3)))), 1, 10_000))
        seeds = pts[rng.choice(len(pts), size=min(n, len(pts)), replace=False)]
        radius = radius[:len(seeds)]
        kind = rng.choice(3, size=len(seeds), p=(0.5, 0.3, 0.2))  # fluid, faeces, gas
        level = rng.random(len(seeds)) < 1.0 / 3.0
        d, i = cKDTree(seeds).query(pts, k=min(2, len(seeds)))
        d = d.reshape(len(pts), -1)
        i = i.reshape(len(pts), -1)
        d1, i1 = d[:, 0], i[:, 0]
        border = 0.5 * (d[:, 1] - d1) - 0.75 if d.shape[1] > 1 else np.full(len(pts), np.inf)
        edge = _inner_distance(gut, (sz, sy, sx))[gut]
        depth = np.minimum(np.minimum(radius[i1] - d1, border), edge)
        zz, yy, xx = idx.T
        t[zz, yy, xx] = np.where(depth <= 0, fat, wall_t)
        lumen = depth > wall_mm
        k = kind[i1]
        content = np.where(k == 0, fluid, np.where(k == 1, feces, gas))
        # supine: the gas of a fluid loop with a level rises anteriorly (small y)
        content[(k == 0) & level[i1] & (pts[:, 1] < seeds[i1, 1] - 0.3 * radius[i1])] = gas
        bubbles = _smooth_field(rng, (g.zs, g.ys, g.xs), 6.0)[zz, yy, xx] > 1.0
        content[(k == 1) & bubbles] = gas
        t[zz[lumen], yy[lumen], xx[lumen]] = content[lumen]
    stomach = b.stomach & (t == wall_t)
    if stomach.any():
        inner = _inner_distance(b.stomach & ((t == wall_t) | (t == gas)), (sz, sy, sx))
        t[stomach & (inner > max(3.0, sx, sy))] = fluid


def _inner_distance(mask: np.ndarray, sampling: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) from each voxel of ``mask`` to the nearest voxel outside it, 0 outside; computed on the
    mask's bounding box grown by one voxel (the same result as on the whole grid, for a fraction of the cost)."""
    out = np.zeros(mask.shape, dtype=np.float64)
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return out
    box = tuple(slice(max(lo - 1, 0), hi + 2) for lo, hi in zip(idx.min(0), idx.max(0)))
    out[box] = ndimage.distance_transform_edt(mask[box], sampling=sampling)
    return out


def _paint_spleen_and_liver(rng: np.random.Generator, b: _Body) -> None:
    """Spleen (crescent) and liver (smooth union of ellipsoids), both warped by one smooth field."""
    g, meta = b.grid, b.meta
    X, Y, Z = g.X, g.Y, g.Z
    zb, H = meta["liver_bottom_mm"], meta["liver_height_mm"]
    a_in, b_in = b.a_in, b.b_in
    corr = rng.uniform(50, 90)
    Dx, Dy, Dz = (_smooth_field(rng, (g.zs, g.ys, g.xs), corr) for _ in range(3))
    b.organ_warp = (Dx, Dy, Dz)

    amp_s = rng.uniform(3, 7)
    sp_c = (a_in - rng.uniform(25, 40), rng.uniform(0.2, 0.4) * b_in, zb + rng.uniform(0.55, 0.75) * H)
    sp_ax = (rng.uniform(22, 32), rng.uniform(45, 60), rng.uniform(40, 55))
    yaw_s = rng.uniform(-0.7, -0.3)
    Xs, Ys, Zs = X + amp_s * Dx, Y + amp_s * Dy, Z + amp_s * Dz
    outer = _ellipsoid_sd(Xs, Ys, Zs, sp_c, sp_ax, yaw_s)
    inner = _ellipsoid_sd(Xs, Ys, Zs, (sp_c[0] - 0.9 * sp_ax[0], sp_c[1] - 0.3 * sp_ax[1], sp_c[2]),
                          (sp_ax[0] * 0.8, sp_ax[1] * 0.7, sp_ax[2] * 1.2), yaw_s)
    b.paint((np.maximum(outer, -inner) < 0) & b.below, "spleen")
    b.landmarks["splenic_hilum"] = np.array([sp_c[0] - sp_ax[0], sp_c[1], sp_c[2] - 0.2 * sp_ax[2]])

    # liver: large right lobe with an inferior tip, medial segment, thin left lateral lobe across the
    # midline, caudate lobe by the vena cava; warped, then moulded by the wall and the diaphragm
    amp = rng.uniform(6, 12)
    Xl, Yl, Zl = X + amp * Dx, Y + amp * Dy, Z + amp * Dz
    yaw = rng.uniform(-0.15, 0.15)
    c_, s_ = math.cos(yaw), math.sin(yaw)
    Xl, Yl = c_ * Xl + s_ * Yl, -s_ * Xl + c_ * Yl
    rx, ry, rz = rng.uniform(0.42, 0.55) * a_in, rng.uniform(0.62, 0.8) * b_in, rng.uniform(0.42, 0.5) * H
    right_c = (-a_in + rx * rng.uniform(0.75, 0.95), rng.uniform(-0.1, 0.12) * b_in, zb + rng.uniform(0.48, 0.56) * H)
    Yv, rv_y = b.spine["y"], b.spine["ry"]
    U = rng.uniform
    blobs = [
        _ellipsoid_sd(Xl, Yl, Zl, right_c, (rx, ry, rz)),
        _ellipsoid_sd(Xl, Yl, Zl, (right_c[0] - U(0, 15), right_c[1] + U(-10, 20), zb + U(0.15, 0.25) * H),
                      (U(0.55, 0.8) * rx, U(0.45, 0.7) * ry, U(0.18, 0.28) * H)),
        _ellipsoid_sd(Xl, Yl, Zl, (U(-25, -5), -U(0.25, 0.45) * b_in, zb + U(0.45, 0.6) * H),
                      (U(35, 50), U(30, 42), U(0.22, 0.32) * H)),
        _ellipsoid_sd(Xl, Yl, Zl, (U(15, 45), -U(0.35, 0.55) * b_in, zb + U(0.6, 0.75) * H),
                      (U(45, 70), U(14, 26), U(0.16, 0.26) * H), U(-0.45, -0.1)),
        _ellipsoid_sd(Xl, Yl, Zl, (U(-20, -5), Yv - rv_y - U(15, 30), zb + U(0.55, 0.7) * H),
                      (U(15, 22), U(15, 22), U(20, 30))),
    ]
    liver_sd = _smooth_union(blobs, rng.uniform(6, 12))
    wall_in = (b.t_fat + b.t_mus)[None]
    liver = (liver_sd < 0) & b.below & (b.d_skin >= wall_in + 2.0)
    b.paint(liver, "liver")
    b.liver_region = liver.copy()
    b.landmarks.update(right_lobe=np.array(right_c), right_lobe_rx=rx)


def _paint_gallbladder_and_kidneys(rng: np.random.Generator, b: _Body) -> None:
    """Gallbladder in its fossa; kidneys (cortex, medulla, sinus fat) in perirenal fat."""
    g, meta = b.grid, b.meta
    X, Y, Z = g.X, g.Y, g.Z
    zb, H = meta["liver_bottom_mm"], meta["liver_height_mm"]
    if rng.random() < 0.8:
        rc, rx = b.landmarks["right_lobe"], b.landmarks["right_lobe_rx"]
        gb_c = (rc[0] + rx * rng.uniform(0.35, 0.7), -rng.uniform(0.1, 0.35) * b.b_in, zb + rng.uniform(0.15, 0.35) * H)
        gb_ax = (rng.uniform(13, 20), rng.uniform(13, 20), rng.uniform(30, 42))
        b.paint((_ellipsoid_sd(X, Y, Z, gb_c, gb_ax, rng.uniform(-0.5, 0.5)) < 0) & b.below, "gallbladder")

    Dx = b.organ_warp[0]
    xk = rng.uniform(55, 75)
    zk_r = zb + rng.uniform(-0.05, 0.2) * H
    for side, zk in ((-1, zk_r), (1, zk_r + rng.uniform(15, 25))):
        kc = (side * xk, b.spine["y"] - rng.uniform(-5, 10), zk)
        kax = (rng.uniform(22, 28), rng.uniform(28, 34), rng.uniform(45, 58))
        yaw_k = -side * rng.uniform(0.2, 0.5)
        dx, dy = X - kc[0], Y - kc[1]
        c_, s_ = math.cos(yaw_k), math.sin(yaw_k)
        u, v = c_ * dx + s_ * dy, -s_ * dx + c_ * dy
        q = np.sqrt((u / kax[0]) ** 2 + (v / kax[1]) ** 2 + ((Z - kc[2]) / kax[2]) ** 2) + 0.06 * Dx
        kid = (q < 1.0) & b.below
        b.paint((q < rng.uniform(1.15, 1.35)) & b.below & ~kid, "fat")  # perirenal fat keeps the liver off
        b.paint(kid, "kidney_cortex")
        b.paint(kid & (q < 1.0 - rng.uniform(5, 8) / min(kax)), "kidney_medulla")
        b.paint(kid & (q < 0.6) & (-side * u > 0.2 * kax[0]), "fat")  # renal sinus, at the medial hilum


def _paint_vessels(rng: np.random.Generator, b: _Body) -> None:
    """Portal and hepatic venous trees inside the liver, splenic vein, vena cava, aorta."""
    g, meta = b.grid, b.meta
    X, Y, Z = g.X, g.Y, g.Z
    zb, zt, H = meta["liver_bottom_mm"], meta["liver_top_mm"], meta["liver_height_mm"]
    s = g.spacing[0]
    Yv, rv_y = b.spine["y"], b.spine["ry"]
    liver_idx = np.argwhere(b.liver_region)
    pts = g.to_body(liver_idx[rng.choice(len(liver_idx), size=min(4000, len(liver_idx)), replace=False)])
    cen = pts.mean(axis=0)
    # vessels thinner than a third of a voxel are not drawn; the others are at least ~a voxel wide
    r_floor, r_draw = 0.55 * s, 0.3 * s
    U = rng.uniform

    def nearest(target):
        return pts[np.argmin(np.linalg.norm(pts - np.asarray(target), axis=1))]

    def draw(segs, out):
        for a, e, ra, re in segs:
            if max(ra, re) >= r_draw:
                _segment_mask(g, a, e, ra, re, r_floor, out)

    hilum = nearest((cen[0] + U(5, 20), cen[1] - U(0, 15), zb + U(0.3, 0.45) * H))
    pv_t = [nearest((cen[0] - U(40, 60), cen[1] + U(10, 30), hilum[2] + U(-20, 10))),  # right posterior
            nearest((cen[0] - U(30, 50), cen[1] - U(10, 30), hilum[2] + U(10, 30))),  # right anterior
            nearest((cen[0] + U(60, 90), cen[1] - U(20, 40), hilum[2] + U(10, 30)))]  # left
    xa, ya = U(8, 25), Yv - rv_y - U(12, 18)
    confluence = np.array([U(-5, 10), ya - U(20, 35), zb + U(0.05, 0.2) * H])
    r_pv = U(6, 8)
    pv_segs = [(confluence, hilum, r_pv, r_pv)] + _grow_tree(rng, hilum, pv_t, r_pv * 0.8, pts, 5, r_draw)
    pv_segs.append((confluence, b.landmarks["splenic_hilum"], U(4, 5.5), U(3.5, 4.5)))  # splenic vein

    xi, yi = -U(18, 30), Yv - rv_y - U(5, 15)
    ivc_ax = (U(11, 15), U(7, 10))
    ivc_fwd = U(8, 18)
    hv_root = np.array([xi, yi - ivc_fwd, zt - U(10, 25)])
    hv_t = [nearest((cen[0] - U(30, 50), cen[1] + U(0, 25), zb + U(0.2, 0.4) * H)),  # right
            nearest((cen[0] + U(0, 20), cen[1] - U(20, 40), zb + U(0.2, 0.4) * H)),  # middle
            nearest((cen[0] + U(40, 70), cen[1] - U(10, 30), zb + U(0.5, 0.7) * H))]  # left
    hv_segs = _grow_tree(rng, hv_root, hv_t, U(5, 7), pts, 5, r_draw)
    meta.update(portal_segments=len(pv_segs), hepatic_segments=len(hv_segs))
    vess_pv = np.zeros(g.shape, dtype=bool)
    vess_hv = np.zeros(g.shape, dtype=bool)
    draw(pv_segs, vess_pv)
    draw(hv_segs, vess_hv)
    # intrahepatic vessels keep label 1 (liver region); the extrahepatic portal vein is background
    b.paint(vess_hv & b.liver_region, "hepatic_vein", cut_liver=False)
    b.paint(vess_pv & (b.liver_region | b.cavity), "portal_vein", cut_liver=False)

    # vena cava, curving anteriorly into the liver near its top; aorta in front of the spine
    fwd = ivc_fwd * _smoothstep(zt - 0.45 * H, zt - 0.15 * H, Z)
    b.paint((((X - xi) / ivc_ax[0]) ** 2 + ((Y - (yi - fwd)) / ivc_ax[1]) ** 2 < 1.0) & b.cavity, "ivc")
    ra, tilt = U(9, 13), U(-0.05, 0.05)
    zmid = 0.5 * (zb + zt)
    b.paint((((X - xa - tilt * (Z - zmid)) / ra) ** 2 + ((Y - ya) / ra) ** 2 < 1.0) & b.cavity, "aorta")


def _paint_bones(rng: np.random.Generator, b: _Body) -> None:
    """Vertebral column (body with cortex, discs, canal, arch and processes) and ribs."""
    g, meta = b.grid, b.meta
    X, Y, Z = g.X, g.Y, g.Z
    s = g.spacing[0]
    sp = b.spine
    Yv, rv_x, rv_y = sp["y"], sp["rx"], sp["ry"]
    q_v = np.sqrt((X[0] / rv_x) ** 2 + ((Y[0] - Yv) / rv_y) ** 2)  # (ny, nx)
    # cortex: the outer 2.5 mm, at least the outer ring of voxels; the arch and the ribs are thin bone
    # (cortex and marrow mixed at these voxel sizes)
    vb2 = q_v < 1.0
    shell2 = vb2 & ((q_v > 1 - 2.5 / min(rv_x, rv_y)) | ~ndimage.binary_erosion(vb2))
    level = (g.zs - sp["phase"]) % sp["level_h"]  # (nz,) position within a vertebral level
    disc = (level < sp["disc_h"])[:, None, None]
    vb = vb2[None] & b.body
    b.paint(vb & ~disc, "cancellous")
    b.paint(vb & ~disc & shell2[None], "cortical")
    b.paint(vb & disc, "disc")
    yc = Yv + rv_y + 9.0
    canal2 = (X[0] / 8.0) ** 2 + ((Y[0] - yc) / 8.0) ** 2 < 1.0
    arch2 = ((X[0] / 13.0) ** 2 + ((Y[0] - yc) / 13.0) ** 2 < 1.0) & ~canal2
    spinous2 = (np.abs(X[0]) < 4.0 + 0.5 * s) & (Y[0] > yc) & (Y[0] < yc + rng.uniform(30, 40))
    tproc_z = (np.abs(level - 0.6 * sp["level_h"]) < 0.15 * sp["level_h"])[:, None, None]
    tproc2 = (np.abs(Y[0] - (yc - 4)) < 3.0 + 0.5 * s) & (np.abs(X[0]) < rng.uniform(28, 38))
    post = (((arch2 | spinous2)[None] & ~disc) | (tproc2[None] & tproc_z)) & b.body & ~vb
    b.paint(post, "thin_bone")
    b.paint(canal2[None] & b.body, "csf")
    spine = vb | post | (canal2[None] & b.body)

    # ribs: oblique bands in the wall of the upper abdomen, descending anteriorly
    zb, H = meta["liver_bottom_mm"], meta["liver_height_mm"]
    period, rib_h = rng.uniform(32, 40), rng.uniform(9, 12)
    arc = np.abs(np.arctan2(X[0], Y[0])) * 0.5 * (b.a_in + b.b_in)  # mm along the wall from the back
    rib_in = b.t_fat + 0.3 * b.t_mus
    rib_zone = (b.d_skin >= rib_in[None]) & (b.d_skin < rib_in[None] + rng.uniform(7, 10)) & b.body
    z_costal = zb + H * (0.3 + 0.45 * np.clip(-Y[0] / b.b_in, 0, 1))  # costal margin rises anteriorly
    band = ((Z + 0.5 * arc[None] - rng.uniform(0, period)) % period) < rib_h
    midline = (np.abs(X[0]) < 30) | ((np.abs(X[0]) < 35) & (Y[0] < 0))  # spine; gap below the sternum
    b.paint(rib_zone & band & (Z > z_costal[None]) & ~midline[None] & ~spine, "thin_bone")
    meta["spine_y_mm"] = Yv


def _build_anatomy(rng: np.random.Generator, grid: _Grid, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """Tissue map and liver region (label 1: parenchyma and intrahepatic vessels) of one body."""
    b = _paint_body_wall(rng, grid, meta)
    _paint_chest_and_bowel(rng, b)
    _paint_spleen_and_liver(rng, b)
    _paint_gallbladder_and_kidneys(rng, b)
    _paint_vessels(rng, b)
    _paint_bones(rng, b)
    # from a generator jumped off the anatomy's (which it leaves as it is), so that every other draw is that
    # of the phantoms made before the bowel had loops
    _structure_bowel(np.random.Generator(rng.bit_generator.jumped()), b)
    # the liver is one connected piece; fragments cut off by other organs become fat
    main = _largest_component(b.liver_region)
    b.tissues[b.liver_region & ~main] = TISSUE_INDEX["fat"]
    meta["liver_volume_ml"] = float(main.sum()) * grid.voxel_volume / 1000.0
    return b.tissues, main


# --------------------------------------------------------------------------------------------------
# lesions


def _draw_lesion_specs(rng: np.random.Generator) -> list[tuple[str, float]]:
    """Subtype and drawn equivalent diameter (mm) of each lesion of a case."""
    if rng.random() < 0.2:
        return []
    n = int(rng.choice(np.arange(1, 7), p=[0.28, 0.22, 0.17, 0.13, 0.11, 0.09]))
    sub_p = np.array([0.3, 0.2, 0.3, 0.2])  # metastasis, hcc, cyst, haemangioma: 50% malignant
    dominant = SUBTYPES[int(rng.choice(4, p=sub_p))]
    specs = []
    for _ in range(n):
        sub = dominant if rng.random() < 0.6 else SUBTYPES[int(rng.choice(4, p=sub_p))]
        # density ~ d^-1.5 on [6, 50] mm (heavier towards small than log-uniform): median ~13 mm,
        # ~70% under 20 mm, ~15% over 30 mm
        lo, hi = 6.0 ** -0.5, 50.0 ** -0.5
        d = (lo - rng.random() * (lo - hi)) ** -2
        specs.append((sub, d))
    return specs


def _lesion_params(rng: np.random.Generator, subtype: str, d_mm: float, voxel_mm: float) -> tuple[dict, bool]:
    """Enhancement parameters of one lesion (see :func:`_lesion_hu`). Returns (params, low_contrast).

    ``voxel_mm`` (the geometric-mean voxel size) sets the partial-volume share (``*_pv``) of the thin
    peripheral compartments (rim, capsule, infiltrative margin) in the outer voxel layer: their
    thickness in mm over the voxel size, at most 1.
    """
    R = d_mm / 2
    E_l = {p: _NOMINAL_LIVER[p] - _NOMINAL_LIVER_NATIVE for p in PHASES}
    E_b = _NOMINAL_BLOOD
    low = subtype in ("metastasis", "hcc") and rng.random() < 0.4

    def pv(thickness_mm: float) -> float:
        return min(1.0, thickness_mm / voxel_mm)

    if subtype == "cyst":
        dense = rng.random() < 0.2
        return {"fluid_hu": rng.uniform(20, 38) if dense else rng.uniform(0, 20), "tex": rng.uniform(1.5, 3.0)}, False
    if subtype == "metastasis":
        dN = -rng.uniform(5, 15)
        target = -rng.uniform(10, 20) if low else -rng.uniform(20, 40)
        a_ratio = np.array([rng.uniform(0.6, 1.1), 1.0, rng.uniform(0.9, 1.2)])  # arterial, portal, delayed
        a_p = float(np.clip(1 + (target - dN) / E_l["portal"], 0.0, 1.2))  # refined by _calibrate_lesion
        hyper = rng.random() < 0.15  # hypervascular: strong arterial rim, looks like HCC in that phase
        rim_b = np.array([rng.uniform(0.1, 0.2) if hyper else rng.uniform(0.02, 0.08), rng.uniform(0.0, 0.05), 0.0])
        rim_w, margin = rng.uniform(0.15, 0.3), rng.uniform(0.15, 0.35)
        p = {"dN": dN, "a": a_p * a_ratio, "a_ratio": a_ratio, "targets": {"portal": target},
             "rim_w": rim_w, "rim_pv": pv(rim_w * R), "rim_a": rng.uniform(0.2, 0.6), "rim_b": rim_b,
             "necrotic": (d_mm > 25 and rng.random() < 0.7) or (d_mm > 15 and rng.random() < 0.3),
             "nec_r": rng.uniform(0.35, 0.6), "nec_hu": rng.uniform(10, 30),
             "margin": margin, "margin_pv": pv(margin * R), "margin_w": rng.uniform(0.3, 0.6),
             "tex": rng.uniform(4, 10), "cystlike": False, "cyst_hu": rng.uniform(20, 40)}
        if not low and d_mm < 18 and rng.random() < 0.3:  # small cystic metastasis: near-fluid, faint rim
            p.update(cystlike=True, a=np.full(3, rng.uniform(0.0, 0.15)), rim_a=rng.uniform(0.0, 0.15),
                     rim_b=np.zeros(3), margin_w=0.0, tex=rng.uniform(2, 4), necrotic=False, targets={})
        return p, low
    if subtype == "hcc":
        dN = rng.uniform(-10, 2)
        t_art = rng.uniform(10, 20) if low else rng.uniform(20, 60)
        t_por = -rng.uniform(10, 20) if low else -rng.uniform(20, 40)
        t_del = t_por * rng.uniform(1.0, 1.4)
        a_art = rng.uniform(0.3, 1.0)
        b_art = max(0.0, (t_art - dN - (a_art - 1) * E_l["arterial"]) / E_b["arterial"])
        a = np.array([a_art, 1 + (t_por - dN) / E_l["portal"], 1 + (t_del - dN) / E_l["delayed"]]).clip(0.0, 1.5)
        margin = rng.uniform(0.05, 0.15)
        return {"dN": dN, "a": a, "b": np.array([b_art, 0.0, 0.0]),
                "targets": {"arterial": t_art, "portal": t_por, "delayed": t_del}, "mosaic": rng.uniform(0.3, 0.8),
                "capsule": d_mm >= 15 and rng.random() < 0.5, "cap_a": np.array([0.5, 1.3, 1.4]),
                "cap_pv": pv(max(1.5, 0.1 * R)), "margin": margin, "margin_pv": pv(margin * R),
                "margin_w": rng.uniform(0.2, 0.5), "tex": rng.uniform(5, 12)}, low
    # haemangioma
    flash = d_mm < 20 and rng.random() < 0.25
    f = np.array([9.0, 9.0, 9.0]) if flash else np.array([rng.uniform(0.12, 0.25), rng.uniform(0.35, 0.6),
                                                            rng.uniform(0.65, 1.1)])
    return {"dN": -rng.uniform(8, 22), "b": rng.uniform(0.75, 1.0), "fill": f, "kappa": 0.5,
            "tex": rng.uniform(2, 5), "flash": flash}, False


def _lesion_surroundings(m: LesionModel, instances: np.ndarray, tissues: np.ndarray,
                         ) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """(box grown by 3 voxels, the lesion's mask in it, liver parenchyma within 2 voxels of the lesion)."""
    big = tuple(slice(max(b.start - 3, 0), min(b.stop + 3, n)) for b, n in zip(m.box, instances.shape))
    mask = instances[big] == m.lesion_id
    shell = ndimage.binary_dilation(mask, _FACE, iterations=2) & (tissues[big] == TISSUE_INDEX["liver"])
    return big, mask, shell


def _calibrate_lesions(anatomy: Anatomy) -> None:
    """Hit each lesion's contrast targets exactly in the noise-free reference rendering of each phase.

    The contrast is ``contrast_hu``'s measure: mean lesion HU minus mean HU of the liver parenchyma within
    two voxels. The lesion HU are linear in one coefficient per phase (metastasis: the liver-enhancement
    fraction ``a`` of all phases at fixed ratios; HCC: ``b`` in the arterial phase, ``a`` in the portal and
    delayed phases), so two evaluations give the exact solution (unless the coefficient hits its bounds).
    """
    refs = {}
    for m in anatomy.lesion_models:
        targets = m.params.get("targets", {})
        if not targets:
            continue
        big, mask, shell = _lesion_surroundings(m, anatomy.instances, anatomy.tissues)
        own = mask[tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(m.box, big))]
        q = m.params
        for phase, target in targets.items():
            cond = reference_conditions(phase)
            if phase not in refs:
                refs[phase] = _mean_image(anatomy, cond)
            liver = float(refs[phase][big][shell].mean()) if shell.any() else cond.tissue_hu["liver"]
            liver -= cond.texture_hu * float(anatomy.texture_low[big][mask].mean())  # common to both sides
            p = PHASES.index(phase)
            if m.subtype == "metastasis":
                def setter(x):
                    q["a"] = x * q["a_ratio"]
                lo, hi = 0.0, 1.5
            elif phase == "arterial":
                def setter(x):
                    q["b"][0] = x
                lo, hi = 0.0, 0.6
            else:
                def setter(x, p=p):
                    q["a"][p] = x
                lo, hi = 0.0, 1.8
            c = []
            for x in (0.0, 1.0):
                setter(x)
                c.append(float(_lesion_hu(m, cond)[own].mean()) - liver)
            x = (target - c[0]) / (c[1] - c[0]) if abs(c[1] - c[0]) > 1e-6 else 0.0
            setter(float(np.clip(x, lo, hi)))


def _lesion_hu(m: LesionModel, cond: ScanConditions) -> np.ndarray:
    """Noise-free HU of a lesion's box under ``cond`` (valid on the lesion's voxels)."""
    p = PHASES.index(cond.phase)
    Nl = cond.liver_native_hu
    El = cond.liver_enhancement_hu
    Eb = cond.blood_enhancement_hu
    liver_val = Nl + El
    rho, aux = m.rho, m.aux
    q = m.params
    if m.subtype == "cyst":
        hu = np.full(rho.shape, q["fluid_hu"], dtype=np.float32)
    elif m.subtype == "metastasis":
        body_hu = (m.params["cyst_hu"] if q["cystlike"] else Nl + q["dN"]) + q["a"][p] * El
        rim_hu = body_hu + q["rim_pv"] * (q["rim_a"] * El + q["rim_b"][p] * Eb)
        w_rim = _smoothstep(1 - q["rim_w"] - 0.05, 1 - q["rim_w"] + 0.05, rho)
        hu = (1 - w_rim) * body_hu + w_rim * rim_hu
        if q["necrotic"]:
            w_nec = _smoothstep(q["nec_r"] + 0.08, q["nec_r"] - 0.08, rho)
            hu = (1 - w_nec) * hu + w_nec * q["nec_hu"]
        w_liv = q["margin_pv"] * q["margin_w"] * _smoothstep(1 - q["margin"], 1.0, rho)
        hu = (1 - w_liv) * hu + w_liv * liver_val
    elif m.subtype == "hcc":
        mos = 1 + q["mosaic"] * (np.round(aux * 3) / 3 - 0.5)
        hu = Nl + q["dN"] + q["a"][p] * El * mos + q["b"][p] * Eb * mos
        if q["capsule"]:
            w_cap = q["cap_pv"] * _smoothstep(0.85, 0.95, rho)
            hu = (1 - w_cap) * hu + w_cap * (Nl + q["dN"] + q["cap_a"][p] * El)
        w_liv = q["margin_pv"] * q["margin_w"] * _smoothstep(1 - q["margin"], 1.0, rho)
        hu = (1 - w_liv) * hu + w_liv * liver_val
    else:  # haemangioma: centripetal fill-in of nodular peripheral enhancement
        arrival = (1 - rho) + q["kappa"] * (1 - aux)
        w_fill = special.expit((q["fill"][p] - arrival) / 0.04)
        hu = Nl + q["dN"] + w_fill * q["b"] * Eb
    hu = hu + q["tex"] * m.texture
    return hu.astype(np.float32, copy=False)


def _lesion_shape(rng: np.random.Generator, grid: _Grid, subtype: str, centre_idx: np.ndarray, R: float,
                  ) -> tuple[tuple[slice, slice, slice], np.ndarray, float]:
    """Normalised radial field ``rho`` of a lesion around ``centre_idx`` (z, y, x), in a local box.

    Returns (box, rho): the box as (z, y, x) slices and rho (<= 1 inside the lesion) over it.
    """
    sx, sy, sz = grid.spacing
    if subtype == "cyst":
        ratios, amp, n_lob = rng.uniform(0.85, 1.0, 3), rng.uniform(0.0, 0.04), 0
    elif subtype == "metastasis":
        ratios, amp, n_lob = rng.uniform(0.7, 1.0, 3), rng.uniform(0.08, 0.16), int(rng.integers(0, 4))
    elif subtype == "hcc":
        ratios, amp, n_lob = rng.uniform(0.75, 1.0, 3), rng.uniform(0.03, 0.08), int(rng.integers(0, 2))
    else:
        ratios, amp, n_lob = rng.uniform(0.7, 1.0, 3), rng.uniform(0.05, 0.12), int(rng.integers(0, 2))
    ratios = ratios / np.prod(ratios) ** (1 / 3)
    axes = R * ratios
    rot = _random_rotation(rng)
    ext = 1.35 * float(axes.max()) * (1 + 3 * amp) + 1.5 * max(sx, sz)
    half = np.ceil(ext / np.array([sz, sy, sx])).astype(int)
    c = np.round(centre_idx).astype(int)
    lo = np.maximum(c - half, 0)
    hi = np.minimum(c + half + 1, grid.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    lz = ((np.arange(lo[0], hi[0]) - centre_idx[0]) * sz).astype(np.float32)
    ly = ((np.arange(lo[1], hi[1]) - centre_idx[1]) * sy).astype(np.float32)
    lx = ((np.arange(lo[2], hi[2]) - centre_idx[2]) * sx).astype(np.float32)
    Pz, Py, Px = lz[:, None, None], ly[None, :, None], lx[None, None, :]
    u = rot[0, 0] * Px + rot[1, 0] * Py + rot[2, 0] * Pz
    v = rot[0, 1] * Px + rot[1, 1] * Py + rot[2, 1] * Pz
    w = rot[0, 2] * Px + rot[1, 2] * Py + rot[2, 2] * Pz
    q = np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2 + (w / axes[2]) ** 2)
    if n_lob:
        parts = [np.log(q + 1e-6)]
        for _ in range(n_lob):
            dvec = rng.standard_normal(3)
            dvec *= rng.uniform(0.35, 0.55) / np.linalg.norm(dvec)
            f = rng.uniform(0.45, 0.65)
            ql = np.sqrt(((u - dvec[0] * axes[0]) / (f * axes[0])) ** 2 + ((v - dvec[1] * axes[1]) / (f * axes[1])) ** 2
                         + ((w - dvec[2] * axes[2]) / (f * axes[2])) ** 2)
            parts.append(np.log(ql + 1e-6))
        k = 0.08
        m = np.minimum.reduce(parts)
        q = np.exp(m - k * np.log(sum(np.exp(-(p_ - m) / k) for p_ in parts)))
    corr = max(0.6 * R, 1.2 * sx)
    pert = _smooth_field(rng, (lz, ly, lx), corr) if amp > 0 else 0.0
    rho = (q / (1 + amp * pert)).astype(np.float32)
    return box, rho


def _place_lesions(rng: np.random.Generator, grid: _Grid, liver_region: np.ndarray, tissues: np.ndarray,
                   ) -> tuple[np.ndarray, list[LesionModel]]:
    sx, sy, sz = grid.spacing
    vv = grid.voxel_volume
    specs = _draw_lesion_specs(rng)
    instances = np.zeros(grid.shape, dtype=np.uint16)
    models: list[LesionModel] = []
    if not specs:
        return instances, models
    # minimum diameter a lesion of this grid can have: ~10 voxels, so the 8-voxel floor holds after clipping
    d_min = (6 * 10 * vv / math.pi) ** (1 / 3)
    order = sorted(range(len(specs)), key=lambda i: -specs[i][1])  # big ones first, they need room
    edt = ndimage.distance_transform_edt(liver_region, sampling=(sz, sy, sx)).astype(np.float32)
    cand_idx = np.argwhere(liver_region)
    cand_edt = edt[liver_region]
    forbidden = np.zeros(grid.shape, dtype=bool)
    gap_struct = ndimage.generate_binary_structure(3, 3)
    next_id = 1
    for i in order:
        subtype, d_drawn = specs[i]
        d_t = max(d_drawn, d_min)
        R = d_t / 2
        params, low = _lesion_params(rng, subtype, d_t, vv ** (1 / 3))
        for _ in range(12):
            ok = (cand_edt >= max(0.5 * R, 0.5 * sx)) & ~forbidden[tuple(cand_idx.T)]
            if not ok.any():
                break
            centre = cand_idx[rng.choice(np.flatnonzero(ok))] + rng.uniform(-0.4, 0.4, 3)
            box, rho = _lesion_shape(rng, grid, subtype, centre, R)
            inside = rho <= 1.0
            n_raw = int(inside.sum())
            if n_raw == 0:
                continue
            # calibrate the voxel volume to the target diameter (rho is ~1/linear size)
            scale = float(np.clip((math.pi / 6 * d_t ** 3 / (n_raw * vv)) ** (1 / 3), 0.8, 1.25))
            rho = (rho / scale).astype(np.float32)
            inside = rho <= 1.0
            n_raw = int(inside.sum())
            mask = inside & liver_region[box]
            if mask.sum() < 0.67 * n_raw:
                continue
            mask = _largest_component(mask)
            if mask.sum() < MIN_LESION_VOXELS or (mask & forbidden[box]).any():
                continue
            # inside the liver: most of its neighbours, and of its in-plane neighbours, are liver
            liver_box = liver_region[box]
            if _share(mask, liver_box, _FACE) < 0.5 or _share(mask, liver_box, _FACE_XY) < 0.4:
                continue
            # compartments (rim, capsule, nodules) follow rho; on a coarse grid the outer voxel centres lie
            # well inside rho = 1, so rescale rho to put the outer voxel layer at ~1
            edge = mask & ~ndimage.binary_erosion(mask, _FACE)
            rho = (rho / max(float(np.median(rho[edge])), 0.5)).astype(np.float32)
            lz, ly, lx = (np.arange(b.start, b.stop) for b in box)
            coords = ((lz - centre[0]) * sz, (ly - centre[1]) * sy, (lx - centre[2]) * sx)
            tex = _smooth_field(rng, coords, max(0.35 * R, 1.5 * sx))
            aux = special.ndtr(_smooth_field(rng, coords, max(0.3 * R, 1.2 * sx))).astype(np.float32)
            lid = next_id
            next_id += 1
            instances[box][mask] = lid
            # forbid everything within LESION_GAP_VOXELS (Chebyshev) of this lesion
            pad = LESION_GAP_VOXELS
            lo = [max(b.start - pad, 0) for b in box]
            hi = [min(b.stop + pad, n) for b, n in zip(box, grid.shape)]
            big = tuple(slice(a, b) for a, b in zip(lo, hi))
            local = instances[big] == lid
            forbidden[big] |= ndimage.binary_dilation(local, gap_struct, iterations=pad)
            model = LesionModel(lesion_id=lid, subtype=subtype, box=box, rho=rho, texture=tex, aux=aux,
                                sampled_diameter_mm=float(d_drawn), target_diameter_mm=float(d_t),
                                low_contrast=low, params=params)
            models.append(model)
            break
    tissues[instances > 0] = TISSUE_INDEX["lesion"]
    return instances, models


def _lesion_table(grid: _Grid, instances: np.ndarray, models: list[LesionModel], tissues: np.ndarray,
                  reference: np.ndarray) -> list[dict]:
    sx, sy, sz = grid.spacing
    vv = grid.voxel_volume
    rows = []
    for m in models:
        big, mask, shell = _lesion_surroundings(m, instances, tissues)
        idx = np.argwhere(mask).astype(np.float64) + np.array([b.start for b in big])
        n = len(idx)
        cz, cy, cx = idx.mean(axis=0)
        ref = reference[big]
        contrast = float(ref[mask].mean() - ref[shell].mean()) if shell.any() else float("nan")
        vol_mm3 = n * vv
        rows.append({
            "lesion_id": int(m.lesion_id),
            "centroid_voxel": (float(cz), float(cy), float(cx)),
            "centroid_mm": (float(cx * sx), float(cy * sy), float(cz * sz)),
            "volume_ml": float(vol_mm3 / 1000.0),
            "diameter_mm": float((6 * vol_mm3 / math.pi) ** (1 / 3)),
            "label": SUBTYPE_LABEL[m.subtype],
            "subtype": m.subtype,
            "contrast_hu": contrast,
        })
    return rows


def _liver_box(liver_region: np.ndarray, spacing: tuple[float, float, float],
               margin_mm: tuple[float, float]) -> tuple[slice, slice, slice]:
    """(z, y, x) slices of the liver's bounding box grown by ``margin_mm`` (in-plane, z), inside the grid."""
    sx, sy, sz = spacing
    m_xy, m_z = margin_mm
    nz_idx, ny_idx, nx_idx = (np.flatnonzero(liver_region.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    out = []
    for idx, margin, n in ((nz_idx, m_z / sz, liver_region.shape[0]), (ny_idx, m_xy / sy, liver_region.shape[1]),
                           (nx_idx, m_xy / sx, liver_region.shape[2])):
        pad = int(math.ceil(margin))
        out.append(slice(max(int(idx[0]) - pad, 0), min(int(idx[-1]) + 1 + pad, n)))
    return tuple(out)


def sample_anatomy(rng: np.random.Generator, size: int = 128,
                   liver_margin_mm: tuple[float, float] | None = None) -> Anatomy:
    """Draw one body with its liver, vessels and lesions.

    Args:
        rng: the anatomy's random generator (the only source of randomness).
        size: in-plane matrix size (x and y) of the whole abdominal field of view; the number of slices
            follows from the drawn spacing.
        liver_margin_mm: crop the field of view to the liver's bounding box grown by (in-plane, z) mm, as
            liver pipelines crop around the liver; None keeps the whole field of view. The body is drawn
            exactly as without cropping (same random draws), then cut; the crop's voxel 0 becomes the
            origin, so lesion centroids (voxel and mm) refer to the cropped grid.

    Returns:
        The anatomy; ``lesions[i]["contrast_hu"]`` is measured in the reference (portal) rendering.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32, got {size}")
    meta: dict = {}
    grid = _sample_grid(rng, size, meta)
    tissues, liver_region = _build_anatomy(rng, grid, meta)
    coords = (grid.zs, grid.ys, grid.xs)
    tex_low = _smooth_field(rng, coords, rng.uniform(45, 75))
    tex_mid = _smooth_field(rng, coords, max(12.0, 1.5 * grid.spacing[0]))
    instances, models = _place_lesions(rng, grid, liver_region, tissues)
    if liver_margin_mm is not None:
        box = _liver_box(liver_region, grid.spacing, liver_margin_mm)
        # a lesion's rendering box (its rho field) may reach past the margin at the liver's edge
        box = tuple(slice(min([c.start] + [m.box[a].start for m in models]),
                          max([c.stop] + [m.box[a].stop for m in models])) for a, c in enumerate(box))
        tissues, liver_region, instances = tissues[box], liver_region[box], instances[box]
        tex_low, tex_mid = tex_low[box], tex_mid[box]
        for m in models:
            m.box = tuple(slice(b.start - c.start, b.stop - c.start) for b, c in zip(m.box, box))
        meta["crop_offset_voxel"] = tuple(int(b.start) for b in box)
        meta["uncropped_shape"] = tuple(int(n) for n in grid.shape)
        sx, sy, _ = grid.spacing
        grid = replace(grid, shape=tuple(int(b.stop - b.start) for b in box), zs=grid.zs[box[0]] - grid.zs[box[0]][0],
                       ys=grid.ys[box[1]], xs=grid.xs[box[2]],
                       origin_offset=(grid.origin_offset[0] - box[2].start * sx,
                                      grid.origin_offset[1] - box[1].start * sy))
    label = np.zeros(grid.shape, dtype=np.uint8)
    label[liver_region] = 1
    label[instances > 0] = 2
    anatomy = Anatomy(spacing=tuple(float(v) for v in grid.spacing), tissues=tissues, label=label,
                      instances=instances, lesions=[], texture_low=tex_low, texture_mid=tex_mid,
                      lesion_models=models, meta=meta)
    if models:
        _calibrate_lesions(anatomy)
        reference = _mean_image(anatomy, reference_conditions())
        anatomy.lesions = _lesion_table(grid, instances, models, tissues, reference)
    return anatomy


# --------------------------------------------------------------------------------------------------
# scan conditions and rendering


def _blood_enhancement(phase: str, hu: dict[str, float]) -> float:
    if phase == "arterial":
        return hu["aorta"] - _BLOOD_NATIVE_HU
    if phase == "portal":
        return hu["portal_vein"] - _BLOOD_NATIVE_HU
    return (hu["aorta"] + hu["portal_vein"] + hu["hepatic_vein"]) / 3 - _BLOOD_NATIVE_HU


def sample_conditions(rng: np.random.Generator, shifted: bool = False) -> ScanConditions:
    """Draw the scan conditions: contrast phase, tissue HU, noise, blur.

    The normal draws come first and in the same order whether ``shifted`` or not, so one generator state
    gives a scan and its out-of-distribution twin. ``shifted=True`` then models a badly timed,
    miscalibrated, noisier scan of the same phase:

    * all contrast enhancement (liver, spleen, kidneys, vessels, heart, bowel wall; and so the lesions,
      whose enhancement follows the liver and the blood pool) scaled by one factor: in the portal and
      delayed phases the one that makes the liver 30-50 HU darker (at most 90% of its enhancement
      removed), in the arterial phase 0.2-0.5 (a missed bolus). Lesion-to-liver contrast falls;
    * a global HU offset of +-(20-40) HU (a calibration / window shift);
    * noise SD x1.3-2.0 (at most 50 HU) and blur x1.0-1.6.

    Args:
        rng: the conditions' random generator.
        shifted: draw the robustness-split conditions.
    """
    phase = PHASES[int(rng.choice(3, p=_PHASE_PROBS))]
    hu: dict[str, float] = {}
    for name in sorted(_STATIC_HU):
        hu[name] = float(rng.uniform(*_STATIC_HU[name]))
    for name in sorted(_PHASE_HU[phase]):
        hu[name] = float(rng.uniform(*_PHASE_HU[phase][name]))
    contents = np.random.Generator(rng.bit_generator.jumped())  # leaves rng as it is: see _CONTENT_HU
    for name in sorted(_CONTENT_HU):
        hu[name] = float(contents.uniform(*_CONTENT_HU[name]))
    liver_native = float(rng.uniform(52, 64))
    hu["liver"] = max(hu["liver"], liver_native + 2.0)
    hu["heart"] = float(rng.uniform(0.8, 0.95) * hu["aorta"] + 0.1 * hu["muscle"])
    hu["lesion"] = hu["liver"]  # placeholder; lesions are rendered from their models
    noise_sd = float(math.exp(rng.uniform(math.log(6.0), math.log(25.0))))
    blur = float(rng.uniform(0.3, 1.2))
    texture = float(rng.uniform(2.0, 6.0))
    noise_corr = float(rng.uniform(0.4, 0.8))
    offset = 0.0
    shift: dict[str, float] = {}
    if shifted:
        # a badly timed / weak bolus scales every enhancement (over its native HU) by the same factor, so
        # lesions that follow the liver or the blood pool lose contrast along with the liver
        E = hu["liver"] - liver_native
        if phase == "arterial":  # little liver enhancement to lose yet: the bolus is missed instead
            k = float(rng.uniform(0.2, 0.5))
        else:
            k = max(0.1, 1.0 - float(rng.uniform(30, 50)) / E)
        for name, native in _NATIVE_HU.items():
            hu[name] = native + k * (hu[name] - native)
        hu["liver"] = liver_native + k * E
        hu["lesion"] = hu["liver"]
        offset = float(rng.choice([-1.0, 1.0]) * rng.uniform(20, 40))
        nf, bf = float(rng.uniform(1.3, 2.0)), float(rng.uniform(1.0, 1.6))
        noise_sd = min(noise_sd * nf, 50.0)
        blur *= bf
        shift = {"enhancement_scale": k, "liver_enhancement_drop_hu": (1 - k) * E, "hu_offset": offset,
                 "noise_factor": nf, "blur_factor": bf}
    return ScanConditions(phase=phase, tissue_hu=hu, noise_sd=noise_sd, blur_sigma_mm=blur, hu_offset=offset,
                          liver_native_hu=liver_native, blood_enhancement_hu=_blood_enhancement(phase, hu),
                          texture_hu=texture, noise_corr_vox=noise_corr, shifted=shifted, shift=shift)


def reference_conditions(phase: str = "portal") -> ScanConditions:
    """Noise-free, unblurred mid-range conditions (used for ``contrast_hu``)."""
    hu = {k: 0.5 * (lo + hi) for k, (lo, hi) in (_STATIC_HU | _CONTENT_HU).items()}
    hu.update({k: 0.5 * (lo + hi) for k, (lo, hi) in _PHASE_HU[phase].items()})
    hu["liver"] = _NOMINAL_LIVER[phase]
    hu["heart"] = 0.875 * hu["aorta"] + 0.1 * hu["muscle"]
    hu["lesion"] = hu["liver"]
    return ScanConditions(phase=phase, tissue_hu=hu, noise_sd=0.0, blur_sigma_mm=0.0, hu_offset=0.0,
                          liver_native_hu=_NOMINAL_LIVER_NATIVE, blood_enhancement_hu=_blood_enhancement(phase, hu),
                          texture_hu=4.0, noise_corr_vox=0.5)


def _mean_image(anatomy: Anatomy, cond: ScanConditions) -> np.ndarray:
    """Noise-free, unblurred HU (float32) of an anatomy under ``cond`` (without the HU offset)."""
    lut = np.array([cond.tissue_hu[t] for t in TISSUES], dtype=np.float32)
    low = np.array([_TEX_LOW.get(t, 0.0) for t in TISSUES], dtype=np.float32)
    mid = np.array([_TEX_MID.get(t, 0.0) for t in TISSUES], dtype=np.float32)
    low[TISSUE_INDEX["liver"]] = cond.texture_hu
    if cond.phase == "arterial":
        mid[TISSUE_INDEX["spleen"]] = _SPLEEN_ARTERIAL_MOTTLE_HU
    t = anatomy.tissues
    img = lut[t]
    img += low[t] * anatomy.texture_low
    img += mid[t] * anatomy.texture_mid
    for m in anatomy.lesion_models:
        inside = anatomy.instances[m.box] == m.lesion_id
        # the liver's low-frequency inhomogeneity (perfusion, beam hardening) runs through its lesions
        img[m.box][inside] = (_lesion_hu(m, cond) + cond.texture_hu * anatomy.texture_low[m.box])[inside]
    return img


def _gauss_weights(sigma: float) -> np.ndarray:
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def render(anatomy: Anatomy, conditions: ScanConditions, rng: np.random.Generator) -> np.ndarray:
    """Render an anatomy under scan conditions.

    Tissue means and textures, lesion enhancement models, a point-spread blur (in-plane
    ``blur_sigma_mm`` plus the voxel footprint; along z the slice profile, FWHM = slice spacing),
    spatially correlated Gaussian noise with SD ``noise_sd``, then ``hu_offset``.

    Args:
        anatomy: from :func:`sample_anatomy`.
        conditions: from :func:`sample_conditions` (or :func:`reference_conditions`).
        rng: the noise generator.

    Returns:
        int16 HU, shape (z, y, x), clipped to [-1024, 3071].
    """
    sx, sy, sz = anatomy.spacing
    img = _mean_image(anatomy, conditions)
    b = conditions.blur_sigma_mm
    # slice profile with FWHM = slice spacing along z; in-plane the PSF plus the voxel footprint
    sig = (math.hypot(b / sz, 1 / 2.355), math.hypot(b / sy, 0.3), math.hypot(b / sx, 0.3))
    img = ndimage.gaussian_filter(img, sigma=sig, mode="nearest")
    if conditions.noise_sd > 0:
        noise = rng.standard_normal(img.shape, dtype=np.float32)
        c = conditions.noise_corr_vox
        noise = ndimage.gaussian_filter(noise, sigma=(0.0, c, c), mode="wrap")
        # filtering along two axes multiplies the variance by (sum w^2)^2, the SD by sum w^2
        noise *= conditions.noise_sd / float(np.sum(_gauss_weights(c) ** 2))
        img += noise
    img += conditions.hu_offset
    return np.clip(np.rint(img), *HU_RANGE).astype(np.int16)


# --------------------------------------------------------------------------------------------------
# cases


def _case_generators(seed: int, case_index: int) -> list[np.random.Generator]:
    """Anatomy, conditions, noise and shifted-noise generators of one case."""
    return np.random.default_rng([int(seed), int(case_index)]).spawn(4)


def case_anatomy(seed: int, case_index: int, size: int = 128,
                 liver_margin_mm: tuple[float, float] | None = None) -> Anatomy:
    """The anatomy (tissue map, labels, lesion instances) of case ``case_index`` of a data set synthesised
    with ``seed``, without rendering it: the same draws as :func:`generate_case` and :func:`generate_shifted`."""
    return sample_anatomy(_case_generators(seed, case_index)[0], size, liver_margin_mm)


def generate_case(seed: int, case_index: int, size: int = 128,
                  liver_margin_mm: tuple[float, float] | None = None) -> tuple[Anatomy, ScanConditions, np.ndarray]:
    """One phantom under normal scan conditions. Deterministic in (seed, case_index, size, liver_margin_mm)."""
    g_anat, g_cond, g_noise, _ = _case_generators(seed, case_index)
    anatomy = sample_anatomy(g_anat, size, liver_margin_mm)
    cond = sample_conditions(g_cond, shifted=False)
    return anatomy, cond, render(anatomy, cond, g_noise)


def generate_shifted(seed: int, case_index: int, size: int = 128,
                     liver_margin_mm: tuple[float, float] | None = None,
                     ) -> tuple[Anatomy, ScanConditions, np.ndarray]:
    """The anatomy of ``generate_case(seed, case_index, size, liver_margin_mm)`` under shifted
    (out-of-distribution) conditions.

    The conditions start from the same draws as the normal scan (same phase and tissue values) and then
    apply the shifts documented in :func:`sample_conditions`; the noise is an independent realisation.
    """
    g_anat, g_cond, _, g_noise = _case_generators(seed, case_index)
    anatomy = sample_anatomy(g_anat, size, liver_margin_mm)
    cond = sample_conditions(g_cond, shifted=True)
    return anatomy, cond, render(anatomy, cond, g_noise)
