"""``nnUNetv2_train ... -num_gpus 2`` without GPUs: nnU-Net's own DDP code path (``run_ddp``), run on CPU.

nnU-Net's DDP path assumes CUDA in exactly two places: it puts each rank on ``cuda:<rank>`` and wraps the
network with ``DDP(network, device_ids=[rank])``. The worker below is ``run_ddp`` with those two lines
moved to the CPU (gloo instead of NCCL); everything else (per-rank batch size, the DDP Dice loss, the
all-gathers at epoch end, checkpoints written by rank 0, validation split over the ranks with barriers)
is stock nnU-Net running our trainer. It catches parameters that get no gradient (DDP then fails on the
next step), state that differs between ranks, and ranks that draw the same batches.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import subprocess_env
from tests.nnunet.test_segmentation_trainers import BUDGET

WORKER = r"""
import hashlib, json, pathlib, sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as base
from nnunetv2.run.run_training import get_trainer_from_args

rank, world, init_file, trainer_name, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
base.DDP = lambda module, device_ids=None: DistributedDataParallel(module)  # CPU: no device_ids
trainer = get_trainer_from_args("990", "3d_fullres", 0, trainer_name, "nnUNetPlans", False, torch.device("cpu"))
trainer.device, trainer.grad_scaler = torch.device("cpu"), None  # __init__ put a DDP rank on cuda:<rank>
seed = torch.initial_seed()
trainer.run_training()
trainer.perform_actual_validation(False)
net = trainer.network.module if hasattr(trainer.network, "module") else trainer.network
digest = hashlib.sha256(b"".join(v.detach().cpu().numpy().tobytes() for v in net.state_dict().values())).hexdigest()
result = {"rank": rank, "world": dist.get_world_size(), "batch_size": trainer.batch_size, "seed": seed,
          "params": digest, "ddp": type(trainer.network).__name__}
dist.destroy_process_group()
pathlib.Path(out).write_text(json.dumps(result), encoding="utf-8")
"""


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["DualStreamTrainer_CPU", "DualStreamAblationRWAAttTrainer_CPU"])
def test_two_rank_ddp_training_and_validation(trainer, tiny_phantoms, tmp_path):
    env = subprocess_env(dict(tiny_phantoms, **BUDGET, nnUNet_n_proc_DA="0", OMP_NUM_THREADS="1",
                              nnUNet_results=str(tmp_path / "results")))
    init = tmp_path / "ddp_init"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(r), "2", str(init), trainer,
                               str(tmp_path / f"rank{r}.json")], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace")
             for r in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(2)]
    assert all(r["ddp"] == "DistributedDataParallel" and r["world"] == 2 for r in ranks)
    assert [r["batch_size"] for r in ranks] == [1, 1]  # the global batch of 2, split over the ranks
    assert ranks[0]["params"] == ranks[1]["params"], "the ranks' weights diverged: gradients not synchronised"
    assert ranks[0]["seed"] != ranks[1]["seed"], "both ranks seeded alike: they would draw the same batches"
    fold = tmp_path / "results" / "Dataset990_LiverPhantom" / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    summary = json.loads((fold / "validation" / "summary.json").read_text(encoding="utf-8"))
    assert summary["metric_per_case"], "validation wrote no case"
    # rank 0's checkpoint holds the weights both ranks ended with
    state = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    assert hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest() == ranks[0]["params"]
