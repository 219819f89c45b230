"""Augmentation, inputs, class-weighted training steps, the 2D majority vote, checkpoints and resuming."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from nnunet_liver.classification import training
from nnunet_liver.classification.crops import (
    CropSpec,
    extract_crops,
    open_preprocessed,
    read_index,
)
from nnunet_liver.classification.lesions import read_lesion_table
from nnunet_liver.classification.presets import get_preset
from nnunet_liver.classification.splits import make_splits, write_splits
from nnunet_liver.classification.training import (
    CheckpointError,
    CropData,
    augment,
    build_model,
    count_flops_per_lesion,
    load_checkpoint,
    load_crop_data,
    model_from_checkpoint,
    model_input,
    predict_lesions,
    train_fold,
    training_step,
)
from tests.classification.fakes import write_fake_dataset

torch.set_num_threads(1)

# the paper's random windows and one input channel, as in the default preset (the cpu preset's fixed window,
# lesion-mask channel and schedule are exercised by test_learning.py and the tests below that name them)
TINY = get_preset("cpu", input_size=16, epochs=2, batch_size=4, slice_batch_size=16, window="paper", with_mask=False,
                  hybrid=dict(features=4, growth=2, n_blocks=2, layers_per_block=1, reduction=2, dropout=0.0,
                              head_features=8))


def test_augment_keeps_image_and_mask_aligned():
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(6, 1, 8, 8, 8, generator=g) > 0.7).float()
    x = mask * 100.0
    config = TINY.replace(rotate_deg=0.0, intensity_shift_hu=0.0, intensity_scale=0.0)
    xa, ma = augment(x, mask, config, torch.Generator().manual_seed(1))
    assert torch.equal(xa, ma * 100.0)
    assert not torch.equal(ma, mask)  # something moved
    # the same seed gives the same draws; rotations and intensity changes keep shapes
    a = augment(x, mask, TINY, torch.Generator().manual_seed(2))
    b = augment(x, mask, TINY, torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and a[0].shape == x.shape
    x2 = x[:, :, 0]  # 2D slices
    assert augment(x2, mask[:, :, 0], TINY, torch.Generator().manual_seed(3))[0].shape == x2.shape


def test_model_input_windows():
    x = torch.tensor([-1000.0, 71.0, 3000.0]).view(3, 1, 1, 1, 1).expand(3, 1, 2, 2, 2)
    m = torch.ones_like(x)
    ev = model_input(x, m, TINY, train=False)
    np.testing.assert_allclose(ev[:, 0, 0, 0, 0].numpy(), [-1.0, 0.0, 1.0], atol=1e-6)  # PAPER eval window 71 HU
    both = model_input(x, m, TINY.replace(with_mask=True), train=False)
    assert both.shape[1] == 2 and torch.equal(both[:, 1], m[:, 0])
    x0 = torch.full((64, 1, 2, 2, 2), 71.0)
    tr = model_input(x0, torch.zeros_like(x0), TINY, train=True, generator=torch.Generator().manual_seed(0))
    assert tr[:, 0, 0, 0, 0].unique().numel() > 30  # a random window per sample


def prior_after_training(pos_weight, seed=0):
    """Train on identical crops (only the class prior can be learnt); return the learnt P(malignant)."""
    torch.manual_seed(seed)
    config = TINY.replace(window="fixed_paper", aux_weight=0.3)
    model = build_model("hybrid3d", config)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    x = torch.full((8, 1, 16, 16, 16), 60.0)
    y = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0])
    for _ in range(80):
        training_step(model, opt, x, torch.zeros_like(x), y, config=config, pos_weight=pos_weight,
                      augment_batch=False)
    with torch.no_grad():  # train-mode batch norm: identical inputs give the learnt constant
        return float(torch.sigmoid(model(model_input(x, x, config, train=False)).logit).mean())


def test_class_weighted_loss_balances_the_prior():
    from nnunet_liver.architectures.hybrid3d import class_balance_weights

    pos_weight, _ = class_balance_weights([1, 1, 0, 0, 0, 0, 0, 0])
    assert float(pos_weight) == 3.0
    assert prior_after_training(pos_weight) == pytest.approx(0.5, abs=0.08)
    assert prior_after_training(None) == pytest.approx(0.25, abs=0.08)


class SliceStub(nn.Module):
    """A '2D model' whose logit is +5 for slices brighter than the window centre, else -3."""

    def forward(self, x):
        return torch.where(x.mean(dim=(1, 2, 3)) > 0, 5.0, -3.0)


def crops_with_slices(values_per_lesion, size=8):
    images, masks = [], []
    for values in values_per_lesion:
        img = torch.full((1, size, size, size), -500.0)
        msk = torch.zeros((1, size, size, size))
        for z, v in enumerate(values, start=1):
            img[0, z] = v
            msk[0, z, 3:5, 3:5] = 1
        images.append(img)
        masks.append(msk)
    from nnunet_liver.classification.crops import CropEntry

    entries = [CropEntry("c", i, 1, "", "", 0.0, 0.0) for i in range(len(values_per_lesion))]
    return CropData(entries, torch.stack(images), torch.stack(masks), torch.ones(len(entries), dtype=torch.long))


def test_2d_majority_vote_and_mean_probability():
    data = crops_with_slices([(300, 300, -300), (300, -300, -300, -300), (300, 300, -300, -300)])
    out = predict_lesions(SliceStub(), "resnet50_2d", data, TINY)
    hi, lo = 1 / (1 + math.exp(-5)), 1 / (1 + math.exp(3))
    np.testing.assert_array_equal(out["n_slices"], [3, 4, 4])
    np.testing.assert_array_equal(out["pred"], [1, 0, 1])  # 2 of 3; 1 of 4; a tie goes to mean >= 0.5
    np.testing.assert_allclose(out["prob"], [(2 * hi + lo) / 3, (hi + 3 * lo) / 4, (2 * hi + 2 * lo) / 4])
    # slices outside the lesion never vote: a bright slice without mask changes nothing
    data.images[0, 0, 6] = 300.0
    assert predict_lesions(SliceStub(), "resnet50_2d", data, TINY)["n_slices"][0] == 3


@pytest.fixture(scope="module")
def crop_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fake")
    info = write_fake_dataset(tmp / "pre", table=tmp / "lesions.csv")
    out = tmp / "crops"
    extract_crops(open_preprocessed(tmp / "pre", 991), read_lesion_table(info["table"]), out,
                  spec=CropSpec(size=16, crop_mm=24.0), progress=False)
    entries = read_index(out)
    write_splits(out / "splits.json", make_splits([e.key for e in entries], [e.label for e in entries], n_folds=2))
    return out


def test_train_fold_weights_resumes_and_checkpoints(crop_dir, tmp_path, monkeypatch):
    seen = []
    real = training.hybrid_loss
    monkeypatch.setattr(training, "hybrid_loss", lambda out, y, pw, **kw: (seen.append(pw), real(out, y, pw, **kw))[1])
    run = tmp_path / "hybrid3d" / "fold_0"
    s = train_fold(crop_dir=crop_dir, out_dir=run, model_name="hybrid3d", fold=0, config=TINY, progress=False)
    n_benign, n_malignant = s["counts"]["train"]
    assert float(seen[0]) == pytest.approx(n_benign / n_malignant)
    for name in ("checkpoint_final.pt", "checkpoint_best.pt", "checkpoint_latest.pt", "progress.png",
                 "predictions.csv", "training_log.json"):
        assert (run / name).is_file(), name
    log = json.loads((run / "training_log.json").read_text(encoding="utf-8"),
                     parse_constant=lambda c: pytest.fail(c))
    assert len(log["history"]["train_loss"]) == 2 and s["epochs_run"] == 2

    ckpt = load_checkpoint(run / "checkpoint_final.pt", expected_model="hybrid3d")  # weights_only=True inside
    with pytest.raises(CheckpointError, match="holds a hybrid3d model, not resnet50_2d"):
        load_checkpoint(run / "checkpoint_final.pt", expected_model="resnet50_2d")
    model, config = model_from_checkpoint(ckpt)
    test = load_crop_data(crop_dir, config.input_size).subset(ckpt["keys"]["test"])
    with open(run / "predictions.csv", encoding="utf-8") as f:
        saved = [float(r["prob"]) for r in csv.DictReader(f)]
    np.testing.assert_allclose(predict_lesions(model, "hybrid3d", test, config)["prob"], saved, atol=1e-5)

    with pytest.raises(CheckpointError, match="already holds a training run"):
        train_fold(crop_dir=crop_dir, out_dir=run, model_name="hybrid3d", fold=0, config=TINY, progress=False)
    with pytest.raises(CheckpointError, match="holds a hybrid3d model"):
        train_fold(crop_dir=crop_dir, out_dir=run, model_name="hybrid3d_noatt", fold=0, config=TINY,
                   progress=False, resume=True)
    with pytest.raises(CheckpointError, match="differs in: lr"):
        train_fold(crop_dir=crop_dir, out_dir=run, model_name="hybrid3d", fold=0, config=TINY.replace(lr=0.5),
                   progress=False, resume=True)
    s3 = train_fold(crop_dir=crop_dir, out_dir=run, model_name="hybrid3d", fold=0, config=TINY.replace(epochs=3),
                    progress=False, resume=True)
    assert s3["epochs_run"] == 3
    hist = json.loads((run / "training_log.json").read_text(encoding="utf-8"))["history"]
    assert hist["train_loss"][:2] == log["history"]["train_loss"]  # resumed, not restarted


def test_train_fold_2d_weights_slices(crop_dir, tmp_path, monkeypatch):
    seen = []
    real = torch.nn.functional.binary_cross_entropy_with_logits

    def spy(logit, target, pos_weight=None, **kw):
        seen.append((pos_weight, target.detach().clone()))
        return real(logit, target, pos_weight=pos_weight, **kw)

    monkeypatch.setattr(training.F, "binary_cross_entropy_with_logits", spy)
    s = train_fold(crop_dir=crop_dir, out_dir=tmp_path / "r", model_name="resnet50_2d", fold=1,
                   config=TINY.replace(epochs=1), progress=False)
    assert s["epochs_run"] == 1
    # pos_weight of the 2D baselines is the slice class balance of the training fold
    data = load_crop_data(crop_dir, TINY.input_size)
    train = data.subset(json.loads((crop_dir / "splits.json").read_text(encoding="utf-8"))["folds"][1]["train"])
    _, _, owner = training._slices(train)
    y = train.labels[owner]
    assert float(seen[0][0]) == pytest.approx(float((y == 0).sum() / (y == 1).sum()))
    assert int(sum(t.numel() for _, t in seen)) >= y.numel() - 1  # every slice once (a lone last one skipped)
    with open(tmp_path / "r" / "predictions.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(int(r["n_slices"]) >= 1 for r in rows)


def test_flops_and_pretrained_guard():
    assert count_flops_per_lesion("hybrid3d", TINY) > 0
    one = count_flops_per_lesion("resnet50_2d", TINY, mean_slices=1)
    assert count_flops_per_lesion("resnet50_2d", TINY, mean_slices=3) == pytest.approx(3 * one)
    with pytest.raises(ValueError, match="2D baselines only"):
        build_model("hybrid3d", TINY, pretrained="x.pt")
    with pytest.raises(ValueError, match="at least 32 x 32"):
        build_model("densenet121_2d", TINY)
    with pytest.raises(ValueError, match="not divisible"):
        build_model("hybrid3d", TINY.replace(input_size=18))


def test_time_budget_stop_resumes_at_the_next_untrained_epoch(crop_dir, tmp_path):
    run = tmp_path / "hybrid3d" / "fold_0"
    s = train_fold(crop_dir=crop_dir, out_dir=run, model_name="hybrid3d", fold=0,
                   config=TINY.replace(epochs=3, max_time_s=1e-9), progress=False)
    assert s["stop_reason"] == "time budget" and s["epochs_run"] == 1
    assert load_checkpoint(run / "checkpoint_latest.pt")["epoch"] == 0  # the last trained epoch
    s2 = train_fold(crop_dir=crop_dir, out_dir=run, model_name="hybrid3d", fold=0, config=TINY.replace(epochs=3),
                    progress=False, resume=True)
    assert s2["epochs_run"] == 3  # epochs 1 and 2 trained, none skipped
    hist = json.loads((run / "training_log.json").read_text(encoding="utf-8"))["history"]
    assert len(hist["train_loss"]) == len(hist["val_auc"]) == 3 and 0 <= s2["best_epoch"] < 3


def test_cpu_budget_clock_counts_process_time(crop_dir, tmp_path, monkeypatch):
    """budget_clock='cpu' charges each epoch the process CPU time it used (here 2 s per epoch, faked), so a
    5 s budget stops after the third epoch whatever the wall clock says."""
    from nnunet_liver.classification.presets import get_preset

    ticks = iter(range(0, 10_000, 1))
    monkeypatch.setattr(training.time, "process_time", lambda: float(next(ticks)))  # +1 per call, 2 calls/epoch
    s = train_fold(crop_dir=crop_dir, out_dir=tmp_path / "cpu", model_name="hybrid3d", fold=0,
                   config=TINY.replace(epochs=6, max_time_s=1.5, budget_clock="cpu"), progress=False)
    assert s["stop_reason"] == "time budget" and s["epochs_run"] == 2
    wall = train_fold(crop_dir=crop_dir, out_dir=tmp_path / "wall", model_name="hybrid3d", fold=0,
                      config=TINY.replace(epochs=3, max_time_s=1e6), progress=False)
    assert wall["epochs_run"] == 3
    with pytest.raises(ValueError, match="budget_clock"):
        get_preset("cpu", budget_clock="gpu")


def test_3d_crops_rotate_about_every_axis():
    """A cube off-centre in y: in-plane turns and flips keep its z centre at z0 or its mirror; rotations about
    the in-plane axes move it to other slices. 2D slices still turn in-plane only (their shape is kept)."""
    mask = torch.zeros(16, 1, 32, 32, 32)
    mask[:, :, 12:16, 4:8, 14:18] = 1.0
    config = TINY.replace(rotate_deg=30.0, intensity_shift_hu=0.0, intensity_scale=0.0)
    _, ma = augment(mask * 100.0, mask, config, torch.Generator().manual_seed(0))
    z = torch.arange(32.0).view(1, 1, 32, 1, 1)
    zc = ((ma * z).sum(dim=(1, 2, 3, 4)) / ma.sum(dim=(1, 2, 3, 4))).numpy()
    z0 = 13.5
    off_plane = [abs(c - z0) > 1.0 and abs(c - (31 - z0)) > 1.0 for c in zc]
    assert sum(off_plane) >= 8, zc
    flat = TINY.replace(rotate_deg=30.0)
    assert augment(mask[:, :, 14], mask[:, :, 14], flat, torch.Generator().manual_seed(1))[1].shape == (16, 1, 32, 32)


def test_learning_rate_schedule_follows_epochs_or_the_time_budget():
    from nnunet_liver.classification.training import _progress, learning_rate

    cos = TINY.replace(lr=1.0, lr_schedule="cosine", epochs=10)
    assert learning_rate(cos, 0.0) == pytest.approx(1.0)
    assert learning_rate(cos, 0.5) == pytest.approx(0.5)
    assert learning_rate(cos, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(TINY.replace(lr=0.1, lr_schedule="constant"), 0.9) == 0.1
    warm = cos.replace(warmup=0.2)
    assert learning_rate(warm, 0.1) < learning_rate(warm, 0.2) == pytest.approx(1.0)
    # progress: the larger of the epoch fraction and the share of the time budget spent (extrapolated in-epoch)
    assert _progress(cos, 2, 0.5, 0.0, 0.0) == pytest.approx(0.25)
    timed = cos.replace(max_time_s=4.0)
    assert _progress(timed, 2, 0.5, 2.0, 1.0) == pytest.approx((2.0 + 0.5) / 4.0)
    with pytest.raises(ValueError, match="lr_schedule"):
        TINY.replace(lr_schedule="step")
    with pytest.raises(ValueError, match="train_on_val needs select='last'"):
        TINY.replace(select="best", train_on_val=True)


def test_select_last_keeps_the_last_epoch_and_train_on_val_uses_every_training_lesion(crop_dir, tmp_path,
                                                                                       monkeypatch):
    config = TINY.replace(epochs=3, select="last", lr_schedule="cosine")
    s = train_fold(crop_dir=crop_dir, out_dir=tmp_path / "last", model_name="hybrid3d", fold=0, config=config,
                   progress=False)
    assert s["best_epoch"] == 2 and s["epochs_run"] == 3
    final = load_checkpoint(tmp_path / "last" / "checkpoint_final.pt")
    latest = load_checkpoint(tmp_path / "last" / "checkpoint_latest.pt")
    for k, v in latest["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][k], v)

    sizes = []
    real = training.training_step
    monkeypatch.setattr(training, "training_step", lambda model, opt, x, *a, **kw: (sizes.append(x.shape[0]),
                                                                                    real(model, opt, x, *a, **kw))[1])
    s = train_fold(crop_dir=crop_dir, out_dir=tmp_path / "all", model_name="hybrid3d", fold=0,
                   config=config.replace(epochs=1, train_on_val=True), progress=False)
    parts = json.loads((crop_dir / "splits.json").read_text(encoding="utf-8"))["folds"][0]
    assert sum(sizes) >= len(parts["train"]) + len(parts["val"]) - 1  # a lone last lesion is skipped
    assert math.isnan(s["best_val_auc"])


def test_cpu_preset_recipe():
    from nnunet_liver.augment.window import WindowConfig, as_window_config

    cpu = get_preset("cpu")
    assert as_window_config(cpu.window) == WindowConfig.fixed(71.0, 213.5)
    assert cpu.with_mask and cpu.select == "last" and cpu.lr_schedule == "cosine"
    model = build_model("hybrid3d", cpu)
    assert model.lesion_pooling and model.input_multiple == 16 and cpu.input_size % 16 == 0
    assert build_model("hybrid3d_noatt", cpu)(torch.zeros(2, 2, 32, 32, 32)).channel_weights == ()
    assert get_preset("default").window == "paper" and get_preset("default").select == "best"


def test_budget_stops_before_an_epoch_that_would_overshoot_more_than_it_fills(crop_dir, tmp_path, monkeypatch):
    """Each epoch costs 1 s (faked clock): with 2.4 s, a third epoch would end 0.6 s past the budget, more than
    the 0.4 s left, so two are trained; with 2.6 s the third ends 0.4 s past, less than the 0.6 s left."""
    for budget, epochs in ((2.4, 2), (2.6, 3)):
        ticks = iter(range(0, 10_000, 1))
        monkeypatch.setattr(training.time, "process_time", lambda ticks=ticks: float(next(ticks)))
        s = train_fold(crop_dir=crop_dir, out_dir=tmp_path / str(budget), model_name="hybrid3d", fold=0,
                       config=TINY.replace(epochs=6, max_time_s=budget, budget_clock="cpu"), progress=False)
        assert s["stop_reason"] == "time budget" and s["epochs_run"] == epochs, budget
