"""Shared fixtures: nnU-Net folders in tmp, the real CTs, and one tiny preprocessed phantom data set."""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str, module_name: str | None = None):
    """``scripts/<name>.py`` imported as a module (the scripts are not a package); ``module_name`` keeps
    two loads of one script apart."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(module_name or name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def real_dir() -> Path:
    """The real CTs the repository carries (nnunet_liver/data/real), not ../shared: a clone has only itself."""
    from nnunet_liver.data.real_ct import REAL_CT_DIR

    return REAL_CT_DIR


def nnunet_env(root: Path) -> dict[str, str]:
    from nnunet_liver.env import nnunet_environment

    env = nnunet_environment(root)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[k]).mkdir(parents=True, exist_ok=True)
    env["nnUNet_n_proc_DA"] = "1"
    env["nnUNet_def_n_proc"] = "1"
    return env


@pytest.fixture
def nnunet_dirs(tmp_path, monkeypatch) -> dict[str, str]:
    """nnU-Net's folders in a fresh tmp folder, set in os.environ for the test."""
    env = nnunet_env(tmp_path / "nnunet")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def subprocess_env(env: dict[str, str]) -> dict[str, str]:
    full = dict(os.environ)
    full.update(env)
    full["PATH"] = str(Path(sys.executable).parent) + os.pathsep + full.get("PATH", "")
    full.setdefault("OMP_NUM_THREADS", "2")
    return full


@contextlib.contextmanager
def set_environ(env: dict[str, str]) -> Iterator[None]:
    """Set ``env`` in os.environ for the block (session fixtures cannot use monkeypatch), then restore."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_phantoms(tmp_path_factory) -> dict[str, str]:
    """5 training + 2 test phantoms of size 48, planned and preprocessed (2d and 3d_fullres) with raw HU.

    Returns the nnU-Net environment (folders) holding Dataset990_LiverPhantom.
    """
    from nnunet_liver.data.synth_dataset import SynthSettings, write_phantom_dataset
    from nnunet_liver.planners.api import plan_and_preprocess

    root = tmp_path_factory.mktemp("tiny_phantoms")
    env = nnunet_env(root)
    with set_environ(env):
        write_phantom_dataset(env["nnUNet_raw"], SynthSettings(num_train=5, num_test=2, size=48, seed=3),
                              progress=False)
        plan_and_preprocess(990, configurations=("2d", "3d_fullres"), num_processes=1, verify=True)
    return env
