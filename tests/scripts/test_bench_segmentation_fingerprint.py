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


def _replaced(monkeypatch, name: str, old: str, new: str) -> None:
    """Path.read_text of the source file whose path ends with ``name`` returns it with ``old`` (which must be
    there) replaced by ``new``."""
    real = Path.read_text

    def read_text(self, *a, **k):
        text = real(self, *a, **k)
        if self.as_posix().endswith(name):
            assert old in text, (name, old)
            return text.replace(old, new)
        return text

    monkeypatch.setattr(Path, "read_text", read_text)


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
    for name, old, new in (
            # a docstring edited in place
            ("trainers/segmentation.py", "The paper's model: 2.5D ResNet-34", "The paper's model, a 2.5D ResNet-34"),
            # another trainer's body
            ("trainers/segmentation.py", '    spatial_norm = "batch"\n', '    spatial_norm = "batch"\n    extra = 1\n')):
        with monkeypatch.context() as m:
            _replaced(m, name, old, new)
            assert key() == before, old
    # ... but code the trainer runs changes it: inside a base class, inside a mixin, a class a kept method
    # raises, a module-level helper, the window augmentation
    for name, old, new in (
            ("trainers/segmentation.py", "    spatial_norm: str | None = None\n", '    spatial_norm: str | None = "batch"\n'),
            ("trainers/_mixins.py", 'self.cpu_bf16 = self.device.type == "cpu" and cpu_bf16_requested()',
             "self.cpu_bf16 = False"),
            ("trainers/_mixins.py", "class BudgetSpent(Exception):", "class BudgetSpent(RuntimeError):"),
            ("trainers/_mixins.py", 'return setting == "1" or', 'return setting == "2" or')):
        with monkeypatch.context() as m:
            _replaced(m, name, old, new)
            assert key() != before, old
    with monkeypatch.context() as m:
        _edited(m, "augment/window.py", "\nEDITED = 1\n")
        assert key() != before


def test_code_text_is_the_code_without_docstrings_comments_or_layout(bench, tmp_path):
    source = tmp_path / "m.py"
    source.write_text('"""Module doc."""\nimport os  # why\n\n\nclass A:\n    """Doc."""\n\n    x = (1 +\n         2)\n\n'
                      '    def f(self):\n        """Doc."""\n        return os.sep\n\n\nclass B(A):\n    pass\n'
                      '__all__ = ["A", "B"]\n', encoding="utf-8")
    # pinned: the text the key hashes must not change with the Python version
    assert bench._code_text(source) == ("import os\n\nclass A:\n    x = 1 + 2\n\n    def f(self):\n"
                                        "        return os.sep\n\nclass B(A):\n    pass\n__all__ = ['A', 'B']")
    assert bench._code_text(source, {"B", "__all__"}) == ("import os\n\nclass A:\n    x = 1 + 2\n\n"
                                                          "    def f(self):\n        return os.sep")


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


def test_the_cpu_in_the_key_names_a_bf16_setting_that_differs_from_the_cpus(bench, monkeypatch):
    import nnunet_liver.trainers._mixins as mixins

    monkeypatch.setattr(mixins, "cpu_bf16_supported", lambda: True)
    monkeypatch.delenv("NNUNET_LIVER_BF16", raising=False)
    default = bench.cpu_identity()
    assert default.endswith("native bf16 yes")  # the key of runs saved before the setting was named
    monkeypatch.setenv("NNUNET_LIVER_BF16", "1")
    assert bench.cpu_identity() == default
    monkeypatch.setenv("NNUNET_LIVER_BF16", "0")
    assert bench.cpu_identity() == default + ", bf16 autocast off (NNUNET_LIVER_BF16)"
    monkeypatch.setattr(mixins, "cpu_bf16_supported", lambda: False)
    monkeypatch.setenv("NNUNET_LIVER_BF16", "1")
    assert bench.cpu_identity().endswith("native bf16 no, bf16 autocast forced on (NNUNET_LIVER_BF16)")
