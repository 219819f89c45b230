"""``nnunet-liver postprocess``: the post-processing of ``nnunet-liver predict``, on a folder of label maps.

``nnUNetv2_predict`` writes raw label maps; ``nnunet-liver predict`` keeps the largest connected liver
component of each (liver and tumour together) before it measures lesions. This applies the same step to a
folder of predictions (from ``nnUNetv2_predict`` or anything else that writes 0/1/2 label maps), so that
they can be evaluated as ``nnunet-liver predict`` would have delivered them.
"""
from __future__ import annotations

import argparse
import json

TUMOUR_LABEL = 2


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "postprocess",
        help="keep the largest connected liver component of every label map in a folder (as predict does)",
        description="Keep the largest face-connected component of liver and tumour together in every .nii.gz/.nii "
        "label map of -i (what nnunet-liver predict does by default) and write them under the same names to -o, "
        "with postprocessing.json (per case: liver components, liver and tumour voxels removed). The input "
        "folder is never modified; -o is written whole or not at all.",
    )
    p.add_argument("-i", dest="input", required=True, help="folder of predicted label maps (0 background, 1 liver, "
                   "2 tumour), e.g. the -o of nnUNetv2_predict")
    p.add_argument("-o", dest="output", required=True, help="output folder (refused if it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import SimpleITK as sitk

    from nnunet_liver.cli.main import UsageError
    from nnunet_liver.data.images import ImageError, label_array_checked, read_image
    from nnunet_liver.data.io import OutputExistsError, staged_dir
    from nnunet_liver.evaluation.lits import EvaluationInputError, list_cases
    from nnunet_liver.inference.postprocess import Postprocessing

    source, out = Path(args.input).resolve(), Path(args.output).resolve()
    if not source.is_dir():
        raise UsageError(f"{source}: no such folder")
    if out == source or out.is_relative_to(source) or source.is_relative_to(out):
        raise UsageError(f"{out}: the output folder must not be, hold or lie inside the input folder {source} "
                         "(the input is never modified)")
    try:
        cases = list_cases(source)
    except EvaluationInputError as e:
        raise UsageError(str(e)) from None
    if not cases:
        raise UsageError(f"{source}: no label maps (.nii.gz or .nii)")
    post = Postprocessing()
    report = {"method": post.method, "input": str(source), "cases": {}}
    try:
        with staged_dir(out, overwrite=args.overwrite) as tmp:
            for case, path in cases.items():
                image = read_image(path, "label map")
                seg = np.asarray(label_array_checked(image, path, what="label map (0 background, 1 liver, "
                                                     f"{TUMOUR_LABEL} tumour)", max_value=TUMOUR_LABEL))
                voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
                kept, counts = post.apply(seg, TUMOUR_LABEL, voxel_ml)
                written = sitk.GetImageFromArray(kept)
                written.CopyInformation(image)
                sitk.WriteImage(written, str(tmp / Path(path).name), useCompression=True)
                report["cases"][case] = counts
                print(f"{case}: {counts['liver_components']} liver component(s); removed "
                      f"{counts['liver_voxels_dropped']} liver and {counts['tumour_voxels_dropped']} tumour voxels")
            (tmp / "postprocessing.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    except (ImageError, OutputExistsError, PermissionError) as e:
        raise UsageError(str(e)) from None
    print(f"wrote {len(cases)} label map(s) to {out}")
    return 0
