"""Where one training iteration of a CPU preset spends its time, and what the CPU recipe's choices buy.

For each trainer (default: DualStreamTrainer_CPU and LiverUNetTrainer_CPU, 3d_fullres, on an already
preprocessed data set), in this one process and one after the other:

- batch loading + augmentation (nnU-Net's dataloader in-process, ``nnUNet_n_proc_DA=0``), forward + loss,
  backward + optimiser step, a validation step, and nnU-Net's per-epoch bookkeeping (checkpoint + progress
  plot), as process CPU seconds per iteration (robust to other load on the machine) and wall seconds;
- the same training step in float32 and under bf16 autocast, channels-last or not: ratios against float32.

    python scripts/profile_cpu_step.py -d 990 --iterations 12        # needs nnUNet_preprocessed/Dataset990_*

Prints a table and writes ``--out`` (JSON) when given.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def profile(trainer_name: str, configuration: str, dataset: str, iterations: int, bf16: bool,
            channels_last: bool) -> dict:
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(dataset, configuration, 0, trainer_name, device=torch.device("cpu"))
    trainer.on_train_start()
    trainer.cpu_bf16 = bf16
    if channels_last:
        fmt = torch.channels_last_3d if configuration.startswith("3d") else torch.channels_last
        trainer.network = trainer.network.to(memory_format=fmt)
    net, loss = trainer.network, trainer.loss
    cpu = {"load": 0.0, "forward_loss": 0.0, "backward_step": 0.0}
    wall = dict.fromkeys(cpu, 0.0)

    def clock():
        return time.process_time(), time.perf_counter()

    for i in range(iterations + 2):  # two warm-up iterations
        c0, w0 = clock()
        batch = next(trainer.dataloader_train)
        c1, w1 = clock()
        trainer.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            output = net(batch["data"])
            value = loss(output, batch["target"])
        c2, w2 = clock()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            value.backward()
        trainer.optimizer.step()
        c3, w3 = clock()
        if i >= 2:
            for key, (a, b, x, y) in (("load", (c0, c1, w0, w1)), ("forward_loss", (c1, c2, w1, w2)),
                                      ("backward_step", (c2, c3, w2, w3))):
                cpu[key] += b - a
                wall[key] += y - x
    c0, w0 = clock()
    with torch.no_grad():
        for _ in range(3):
            trainer.validation_step(next(trainer.dataloader_val))
    c1, w1 = clock()
    trainer.logger.log("train_losses", 0.5, 0)
    trainer.logger.log("val_losses", 0.5, 0)
    trainer.logger.log("dice_per_class_or_region", [0.5, 0.1], 0)
    trainer.logger.log("mean_fg_dice", 0.3, 0)
    trainer.logger.log("ema_fg_dice", 0.3, 0)
    trainer.logger.log("epoch_start_timestamps", time.time(), 0)
    trainer.logger.log("epoch_end_timestamps", time.time(), 0)
    trainer.logger.log("lrs", 1e-3, 0)
    c2, w2 = clock()
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_profile.pth"))
    trainer.logger.plot_progress_png(trainer.output_folder)
    c3, w3 = clock()
    os.remove(os.path.join(trainer.output_folder, "checkpoint_profile.pth"))
    result = {"trainer": trainer_name, "patch": list(trainer.configuration_manager.patch_size),
              "batch": trainer.batch_size, "bf16": bf16, "channels_last": channels_last,
              "threads": torch.get_num_threads(),
              "cpu_s_per_iteration": {k: v / iterations for k, v in cpu.items()},
              "wall_s_per_iteration": {k: v / iterations for k, v in wall.items()},
              "validation_step_cpu_s": (c1 - c0) / 3, "epoch_bookkeeping_cpu_s": c3 - c2,
              "epoch_bookkeeping_wall_s": w3 - w2}
    result["cpu_s_per_iteration"]["total"] = sum(cpu.values()) / iterations
    result["wall_s_per_iteration"]["total"] = sum(wall.values()) / iterations
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", dest="dataset", default="990")
    p.add_argument("-c", dest="configuration", default="3d_fullres")
    p.add_argument("-tr", dest="trainers", nargs="+", default=["DualStreamTrainer_CPU", "LiverUNetTrainer_CPU"])
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args()
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    os.environ.setdefault("NNUNET_LIVER_SEED", "0")
    import torch

    from nnunet_liver.env import activate

    if not os.environ.get("nnUNet_preprocessed"):
        raise SystemExit("set nnUNet_raw/nnUNet_preprocessed/nnUNet_results (eval \"$(nnunet-liver env --root DIR)\")")
    activate(None)
    # on_train_start writes plans, logs and a progress plot into nnUNet_results: keep real models out of it
    import tempfile

    os.environ["nnUNet_results"] = tempfile.mkdtemp(prefix="profile_cpu_step_")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for name in args.trainers:
        for bf16, cl in ((False, False), (True, False), (True, True)):
            r = profile(name, args.configuration, args.dataset, args.iterations, bf16, cl)
            results.append(r)
            base = next(x for x in results if x["trainer"] == name and not x["bf16"] and not x["channels_last"])
            c, b = r["cpu_s_per_iteration"], base["cpu_s_per_iteration"]
            print(f"{name:28s} patch {r['patch']} batch {r['batch']} threads {r['threads']} bf16={bf16!s:5} "
                  f"channels_last={cl!s:5} CPU s/it: load {c['load']:.3f} fwd+loss {c['forward_loss']:.3f} "
                  f"bwd+step {c['backward_step']:.3f} total {c['total']:.3f} ({c['total'] / b['total']:.2f}x fp32); "
                  f"val step {r['validation_step_cpu_s']:.3f}; epoch bookkeeping {r['epoch_bookkeeping_cpu_s']:.2f} s",
                  flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
