"""Near-duplicate search of ``nnunet-liver merge``: fingerprint time at LiTS size, and the score distributions
of duplicates and of different patients that justify the thresholds.

1. LiTS-size phantoms: ``--cases`` phantoms (``nnunet_liver.data.phantoms``, size 128) upsampled to
   ``--slices`` x 512 x 512 int16 with 10 HU noise, written as .nii.gz; the first ``--reexported`` also
   re-exported as LiTS does and worse (honest flip + float32, lying flip + 3 slices cropped, +1024 HU offset + noise, linear
   resampling to 0.9x spacing). Each file is fingerprinted as ``merge`` does (read included): seconds per
   case, wall and CPU. Every pair is scored and each re-export verified voxel by voxel.
2. Score distributions on more patients, in memory: ``--family`` phantoms of one seed on one common grid
   (so the field-of-view check cannot help; scored with it off) and the two real CTs on that grid, against
   each other; the real CTs against their own re-exports.

    OMP_NUM_THREADS=1 python scripts/bench_merge.py [--cases 3] [--reexported 1] [--slices 400] [--family 30]
        [--out bench/merge]

Single-threaded (SimpleITK too); 3-5 minutes with the defaults, most of it making the volumes. Prints a summary and writes
``results.json`` into ``--out``; the volumes are deleted at the end.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402


def _like(arr: np.ndarray, img: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(arr)
    out.SetSpacing(img.GetSpacing())
    out.SetOrigin(img.GetOrigin())
    out.SetDirection(img.GetDirection())
    return out


def lying_flip(img: sitk.Image, axis: int) -> sitk.Image:
    return _like(np.ascontiguousarray(np.flip(sitk.GetArrayFromImage(img), 2 - axis)), img)


def offset_noise(img: sitk.Image, hu: float = 1024.0, sd: float = 10.0, seed: int = 0) -> sitk.Image:
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    arr += hu + np.random.default_rng(seed).normal(0, sd, arr.shape).astype(np.float32)
    return _like(arr, img)


def resampled(img: sitk.Image, factor: float = 0.9) -> sitk.Image:
    spacing = np.array(img.GetSpacing()) * factor
    size = [int(round(n / factor)) for n in img.GetSize()]
    d = np.array(img.GetDirection()).reshape(3, 3)
    origin = np.array(img.GetOrigin()) + d @ ((spacing - np.array(img.GetSpacing())) / 2)
    return sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, tuple(origin), tuple(spacing),
                         img.GetDirection(), -1024.0, sitk.sitkFloat32)


REEXPORTS = {
    "honest flip x + float32": lambda i: sitk.Cast(sitk.Flip(i, [True, False, False]), sitk.sitkFloat32),
    "lying flip y + 3 slices cropped": lambda i: lying_flip(i, 1)[:, :, 3:],
    "+1024 HU offset + noise 10 HU": offset_noise,
    "linear resampling 0.9x spacing": resampled,
}


def lits_size_phantom(index: int, slices: int, seed: int) -> sitk.Image:
    """A phantom (size 128) upsampled to slices x 512 x 512 int16, LiTS geometry (LPS direction diag(-1,-1,1))."""
    from scipy import ndimage

    from nnunet_liver.data.phantoms import generate_case

    anatomy, _, arr = generate_case(seed, index, 128)
    zoom = (slices / arr.shape[0], 4, 4)
    big = ndimage.zoom(arr.astype(np.float32), zoom, order=1)
    big += np.random.default_rng([seed, index]).normal(0, 10, big.shape).astype(np.float32)
    img = sitk.GetImageFromArray(np.clip(np.round(big), -1024, 3071).astype(np.int16))
    sx, sy, sz = anatomy.spacing
    img.SetSpacing((sx / 4, sy / 4, sz * arr.shape[0] / slices))
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    return img


def common_grid(img: sitk.Image, size=(64, 64, 32), spacing=(6.0, 6.0, 6.0)) -> sitk.Image:
    ref = sitk.Image(list(size), sitk.sitkInt16)
    ref.SetSpacing(spacing)
    centre = img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in img.GetSize()])
    ref.SetOrigin([c - sp * (n - 1) / 2 for c, sp, n in zip(centre, spacing, size)])
    return sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkInt16)


def summary(values) -> dict:
    v = np.asarray(values, float)
    if not len(v):
        return {"n": 0}
    return {"n": int(len(v)), "min": round(float(v.min()), 4), "median": round(float(np.median(v)), 4),
            "p95": round(float(np.percentile(v, 95)), 4), "p99": round(float(np.percentile(v, 99)), 4),
            "max": round(float(v.max()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=3, help="LiTS-size phantoms (default 3)")
    parser.add_argument("--reexported", type=int, default=1,
                        help="how many of them are also re-exported in the 4 ways (default 1)")
    parser.add_argument("--slices", type=int, default=400, help="slices of each LiTS-size phantom (default 400)")
    parser.add_argument("--family", type=int, default=30, help="phantoms of one seed on a common grid (default 30)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=Path("bench/merge"))
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)

    from nnunet_liver.data import fingerprint as fp
    from nnunet_liver.data.real_ct import CRLM_CT, TOTALSEG_CT

    work = args.out / "volumes"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results: dict = {"settings": vars(args) | {"out": str(args.out)}, "thresholds": {
        "candidate_score": fp.CANDIDATE_SCORE, "duplicate_detail_ncc": fp.DUPLICATE_DETAIL_NCC}}

    # 1. LiTS size: write, fingerprint from the files, score, verify
    files: dict[str, Path] = {}
    t0 = time.perf_counter()
    for i in range(args.cases):
        img = lits_size_phantom(i, args.slices, args.seed)
        files[f"case{i}"] = work / f"case{i}.nii.gz"
        sitk.WriteImage(img, str(files[f"case{i}"]), useCompression=True, compressionLevel=1)
        if i < args.reexported:
            for k, (name, change) in enumerate(REEXPORTS.items()):
                files[f"case{i} | {name}"] = work / f"case{i}_re{k}.nii.gz"
                sitk.WriteImage(change(img), str(files[f"case{i} | {name}"]), useCompression=True,
                                compressionLevel=1)
    print(f"wrote {len(files)} LiTS-size volumes in {time.perf_counter() - t0:.0f} s")
    prints, wall, cpu = {}, [], []
    for key, path in files.items():
        w, c = time.perf_counter(), time.process_time()
        prints[key] = fp.fingerprint_image(path)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    shapes = [tuple(p.shape) for p in prints.values()]
    results["fingerprint_seconds_per_case"] = {"wall": summary(wall), "cpu": summary(cpu),
                                               "mean_slices": float(np.mean([s[0] for s in shapes]))}
    lits_pairs = []
    c = time.process_time()
    for a, b in itertools.combinations(prints, 2):
        match = fp.compare(prints[a], prints[b])
        same = a.split(" | ")[0] == b.split(" | ")[0]
        lits_pairs.append({"a": a, "b": b, "duplicate": same, "score": None if match is None else match.score,
                           "match": match})
    compare_ms = 1000 * (time.process_time() - c) / len(lits_pairs)
    verify_s = []
    for p in lits_pairs:
        if p["duplicate"] or (p["score"] is not None and p["score"] >= fp.CANDIDATE_SCORE):
            c = time.process_time()
            ev = fp.verify(files[p["a"]], files[p["b"]], p["match"].alignment)
            verify_s.append(time.process_time() - c)
            p.update(detail_ncc=ev.detail_ncc, voxel_ncc=ev.voxel_ncc, hu_offset=ev.hu_offset, z_shift_slices=ev.z_shift_slices,
                     header=ev.header, array_flips=p["match"].alignment.array_flips)
    results["lits_size"] = {
        "compare_ms_per_pair_cpu": round(compare_ms, 2), "verify_seconds_per_pair_cpu": summary(verify_s),
        "pairs": [{k: v for k, v in p.items() if k != "match"} for p in lits_pairs]}

    # 2. distributions on more patients (in memory)
    from nnunet_liver.data.phantoms import generate_case

    family = []
    for i in range(args.family):
        anatomy, _, arr = generate_case(args.seed + 1, i, 96)
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(anatomy.spacing)
        family.append((f"phantom{i}", common_grid(img)))
    real = [(p.name.split("_")[0], sitk.ReadImage(str(p))) for p in (CRLM_CT, TOTALSEG_CT)]
    family += [(f"{name} (common grid)", common_grid(img)) for name, img in real]

    def of(img):
        return fp.fingerprint_array(sitk.GetArrayViewFromImage(img), img.GetSpacing(), img.GetDirection())

    family_prints = [(name, of(img)) for name, img in family]
    different = []
    for (na, a), (nb, b) in itertools.combinations(family_prints, 2):
        match = fp.compare(a, b, check_fov=False)
        different.append((-1.0 if match is None else match.score, na, nb))
    different.sort(reverse=True)
    # the voxel check on the closest different pairs (the thumbnail score keeps them from it in a merge)
    images = dict(family)
    closest = []
    for score, na, nb in different[:3]:
        sitk.WriteImage(images[na], str(work / "a.nii.gz"))
        sitk.WriteImage(images[nb], str(work / "b.nii.gz"))
        match = fp.compare(dict(family_prints)[na], dict(family_prints)[nb], check_fov=False)
        ev = fp.verify(work / "a.nii.gz", work / "b.nii.gz", match.alignment)
        closest.append({"a": na, "b": nb, "score": score, "detail_ncc": ev.detail_ncc, "voxel_ncc": ev.voxel_ncc})
    real_dups = []
    for name, img in real:
        base = of(img)
        for change_name, change in REEXPORTS.items():
            match = fp.compare(base, of(change(img)))
            real_dups.append((match.score, f"{name} | {change_name}"))
    dup_scores = [p["score"] for p in lits_pairs if p["duplicate"]] + [s for s, _ in real_dups]
    other_scores = ([p["score"] for p in lits_pairs if not p["duplicate"] and p["score"] is not None]
                    + [s for s, _, _ in different])
    results["distributions"] = {
        "duplicates": summary(dup_scores), "different_patients": summary(other_scores),
        "different_patients_top": closest,
        "real_ct_reexports": [{"score": s, "what": w} for s, w in real_dups],
        "lits_size_pairs_without_alignment": sum(p["score"] is None for p in lits_pairs)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)

    f = results["fingerprint_seconds_per_case"]
    print(f"fingerprint per case at LiTS size ({f['mean_slices']:.0f} x 512 x 512 mean, read included): "
          f"CPU median {f['cpu']['median']:.2f} s (max {f['cpu']['max']:.2f}), wall median {f['wall']['median']:.2f} s "
          f"on this machine now")
    print(f"  -> LiTS + 3D-IRCADb (151 cases, ~{f['mean_slices']:.0f} slices): {151 * f['cpu']['median'] / 60:.1f} min "
          f"of CPU, ~{151 * f['cpu']['median'] / 120:.1f} min with -np 2 on two free cores")
    print(f"pairwise score: {compare_ms:.1f} ms CPU per pair at LiTS size -> 151 cases (11,325 pairs): "
          f"~{11325 * compare_ms / 1000:.0f} s; voxel verification: {summary(verify_s).get('median', 0):.1f} s per candidate")
    print("LiTS-size pairs:")
    for p in lits_pairs:
        if p["duplicate"] or (p["score"] or 0) >= 0.5:
            extra = (f" detail NCC {p['detail_ncc']:.4f}, voxel NCC {p['voxel_ncc']:.4f}, header {p['header']}, array flips {p['array_flips']}, "
                     f"z shift {p['z_shift_slices']:+g}, HU offset {p['hu_offset']:+.1f}") if "voxel_ncc" in p else ""
            print(f"  {'DUP ' if p['duplicate'] else 'diff'} {p['score']:.4f}  {p['a']} ~ {p['b']}{extra}")
    d = results["distributions"]
    print(f"scores of duplicates        : {d['duplicates']}")
    print(f"scores of different patients: {d['different_patients']}")
    print("  closest different pairs: " + "; ".join(f"{c['a']}~{c['b']} score {c['score']:.3f}, detail NCC "
                                                    f"{c['detail_ncc']:.3f}, voxel NCC {c['voxel_ncc']:.3f}"
                                                    for c in closest))
    dup = [p for p in lits_pairs if p["duplicate"]]
    if dup:
        print(f"duplicates at LiTS size: detail NCC min {min(p['detail_ncc'] for p in dup):.4f}, voxel NCC min "
              f"{min(p['voxel_ncc'] for p in dup):.4f}")
    print(f"thresholds: candidates from score {fp.CANDIDATE_SCORE}, duplicates from detail NCC "
          f"{fp.DUPLICATE_DETAIL_NCC}")
    print(f"results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
