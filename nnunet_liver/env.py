"""nnU-Net environment variables: the one place this package reads or sets them.

nnU-Net reads ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results`` and ``nnUNet_extTrainer``
lazily from ``os.environ``; the ``nnunet-liver`` commands call :func:`activate` at their edge, so the
stock ``nnUNetv2_*`` commands they start (and their worker processes) see the same values.
"""
from __future__ import annotations

import os
from pathlib import Path

NNUNET_PATH_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
EXT_TRAINER_VAR = "nnUNet_extTrainer"


def ext_trainer_dir() -> Path:
    """The folder to put on ``nnUNet_extTrainer``: it holds only the entry module of our trainers."""
    return Path(__file__).resolve().parent / "_ext_trainer"


def paths_for_root(root: str | os.PathLike) -> dict[str, str]:
    """nnU-Net's three folders under one working folder (the layout the demo and tests use)."""
    root = Path(root).resolve()
    return {
        "nnUNet_raw": str(root / "nnUNet_raw"),
        "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
        "nnUNet_results": str(root / "nnUNet_results"),
    }


def ext_trainer_value(current: str | None) -> str:
    """``current`` with our entry folder prepended (once)."""
    ours = str(ext_trainer_dir())
    parts = [p for p in (current or "").split(os.pathsep) if p and p != ours]
    return os.pathsep.join([ours, *parts])


def nnunet_environment(root: str | os.PathLike | None = None, base: dict | None = None) -> dict[str, str]:
    """The variables to set: our trainer folder always, nnU-Net's paths when ``root`` is given."""
    base = os.environ if base is None else base
    env = {EXT_TRAINER_VAR: ext_trainer_value(base.get(EXT_TRAINER_VAR))}
    if root is not None:
        env.update(paths_for_root(root))
    return env


def activate(root: str | os.PathLike | None = None) -> dict[str, str]:
    """Set the variables in this process (inherited by subprocesses); returns what was set."""
    env = nnunet_environment(root)
    os.environ.update(env)
    if root is not None:
        for var in NNUNET_PATH_VARS:
            Path(env[var]).mkdir(parents=True, exist_ok=True)
    return env


def require_paths(*names: str) -> dict[str, Path]:
    """nnU-Net folders that a command needs; a clear message when one is missing."""
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        from nnunet_liver.cli.main import UsageError

        raise UsageError(
            f"environment variable(s) {', '.join(missing)} not set: export them as for nnU-Net, "
            f"or run: eval \"$(nnunet-liver env --root DIR)\""
        )
    return {n: Path(os.environ[n]) for n in names}
