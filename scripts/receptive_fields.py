#!/usr/bin/env python
"""Effective receptive fields of the dual-stream network's two streams (issue 12).

For one output position at the centre of a patch, the gradient with respect to the input (Luo et al.
2016; ``nnunet_liver.architectures.receptive_field``), averaged over random HU inputs, in eval mode:

- spatial stream: the fusion conv's spatial part, ``net.fusion(net.spatial_features(xw)[0])``;
- contextual stream: its term of the fusion conv, ``net.context_features(xw)``;
- the whole network (the tumour logit).

Per axis (z, y, x): the theoretical extent (``rel_tol`` 1e-3: InstanceNorm and the global-context vector give
every voxel a tiny gradient), the extent holding 95 % of |grad|, and the gradient-weighted std, in voxels.

    python scripts/receptive_fields.py                                    # DualStreamTrainer at the LiTS-like plan
    python scripts/receptive_fields.py -m RESULTS/.../DualStreamTrainer_CPU__nnUNetPlans__3d_fullres -f 0
    python scripts/receptive_fields.py --inplane 256                       # a smaller in-plane patch

Without ``-m`` the network is untrained (He initialisation): the fields then show what the architecture
allows; with a trained model, what it learned to use.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def build(args):
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_liver import trainers
    from nnunet_liver.trainers.segmentation import liver_tumour_regions

    if args.model:
        model = Path(args.model)
        plans = json.loads((model / "plans.json").read_text(encoding="utf-8"))
        dataset_json = json.loads((model / "dataset.json").read_text(encoding="utf-8"))
        cls = getattr(trainers, model.name.split("__")[0])
    else:
        from nnunet_liver.planners.lits_like import lits_like_plans

        cls = getattr(trainers, args.trainer)
        plans, dataset_json = lits_like_plans()
        plans = cls.rewrite_plans(plans, "3d_fullres")
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    lm = pm.get_label_manager(liver_tumour_regions(dataset_json))
    net = cls.build_network_architecture(pm, cm, 1, lm.num_segmentation_heads, False)
    if args.model:
        ckpt = torch.load(Path(args.model) / f"fold_{args.fold}" / "checkpoint_final.pth", map_location="cpu",
                          weights_only=False)
        net.load_state_dict(ckpt["network_weights"])
    patch = list(cm.patch_size)
    if args.inplane:
        patch = [patch[0], *(min(p, args.inplane) for p in patch[1:])]
    return net.eval(), patch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", help="a trained DualStream model folder (default: untrained, LiTS-like plan)")
    p.add_argument("-f", "--fold", default="0")
    p.add_argument("-tr", "--trainer", default="DualStreamTrainer", help="trainer whose plans to use without -m")
    p.add_argument("--inplane", type=int, default=0, help="cap the in-plane patch (0: planned)")
    p.add_argument("--samples", type=int, default=2, help="random inputs averaged (default 2)")
    p.add_argument("--mass", type=float, default=0.95)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)

    import torch

    from nnunet_liver.architectures.receptive_field import effective_receptive_field

    torch.set_grad_enabled(True)
    net, patch = build(args)

    def hu(x):  # the random input is N(0, 1); make it CT-like before the window
        return x * 150 + 40

    streams = {
        "spatial stream": lambda x: net.fusion(net.spatial_features(net.window(hu(x)))[0]).unsqueeze(0)
        .transpose(1, 2),
        "contextual stream": lambda x: net.context_features(net.window(hu(x))).unsqueeze(0).transpose(1, 2),
        "whole network": lambda x: net(hu(x))[:, -1:],
    }
    if not net.use_context:
        streams.pop("contextual stream")
    rows = {}
    print(f"{type(net).__name__}, patch {patch} (z, y, x), {'trained: ' + args.model if args.model else 'untrained'}")
    print("| stream | theoretical extent | 95 % of |grad| within | std (voxels) |")
    print("|---|---|---|---|")
    for name, fn in streams.items():
        r = effective_receptive_field(fn, (1, 1, *patch), mass=args.mass, n_samples=args.samples, rel_tol=1e-3)
        rows[name] = {k: r[k] for k in ("theoretical_extent", "mass_extent", "std")}
        print(f"| {name} | {' x '.join(str(v) for v in r['theoretical_extent'])} | "
              f"{' x '.join(str(v) for v in r['mass_extent'])} | {' x '.join(f'{v:.1f}' for v in r['std'])} |",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"patch": patch, "model": args.model, "fields": rows}, indent=2),
                                   encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
