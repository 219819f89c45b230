"""``nnunet-liver env`` and ``plan_and_preprocess`` argument handling (the heavy path is tested in tests/nnunet)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from nnunet_liver.cli.main import main
from nnunet_liver.env import ext_trainer_dir


def test_env_prints_the_entry_folder_and_paths(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", "/somewhere/else")
    assert main(["env", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"export nnUNet_extTrainer={ext_trainer_dir()}:/somewhere/else" in out
    assert f"export nnUNet_raw={tmp_path / 'nnUNet_raw'}" in out
    # the folder holds only the entry module: nnU-Net imports everything in it
    assert sorted(p.name for p in ext_trainer_dir().iterdir() if p.name != "__pycache__") == ["nnunet_liver_trainers.py"]


def test_env_output_is_usable_by_a_shell(tmp_path):
    script = f'eval "$({sys.executable} -m nnunet_liver.cli.main env --root {tmp_path})"; echo "$nnUNet_results"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(tmp_path / "nnUNet_results")


def test_plan_and_preprocess_errors(nnunet_dirs, capsys):
    assert main(["plan_and_preprocess", "-d", "977"]) == 2
    assert "no Dataset977_* folder in nnUNet_raw" in capsys.readouterr().err
    # plans of the same name from stock nnU-Net are not replaced silently
    raw = Path(nnunet_dirs["nnUNet_raw"]) / "Dataset977_X"
    raw.mkdir()
    (raw / "dataset.json").write_text("{}", encoding="utf-8")
    pre = Path(nnunet_dirs["nnUNet_preprocessed"]) / "Dataset977_X"
    pre.mkdir()
    (pre / "nnUNetPlans.json").write_text(json.dumps({"configurations": {}}), encoding="utf-8")
    assert main(["plan_and_preprocess", "-d", "977"]) == 2
    err = capsys.readouterr().err
    assert "was not made by nnunet-liver" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1


def test_missing_environment_is_explained(monkeypatch, capsys):
    for k in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.delenv(k, raising=False)
    assert main(["plan_and_preprocess", "-d", "990"]) == 2
    assert "nnUNet_raw" in capsys.readouterr().err
