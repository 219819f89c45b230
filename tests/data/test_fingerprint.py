"""Near-duplicate fingerprints: every re-export a converter makes is caught, different patients are not.

The duplicates are made from the real CT the repository carries (real anatomy, real HU, 200 x 167 x 119 at
2.35 mm) and its radiologist mask; the different patients are phantoms of one seed family and the two real
CTs, all on one common grid so that the field-of-view check cannot help.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.data import fingerprint as fp
from nnunet_liver.data.converters import ConversionError
from nnunet_liver.data.real_ct import CRLM_CT, CRLM_SEG, TOTALSEG_CT


def _like(arr: np.ndarray, img: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(arr)
    out.SetSpacing(img.GetSpacing())
    out.SetOrigin(img.GetOrigin())
    out.SetDirection(img.GetDirection())
    return out


def lying_flip(img: sitk.Image, axis: int) -> sitk.Image:
    """The voxels reversed along SimpleITK axis ``axis`` while the header still says the old orientation."""
    return _like(np.ascontiguousarray(np.flip(sitk.GetArrayFromImage(img), 2 - axis)), img)


def permuted(img: sitk.Image, perm=(2, 0, 1)) -> sitk.Image:
    """New index axis a = old index axis perm[a], with spacing and direction that say so (same physical image)."""
    arr = sitk.GetArrayFromImage(img)
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(arr, [2 - perm[2 - i] for i in range(3)])))
    d = np.array(img.GetDirection()).reshape(3, 3)
    out.SetDirection(tuple(d[:, list(perm)].ravel()))
    out.SetSpacing(tuple(img.GetSpacing()[p] for p in perm))
    out.SetOrigin(img.GetOrigin())
    return out


def offset(img: sitk.Image, hu: float = 1024.0) -> sitk.Image:
    return _like(sitk.GetArrayFromImage(img).astype(np.float32) + hu, img)


def crop(img: sitk.Image, n: int = 3, at_start: bool = False) -> sitk.Image:
    return img[:, :, n:] if at_start else img[:, :, :img.GetDepth() - n]


def pad(img: sitk.Image, n: int = 3) -> sitk.Image:
    arr = sitk.GetArrayFromImage(img)
    return _like(np.concatenate([arr, np.full((n,) + arr.shape[1:], arr.min(), arr.dtype)]), img)


def noisy(img: sitk.Image, sd: float = 10.0) -> sitk.Image:
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    return _like(arr + np.random.default_rng(0).normal(0, sd, arr.shape).astype(np.float32), img)


def resampled(img: sitk.Image, factor: float = 0.9, interpolator=sitk.sitkLinear) -> sitk.Image:
    """Linear interpolation onto a grid with ``factor`` times the spacing, covering the same field of view."""
    spacing = np.array(img.GetSpacing()) * factor
    size = [int(round(n / factor)) for n in img.GetSize()]
    d = np.array(img.GetDirection()).reshape(3, 3)
    origin = np.array(img.GetOrigin()) + d @ ((spacing - np.array(img.GetSpacing())) / 2)
    out_type = sitk.sitkFloat32 if interpolator != sitk.sitkNearestNeighbor else img.GetPixelID()
    return sitk.Resample(img, size, sitk.Transform(), interpolator, tuple(origin), tuple(spacing),
                         img.GetDirection(), 0.0, out_type)


# name -> (transform of the image, transform of its label (None: the same), checks on the evidence)
TRANSFORMS = {
    "flip_honest_header": (lambda i: sitk.Flip(i, [True, False, False]), None,
                           dict(header="flip x", array_flips="none")),
    "flip_lying_header_x": (lambda i: lying_flip(i, 0), None, dict(header="same", array_flips="flip x")),
    "flip_lying_header_y": (lambda i: lying_flip(i, 1), None, dict(header="same", array_flips="flip y")),
    "flip_lying_header_z": (lambda i: lying_flip(i, 2), None, dict(header="same", array_flips="flip z")),
    "permutation": (permuted, None, dict(header="axes (2, 0, 1)", array_flips="none")),
    "float32": (lambda i: sitk.Cast(i, sitk.sitkFloat32), lambda lab: lab, dict(header="same")),
    "hu_offset": (offset, lambda lab: lab, dict(hu_offset=1024.0)),
    "crop_3_slices_at_end": (crop, None, dict(z_shift_slices=0.0, overlap_slices=116)),
    "crop_3_slices_at_start": (lambda i: crop(i, at_start=True), None, dict(z_shift_slices=3.0)),
    "pad_3_slices": (pad, None, dict(z_shift_slices=0.0, overlap_slices=119)),
    "gaussian_noise_10hu": (noisy, lambda lab: lab, dict(header="same")),
    "linear_resampling": (resampled, lambda lab: resampled(lab, interpolator=sitk.sitkNearestNeighbor), {}),
    "all_at_once": (lambda i: noisy(offset(lying_flip(permuted(crop(i), (1, 0, 2)), 1)), 10),
                    lambda lab: lying_flip(permuted(crop(lab), (1, 0, 2)), 1),
                    dict(header="axes (0, 2, 1)", hu_offset=1024.0)),
}


@pytest.fixture(scope="module")
def crlm(tmp_path_factory):
    """The real CT and its mask, written once, with their fingerprint."""
    folder = tmp_path_factory.mktemp("crlm")
    img, lab = sitk.ReadImage(str(CRLM_CT)), sitk.ReadImage(str(CRLM_SEG))
    sitk.WriteImage(img, str(folder / "a.nii.gz"))
    sitk.WriteImage(lab, str(folder / "a_seg.nii.gz"))
    return folder, img, lab, fp.fingerprint_image(folder / "a.nii.gz")


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_reexported_copy_is_caught(name, crlm, tmp_path):
    folder, img, lab, fa = crlm
    change, change_label, expected = TRANSFORMS[name]
    sitk.WriteImage(change(img), str(tmp_path / "b.nii.gz"))
    sitk.WriteImage((change_label or change)(lab), str(tmp_path / "b_seg.nii.gz"))
    match = fp.compare(fa, fp.fingerprint_image(tmp_path / "b.nii.gz"))
    assert match is not None and match.score >= fp.CANDIDATE_SCORE, match
    ev = fp.verify(folder / "a.nii.gz", tmp_path / "b.nii.gz", match.alignment, label_a=folder / "a_seg.nii.gz",
                   label_b=tmp_path / "b_seg.nii.gz")
    assert ev.detail_ncc >= fp.DUPLICATE_DETAIL_NCC and ev.voxel_ncc > 0.98 and fp.is_duplicate(match, ev), ev
    seen = {"header": ev.header, "array_flips": match.alignment.array_flips, "z_shift_slices": ev.z_shift_slices,
            "overlap_slices": ev.overlap_slices, "hu_offset": ev.hu_offset}
    for key, value in expected.items():
        assert seen[key] == pytest.approx(value, abs=0.5) if isinstance(value, float) else seen[key] == value, key
    if name != "linear_resampling":  # nearest-neighbour resampled labels differ at the border
        assert ev.same_label and ev.label_dice_liver == 1.0 and ev.label_dice_tumour == 1.0
    else:
        assert ev.label_dice_liver > 0.95 and ev.label_dice_tumour > 0.9
    if name in ("float32", "gaussian_noise_10hu", "flip_honest_header"):
        assert abs(ev.hu_offset) < 0.5


def test_label_disagreement_is_measured(crlm, tmp_path):
    folder, img, lab, fa = crlm
    arr = sitk.GetArrayFromImage(lab)
    arr[arr == 2] = 1  # the copy's annotator missed the tumour
    sitk.WriteImage(lying_flip(img, 0), str(tmp_path / "b.nii.gz"))
    sitk.WriteImage(lying_flip(_like(arr, lab), 0), str(tmp_path / "b_seg.nii.gz"))
    match = fp.compare(fa, fp.fingerprint_image(tmp_path / "b.nii.gz"))
    ev = fp.verify(folder / "a.nii.gz", tmp_path / "b.nii.gz", match.alignment, label_a=folder / "a_seg.nii.gz",
                   label_b=tmp_path / "b_seg.nii.gz")
    tumour_ml = float((sitk.GetArrayFromImage(lab) == 2).sum()) * np.prod(lab.GetSpacing()) / 1000
    assert fp.is_duplicate(match, ev) and ev.same_label is False
    assert ev.label_dice_liver == 1.0 and ev.label_dice_tumour == 0.0
    assert ev.tumour_ml_a == pytest.approx(tumour_ml, abs=0.01) and ev.tumour_ml_b == 0.0


def _common_grid(img: sitk.Image, size=(48, 48, 24), spacing=(8.0, 8.0, 8.0)) -> sitk.Image:
    """``img`` resampled, centred, onto one grid shared by every 'patient' of the false-positive test."""
    ref = sitk.Image(list(size), sitk.sitkInt16)
    ref.SetSpacing(spacing)
    centre = img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in img.GetSize()])
    ref.SetOrigin([c - sp * (n - 1) / 2 for c, sp, n in zip(centre, spacing, size)])
    return sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkInt16)


def test_different_patients_never_match():
    """Phantoms 0..9 of one seed (same generator, same grid) and the two real CTs on that grid too: no pair
    comes near the candidate score, even with every flip tried and the field-of-view check off."""
    from nnunet_liver.data.phantoms import generate_case

    images = []
    for i in range(10):
        anatomy, _, arr = generate_case(seed=7, case_index=i, size=48)
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(anatomy.spacing)
        images.append(_common_grid(img))
    images += [_common_grid(sitk.ReadImage(str(p))) for p in (CRLM_CT, TOTALSEG_CT)]
    prints = [fp.fingerprint_array(sitk.GetArrayViewFromImage(i), i.GetSpacing(), i.GetDirection()) for i in images]
    scores = []
    for a, b in itertools.combinations(prints, 2):
        match = fp.compare(a, b, check_fov=False)
        scores.append(-1.0 if match is None else match.score)
    assert len(scores) == 66 and max(scores) < fp.CANDIDATE_SCORE - 0.1, sorted(scores)[-5:]
    # and each one against itself re-exported (flipped, offset) still matches: the grid is not too coarse
    for img, a in zip(images[::5], prints[::5]):
        b = offset(lying_flip(img, 1), -500)
        match = fp.compare(a, fp.fingerprint_array(sitk.GetArrayViewFromImage(b), b.GetSpacing(), b.GetDirection()))
        assert match.score > 0.99 and match.alignment.array_flips == "flip y"


def test_field_of_view_check():
    rng = np.random.default_rng(0)
    arr = rng.normal(0, 100, (20, 32, 32))
    a = fp.fingerprint_array(arr, (1.0, 1.0, 2.0), np.eye(3).ravel())
    b = fp.fingerprint_array(arr, (1.2, 1.0, 2.0), np.eye(3).ravel())  # 20 % wider in x: another scan
    assert fp.compare(a, b) is None and fp.compare(a, b, check_fov=False).score > 0.9
    t = fp.fingerprint_array(arr.transpose(0, 2, 1), (1.0, 1.2, 2.0), np.eye(3).ravel())  # transposed: fits
    assert fp.compare(b, t).alignment.transpose


def test_canonical_orientation():
    assert fp.canonical_orientation(np.eye(3).ravel()) == fp.Orientation((0, 1, 2), (False, False, False))
    lps = fp.canonical_orientation(np.diag([-1.0, -1.0, 1.0]).ravel())
    assert lps == fp.Orientation((0, 1, 2), (False, True, True))
    # index x runs along S, index y along -L, index z along P
    d = np.array([[0, -1, 0], [0, 0, 1], [1, 0, 0]], float)
    o = fp.canonical_orientation(d.ravel())
    assert o == fp.Orientation((2, 0, 1), (False, False, True))
    arr = np.arange(24).reshape(2, 3, 4)  # numpy (z, y, x) = index axes (z->P, y->L reversed, x->S)
    assert o.apply(arr).shape == (4, 2, 3)
    assert o.relative_to(fp.Orientation()) == "axes (2, 0, 1), flip x"
    assert fp.Orientation().relative_to(fp.Orientation()) == "same"
    # a gantry tilt of 0.3 rad about x keeps the nearest axes
    c, s = np.cos(0.3), np.sin(0.3)
    assert fp.canonical_orientation([1, 0, 0, 0, c, -s, 0, s, c]) == fp.Orientation()


def test_slab_average_and_area_weights():
    w = fp.area_weights(7, 4)
    assert np.allclose(w.sum(axis=1), 1) and np.allclose(w[::-1, ::-1], w)
    assert np.allclose(fp.area_weights(512, 32), np.kron(np.eye(32), np.full((1, 16), 1 / 16)))
    values = np.arange(10, dtype=float)
    for spacing in (0.7, 2.0, 5.0):
        out = fp.slab_average(values * 0 + 3.0, spacing)
        assert np.allclose(out, 3.0) and len(out) == int(np.floor(9 * spacing / fp.SLAB_MM + 1e-6)) + 1
    # slabs of the slice spacing average exactly one slice each (the ends: the covered half)
    assert np.allclose(fp.slab_average(values, fp.SLAB_MM), values)


def test_cache_round_trip_and_bad_file(tmp_path):
    arr = np.random.default_rng(1).integers(-1000, 1000, (12, 20, 24)).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(img, str(tmp_path / "x.nii.gz"))
    f = fp.fingerprint_image(tmp_path / "x.nii.gz")
    fp.save_cache(tmp_path / "cache.npz", {"x": ("v1", f)})
    (version, g), = fp.load_cache(tmp_path / "cache.npz").values()
    assert version == "v1" and g.meta() == f.meta() and np.array_equal(g.thumb, f.thumb)
    assert fp.compare(f, g).score == pytest.approx(1.0)
    (tmp_path / "cache.npz").write_bytes(b"damaged")
    assert fp.load_cache(tmp_path / "cache.npz") == {}
    (tmp_path / "bad.nii.gz").write_bytes(b"not an image")
    with pytest.raises(ConversionError, match="bad.nii.gz: cannot read the image"):
        fp.fingerprint_image(tmp_path / "bad.nii.gz")
