"""Synthetic liver-CT phantoms: determinism, anatomy, HU, lesion table vs components, shifted split."""
from __future__ import annotations

import dataclasses
import hashlib
import time

import numpy as np
import pytest
from scipy import ndimage

from nnunet_liver.data import phantoms as P

T = P.TISSUE_INDEX
FACE = ndimage.generate_binary_structure(3, 1)
FULL = ndimage.generate_binary_structure(3, 3)
FACE_XY = np.zeros((3, 3, 3), bool)
FACE_XY[1] = ndimage.generate_binary_structure(2, 1)


def digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str((a.dtype, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def many_small() -> list[P.Anatomy]:
    """40 anatomies at size 48 (no rendering)."""
    return [P.sample_anatomy(np.random.default_rng([11, i]), 48) for i in range(40)]


def test_same_seed_same_bits_other_seed_other_image():
    a1, c1, img1 = P.generate_case(7, 2, 48)
    a2, c2, img2 = P.generate_case(7, 2, 48)
    assert digest(img1, a1.label, a1.instances, a1.tissues) == digest(img2, a2.label, a2.instances, a2.tissues)
    assert a1.lesions == a2.lesions and c1 == c2
    _, _, img3 = P.generate_case(8, 2, 48)
    _, _, img4 = P.generate_case(7, 3, 48)
    assert digest(img1) != digest(img3) and digest(img1) != digest(img4)
    # no hidden global state: drawing other cases in between changes nothing
    P.generate_case(99, 0, 48)
    assert digest(P.generate_case(7, 2, 48)[2]) == digest(img1)


def test_types_shapes_and_spacing():
    for size in (48, 64):
        for i in range(6):
            a, c, img = P.generate_case(1, i, size)
            sx, sy, sz = a.spacing
            assert img.dtype == np.int16 and a.label.dtype == np.uint8 and a.instances.dtype == np.uint16
            assert img.shape == a.label.shape == a.instances.shape == a.tissues.shape
            nz, ny, nx = img.shape
            assert ny == nx == size and nz >= 16
            assert sx == sy and 0.7 * 512 / size <= sx <= 1.0 * 512 / size
            assert 1.5 <= sz / sx <= 3.0 + 1e-9
            assert img.min() >= -1024 and img.max() <= 3071
            # the slices cover the liver with margin: no liver in the first or last slice
            assert not a.label[0].any() and not a.label[-1].any()
            assert set(np.unique(a.label)) <= {0, 1, 2}


def eroded_median(img: np.ndarray, mask: np.ndarray) -> float:
    """Median away from the tissue's border (blur mixes border voxels with their neighbours)."""
    for structure in (FACE, np.ones((1, 3, 3), bool)):
        core = ndimage.binary_erosion(mask, structure=structure)
        if core.sum() >= 20:
            return float(np.median(img[core]))
    return float(np.median(img[mask]))


# realistic bands per phase (brief + literature); the tests allow a few HU of blur and noise on top
LIVER_BAND = {"arterial": (55, 85), "portal": (95, 135), "delayed": (85, 105)}
AORTA_BAND = {"arterial": (230, 360), "portal": (140, 210), "delayed": (100, 140)}
PORTAL_BAND = {"arterial": (90, 170), "portal": (150, 210), "delayed": (100, 140)}


def test_tissue_hu_in_realistic_bands_for_every_phase():
    seen = set()
    i = 0
    while seen != set(P.PHASES):
        a, c, img = P.generate_case(4, i, 64)
        i += 1
        assert i < 40, "phases never all drawn"
        if c.phase in seen:
            continue
        seen.add(c.phase)
        med = {name: eroded_median(img, a.tissues == T[name]) for name in ("air", "fat", "muscle", "liver")}
        assert med["air"] < -950
        assert -130 <= med["fat"] <= -70
        assert 25 <= med["muscle"] <= 75
        lo, hi = LIVER_BAND[c.phase]
        assert lo <= med["liver"] <= hi, (c.phase, med["liver"])
        assert abs(med["liver"] - c.tissue_hu["liver"]) < 10  # texture and noise move the median a little
        aorta = float(np.median(img[a.tissues == T["aorta"]]))
        lo, hi = AORTA_BAND[c.phase]
        assert lo <= aorta <= hi, (c.phase, aorta)
        assert 150 <= np.median(img[a.tissues == T["cancellous"]]) <= 350
        assert np.percentile(img[a.tissues == T["cortical"]], 90) > 500
        assert eroded_median(img, a.tissues == T["lung"]) < -700


def test_conditions_follow_the_documented_ranges():
    for i in range(200):
        c = P.sample_conditions(np.random.default_rng([5, i]))
        hu = c.tissue_hu
        assert 6 <= c.noise_sd <= 25 and c.hu_offset == 0 and not c.shifted
        if c.phase == "arterial":
            assert 250 <= hu["aorta"] <= 350 and 60 <= hu["liver"] <= 80
        elif c.phase == "portal":
            assert 160 <= hu["portal_vein"] <= 200 and 100 <= hu["liver"] <= 130
        else:
            assert 105 <= hu["aorta"] <= 130 and 90 <= hu["liver"] <= 100
        assert hu["kidney_cortex"] > hu["muscle"] + 50  # cortex enhances in every phase
        assert 700 <= hu["cortical"] <= 1000 and 200 <= hu["cancellous"] <= 300 and -120 <= hu["fat"] <= -85
        s = P.sample_conditions(np.random.default_rng([5, i]), shifted=True)
        assert s.phase == c.phase and s.shifted
        assert 20 <= abs(s.hu_offset) <= 40
        assert s.noise_sd > c.noise_sd
        drop = c.tissue_hu["liver"] - s.tissue_hu["liver"]
        if c.phase == "arterial":
            assert 0.5 * c.liver_enhancement_hu - 1e-6 <= drop <= 0.8 * c.liver_enhancement_hu + 1e-6
        else:
            assert min(30.0, 0.9 * c.liver_enhancement_hu) - 1e-6 <= drop <= 50 + 1e-6
        assert s.blood_enhancement_hu < c.blood_enhancement_hu


def test_expected_structures_exist_and_vessels_run_inside_the_liver():
    a, c, img = P.generate_case(2, 0, 64)
    present = set(np.unique(a.tissues))
    for name in ("air", "lung", "fat", "muscle", "bowel", "cancellous", "cortical", "disc", "csf", "aorta", "ivc",
                 "portal_vein", "hepatic_vein", "liver", "spleen", "kidney_cortex", "kidney_medulla", "thin_bone"):
        assert T[name] in present, name
    liver = a.label > 0
    inside = liver & np.isin(a.tissues, [T["portal_vein"], T["hepatic_vein"]])
    assert inside.sum() > 0.01 * liver.sum()
    # spleen on the patient's left (large x), liver mostly on the right (small x), spine posterior
    xs = np.arange(a.label.shape[2])
    cx_liver = (liver.sum(axis=(0, 1)) * xs).sum() / liver.sum()
    spleen = a.tissues == T["spleen"]
    cx_spleen = (spleen.sum(axis=(0, 1)) * xs).sum() / spleen.sum()
    assert cx_liver < a.label.shape[2] / 2 < cx_spleen


def test_liver_parenchyma_is_not_flat():
    a, c, _ = P.generate_case(2, 1, 64)
    clean = P.render(a, dataclasses.replace(c, noise_sd=0.0, blur_sigma_mm=0.0), np.random.default_rng(0))
    core = ndimage.binary_erosion(a.tissues == T["liver"], FACE, iterations=1)
    sd = float(clean[core].std())
    assert 1.0 < sd < 15.0


def best_fit_ellipsoid_dice(mask: np.ndarray, spacing) -> float:
    sx, sy, sz = spacing
    idx = np.argwhere(mask).astype(float)
    pts = idx[:, ::-1] * np.array([sx, sy, sz])
    centre = pts.mean(0)
    w, V = np.linalg.eigh(np.cov((pts - centre).T))
    axes = np.sqrt(5 * w)  # a solid ellipsoid's second moments are axis^2 / 5
    zz, yy, xx = np.indices(mask.shape)
    allp = np.stack([xx * sx, yy * sy, zz * sz], -1).reshape(-1, 3) - centre
    ell = ((((allp @ V) / axes) ** 2).sum(1) <= 1).reshape(mask.shape)
    return 2 * (ell & mask).sum() / (ell.sum() + mask.sum())


def test_liver_is_not_an_ellipsoid():
    spacing = (6.0, 6.0, 12.0)
    zz, yy, xx = np.indices((24, 64, 64))
    ellipsoid = ((xx - 30) * 6 / 80.0) ** 2 + ((yy - 33) * 6 / 60.0) ** 2 + ((zz - 11) * 12 / 90.0) ** 2 <= 1
    assert best_fit_ellipsoid_dice(ellipsoid, spacing) > 0.93  # the measure recognises an ellipsoid
    for i in range(3):
        a = P.sample_anatomy(np.random.default_rng([3, i]), 64)
        assert best_fit_ellipsoid_dice(a.label > 0, a.spacing) < 0.88


def check_lesion_table(a: P.Anatomy) -> list[float]:
    tumour = a.label == 2
    assert np.array_equal(tumour, a.instances > 0)
    ids = sorted(int(v) for v in np.unique(a.instances) if v)
    assert ids == [les["lesion_id"] for les in a.lesions] == list(range(1, len(a.lesions) + 1))
    vv = float(np.prod(a.spacing))
    liver_around = []
    for structure in (FACE, FULL):
        comps, n = ndimage.label(tumour, structure=structure)
        assert n == len(a.lesions)
        for les in a.lesions:
            own = a.instances == les["lesion_id"]
            assert len(np.unique(comps[own])) == 1
            assert np.array_equal(comps == comps[own][0], own)
    for les in a.lesions:
        own = a.instances == les["lesion_id"]
        n = int(own.sum())
        assert n >= P.MIN_LESION_VOXELS
        assert les["volume_ml"] == pytest.approx(n * vv / 1000)
        assert les["diameter_mm"] == pytest.approx((6 * n * vv / np.pi) ** (1 / 3))
        cz, cy, cx = les["centroid_voxel"]
        assert np.allclose((cz, cy, cx), np.argwhere(own).mean(0))
        assert np.allclose(les["centroid_mm"], (cx * a.spacing[0], cy * a.spacing[1], cz * a.spacing[2]))
        assert les["label"] == P.SUBTYPE_LABEL[les["subtype"]]
        assert np.isfinite(les["contrast_hu"])
        # at least LESION_GAP_VOXELS non-lesion voxels to any other lesion, in every direction
        grown = ndimage.binary_dilation(own, FULL, iterations=P.LESION_GAP_VOXELS)
        assert not (grown & tumour & ~own).any()
        # lesions sit in the liver (they may reach its border): most neighbours, also in-plane, are liver
        for structure, least in ((FACE, 0.5), (FACE_XY, 0.4)):
            shell = ndimage.binary_dilation(own, structure) & ~own
            share = (a.label[shell] >= 1).mean()
            assert share >= least
        liver_around.append(share)
    assert (a.tissues[tumour] == T["lesion"]).all()
    return liver_around


def test_every_lesion_is_exactly_one_component(many_small):
    around = []
    for a in many_small:
        around += check_lesion_table(a)
    assert np.mean(around) > 0.7
    a = P.sample_anatomy(np.random.default_rng([11, 1000]), 128)
    assert a.lesions
    check_lesion_table(a)


def test_lesion_population(many_small):
    n_free = sum(not a.lesions for a in many_small)
    assert 3 <= n_free <= 14  # 20% expected of 40
    assert all(len(a.lesions) <= 6 for a in many_small)
    models = [m for a in many_small for m in a.lesion_models]
    drawn = np.array([m.sampled_diameter_mm for m in models])
    assert drawn.min() < 10 and drawn.max() > 30 and np.mean(drawn < 20) > 0.5
    lesions = [les for a in many_small for les in a.lesions]
    benign = np.mean([les["label"] == "benign" for les in lesions])
    assert 0.25 < benign < 0.75  # lesions of a case share a dominant subtype, so this varies
    assert {les["subtype"] for les in lesions} == set(P.SUBTYPES)
    # a coarse grid cannot hold a 6 mm lesion: those are raised to ~10 voxels, the rest keep their size
    for m, les in zip(models, lesions):
        assert les["diameter_mm"] >= 0.6 * m.target_diameter_mm
    # ~20% low-contrast lesions (metastases and HCC at 10-20 HU in the portal reference); the others stand out
    low = np.array([m.low_contrast for m in models])
    assert 0.1 < low.mean() < 0.35
    contrast = np.abs([les["contrast_hu"] for les in lesions])
    assert np.all((contrast[low] > 8) & (contrast[low] < 22))
    malignant = np.array([les["label"] == "malignant" for les in lesions])
    assert np.all(contrast[malignant & ~low] > 18)
    cysts = [les["contrast_hu"] for les in lesions if les["subtype"] == "cyst"]
    assert np.median(cysts) < -60


def test_voxel_sizes_follow_the_drawn_sizes_on_a_fine_grid():
    pairs = []
    for i in range(8):
        a = P.sample_anatomy(np.random.default_rng([12, i]), 96)
        pairs += [(m.sampled_diameter_mm, les["diameter_mm"]) for m, les in zip(a.lesion_models, a.lesions)]
    big = [(d, v) for d, v in pairs if d >= 15]
    assert big and all(abs(v - d) / d < 0.25 for d, v in big)
    assert min(v for _, v in pairs) < 20


def lesion_contrasts(a: P.Anatomy, img: np.ndarray, absolute: bool = False) -> np.ndarray:
    """Mean lesion HU minus mean HU of the liver within 2 voxels; with ``absolute`` the mean absolute
    difference of the lesion's voxels from that liver mean (conspicuity, also of mixed lesions)."""
    out = []
    for les in a.lesions:
        own = a.instances == les["lesion_id"]
        shell = ndimage.binary_dilation(own, FACE, iterations=2) & (a.tissues == T["liver"])
        diff = img[own].astype(float) - img[shell].mean()
        out.append(np.abs(diff).mean() if absolute else diff.mean())
    return np.array(out)


def test_shifted_split_same_anatomy_lower_contrast():
    normal, shifted = [], []
    for i in range(8):
        a, c, img = P.generate_case(6, i, 64)
        b, s, simg = P.generate_shifted(6, i, 64)
        assert np.array_equal(a.label, b.label) and np.array_equal(a.instances, b.instances)
        assert np.array_equal(a.tissues, b.tissues) and a.lesions == b.lesions and a.spacing == b.spacing
        assert not np.array_equal(img, simg)
        assert s.shifted and not c.shifted and s.phase == c.phase
        # fat away from edges (blur differs), not air (the offset pushes air below the -1024 clip)
        fat = ndimage.binary_erosion(a.tissues == T["fat"], structure=np.ones((1, 3, 3), bool))
        off = float(np.median(simg[fat]) - np.median(img[fat]))
        assert off == pytest.approx(s.hu_offset, abs=5)
        if not a.lesions:
            continue
        rng = np.random.default_rng(0)
        clean = P.render(a, dataclasses.replace(c, noise_sd=0.0), rng)
        sclean = P.render(b, dataclasses.replace(s, noise_sd=0.0), rng)
        normal += list(lesion_contrasts(a, clean, absolute=True))
        shifted += list(lesion_contrasts(b, sclean, absolute=True))
    normal, shifted = np.array(normal), np.array(shifted)
    assert len(normal) >= 5
    assert shifted.mean() < normal.mean() - 5
    assert np.mean(shifted < normal) > 0.7


def test_subtype_enhancement_patterns(many_small):
    """Noise-free reference phases: HCC washes in then out, cysts stay near water, haemangiomas fill in."""
    a_by_sub: dict[str, list] = {s: [] for s in P.SUBTYPES}
    for a in many_small:
        if not a.lesions:
            continue
        imgs = {ph: P.render(a, P.reference_conditions(ph), np.random.default_rng(0)) for ph in P.PHASES}
        cons = {ph: lesion_contrasts(a, imgs[ph]) for ph in P.PHASES}
        for k, les in enumerate(a.lesions):
            own = a.instances == les["lesion_id"]
            a_by_sub[les["subtype"]].append({ph: cons[ph][k] for ph in P.PHASES} | {
                "portal_mean": float(imgs["portal"][own].mean()), "art_max": float(imgs["arterial"][own].max()),
                "art_sd": float(imgs["arterial"][own].std()), "del_sd": float(imgs["delayed"][own].std())})
    hcc, cyst, met = a_by_sub["hcc"], a_by_sub["cyst"], a_by_sub["metastasis"]
    assert hcc and cyst and met and a_by_sub["haemangioma"]
    assert np.mean([h["arterial"] > 0 for h in hcc]) > 0.7 and np.mean([h["portal"] < 0 for h in hcc]) > 0.7
    assert np.mean([0 <= c["portal_mean"] <= 50 for c in cyst]) > 0.7
    assert np.mean([m["portal"] < -5 for m in met]) > 0.8
    # haemangioma: discontinuous peripheral nodules far above the liver (70 HU) in the arterial phase, even
    # partial-volumed on this coarse grid; filled in (more homogeneous) by the delayed phase
    hae = a_by_sub["haemangioma"]
    assert np.mean([h["art_max"] > 100 for h in hae]) > 0.6
    assert np.mean([h["del_sd"] < h["art_sd"] for h in hae]) > 0.6


def test_generation_is_fast():
    t = time.perf_counter()
    P.generate_case(0, 0, 64)
    assert time.perf_counter() - t < 3.0  # ~0.1 s unloaded; loose for shared CI machines


def test_liver_field_of_view_is_the_same_body_cropped_around_the_liver():
    """--fov liver: the anatomy of the whole-abdomen draw, cut to the liver's box + margins; every lesion
    inside, the lesion table consistent with the cropped labels, the crop deterministic."""
    margin = (25.0, 30.0)
    for index in (0, 4):
        full = P.sample_anatomy(np.random.default_rng([5, index]), 96)
        crop = P.sample_anatomy(np.random.default_rng([5, index]), 96, liver_margin_mm=margin)
        off = crop.meta["crop_offset_voxel"]
        box = tuple(slice(o, o + n) for o, n in zip(off, crop.label.shape))
        assert crop.meta["uncropped_shape"] == full.label.shape
        assert np.array_equal(crop.label, full.label[box]) and np.array_equal(crop.tissues, full.tissues[box])
        assert (crop.label >= 1).sum() == (full.label >= 1).sum()  # the whole liver is inside
        assert len(crop.lesions) == len(full.lesions)
        # the margins: at least the requested mm around the liver, unless the whole field of view ends first
        liver = np.argwhere(crop.label >= 1)
        sx, sy, sz = crop.spacing
        for axis, mm, s in ((0, margin[1], sz), (1, margin[0], sy), (2, margin[0], sx)):
            lo, hi = liver[:, axis].min(), crop.label.shape[axis] - 1 - liver[:, axis].max()
            assert lo * s >= mm - s or off[axis] == 0
            assert hi * s >= mm - s or off[axis] + crop.label.shape[axis] == full.label.shape[axis]
        assert crop.label.size < 0.6 * full.label.size
        if crop.lesions:
            check_lesion_table(crop)
        again = P.sample_anatomy(np.random.default_rng([5, index]), 96, liver_margin_mm=margin)
        assert np.array_equal(again.label, crop.label)


def test_bowel_is_loops_with_a_thin_wall_around_fluid_faeces_or_gas():
    a, _, _ = P.generate_case(2, 0, 128)
    wall = a.tissues == T["bowel"]
    contents = np.isin(a.tissues, [T["bowel_fluid"], T["feces"]])
    assert wall.sum() > 0 and contents.sum() > 0.1 * wall.sum()  # ~3.5 mm voxels here: the lumens are small
    # a wall, not solid soft tissue (which passes for liver in the arterial phase): an in-plane erosion by one
    # voxel leaves little of it
    assert ndimage.binary_erosion(wall, FACE_XY).sum() < 0.25 * wall.sum()
    # the contents sit inside a wall: hardly any touches fat
    touching_fat = contents & ndimage.binary_dilation(a.tissues == T["fat"], FACE_XY)
    assert touching_fat.sum() < 0.05 * contents.sum()


def test_a_jumped_generator_leaves_its_parent_as_it_is():
    # what keeps v2's other draws those of v1: the bowel and its contents draw from jumped copies
    rng = np.random.default_rng([5, 1])
    state = rng.bit_generator.state
    np.random.Generator(rng.bit_generator.jumped()).random(100)
    assert rng.bit_generator.state == state
    assert rng.random() == np.random.default_rng([5, 1]).random()


def test_the_bowel_loops_change_no_other_tissue_and_no_other_draw(monkeypatch):
    loops = P.sample_anatomy(np.random.default_rng([5, 1]), 64)
    c1 = P.sample_conditions(np.random.default_rng(3))
    monkeypatch.setattr(P, "_structure_bowel", lambda rng, b: None)
    solid = P.sample_anatomy(np.random.default_rng([5, 1]), 64)
    monkeypatch.setattr(P, "_CONTENT_HU", {})
    c0 = P.sample_conditions(np.random.default_rng(3))
    assert np.array_equal(solid.label, loops.label) and np.array_equal(solid.instances, loops.instances)
    assert solid.lesions == loops.lesions
    gut = np.isin(solid.tissues, [T["bowel"], T["gas"]])
    assert np.array_equal(solid.tissues[~gut], loops.tissues[~gut])
    assert (solid.tissues[gut] != loops.tissues[gut]).mean() > 0.3
    assert {k: v for k, v in c1.tissue_hu.items() if k not in ("bowel_fluid", "feces")} == c0.tissue_hu
    assert (c1.noise_sd, c1.phase, c1.texture_hu) == (c0.noise_sd, c0.phase, c0.texture_hu)
