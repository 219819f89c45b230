"""bench_segmentation's saved-run key: a run is redone when the code it depends on changes, and only then."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_script

WINDOWED = "nnunet_liver.architectures.windowed"
DUAL_STREAM = "nnunet_liver.architectures.dual_stream"


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_segmentation", "bench_segmentation_fingerprint")


def test_network_code_enters_only_the_runs_of_the_networks_that_import_it(bench):
    unet = {p.name for p in bench._import_closure(WINDOWED)}
    dual = {p.name for p in bench._import_closure(DUAL_STREAM)}
    assert {"windowed.py", "windowing.py"} <= unet and not {"attention.py", "dual_stream.py"} & unet
    assert {"dual_stream.py", "attention.py", "context.py", "residual.py", "windowing.py"} <= dual
    keys = {bench.code_fingerprint(WINDOWED), bench.code_fingerprint(DUAL_STREAM), bench.code_fingerprint()}
    assert len(keys) == 3


def _edited(monkeypatch, name: str, text: str) -> None:
    """Path.read_text of the source file whose path ends with ``name`` returns it with ``text`` appended."""
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: real(self, *a, **k) + text
                        if self.as_posix().endswith(name) else real(self, *a, **k))


def test_a_change_to_dual_stream_blocks_keeps_the_unet_key(bench, monkeypatch):
    before = bench.code_fingerprint(WINDOWED), bench.code_fingerprint(DUAL_STREAM)
    _edited(monkeypatch, "blocks/attention.py", "\nEDITED = 1\n")
    after = bench.code_fingerprint(WINDOWED), bench.code_fingerprint(DUAL_STREAM)
    assert after[0] == before[0] and after[1] != before[1]


def test_comments_docstrings_and_other_trainers_keep_a_trainers_key(bench, monkeypatch):
    def key(trainer="DualStreamTrainer_CPU"):
        return bench.code_fingerprint(DUAL_STREAM, trainer)

    before = key()
    assert before != key("DualStreamNoRWATrainer_CPU")  # its own class is part of the key
    for name, text in (
            ("blocks/attention.py", "\n# a comment\n"),
            ("trainers/segmentation.py", '\n\nclass NewTrainer(DualStreamTrainer):\n    """A new one."""\n    window = "x"\n'),
            ("trainers/cpu.py", "\n\nclass NewTrainer_CPU(_CPUDualStream, DualStreamNoRWATrainer):\n    pass\n"),
            ("trainers/__init__.py", "\n__all__ = [*__all__, 'NewTrainer']\n")):
        with monkeypatch.context() as m:
            _edited(m, name, text)
            assert key() == before, name
    # a docstring edited in place: the same key
    real = Path.read_text
    with monkeypatch.context() as m:
        m.setattr(Path, "read_text", lambda self, *a, **k: real(self, *a, **k).replace(
            "The paper's model: 2.5D ResNet-34", "The paper's model, a 2.5D ResNet-34") if self.as_posix().endswith("trainers/segmentation.py")
            else real(self, *a, **k))
        assert key() == before
    # ... but code the trainer runs changes it: a base's body, a helper its classes call, a mixin
    for name, text in (("trainers/segmentation.py", "\nDualStreamTrainer.window = 'fixed_paper'\n"),
                       ("trainers/_mixins.py", "\n\ndef cpu_bf16_supported():\n    return False\n"),
                       ("augment/window.py", "\nEDITED = 1\n")):
        with monkeypatch.context() as m:
            _edited(m, name, text)
            assert key() != before, name


def test_network_module_follows_the_trainers_plans(bench, tmp_path, monkeypatch):
    from nnunet_liver.planners.lits_like import lits_like_plans

    plans = lits_like_plans()[0]
    folder = tmp_path / "Dataset990_LiverPhantom"
    folder.mkdir()
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans), encoding="utf-8")
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    assert bench.network_module("LiverUNetTrainer_CPU", "3d_fullres") == WINDOWED
    assert bench.network_module("LiverUNetTrainer_CPU", "2d") == WINDOWED
    assert bench.network_module("DualStreamTrainer_CPU", "3d_fullres") == DUAL_STREAM
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "missing"))
    assert bench.network_module("DualStreamTrainer_CPU", "3d_fullres") is None


def test_jobs_must_be_positive(bench, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--out", str(tmp_path / "b"), "--parts", "accuracy", "--jobs", "0"])
    assert "--jobs must be >= 1" in capsys.readouterr().err
