import numpy as np
import pytest
import torch
from torchvision.models import densenet121

from nnunet_liver.architectures.classifiers2d import (
    aggregate_slices,
    lesion_slices,
    make_densenet121_2d,
    make_resnet50_2d,
)

FACTORIES = {"resnet50": make_resnet50_2d, "densenet121": make_densenet121_2d}


@pytest.mark.parametrize("name", FACTORIES)
def test_one_channel_input_gives_one_logit_per_slice(name):
    torch.manual_seed(0)
    net = FACTORIES[name](in_channels=1).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, 64, 64))
        single = net(torch.randn(1, 1, 64, 64))
    assert out.shape == (2,)
    assert single.shape == (1,)
    assert torch.isfinite(out).all()


def test_state_dict_round_trip(tmp_path):
    # DenseNet-121 (8M parameters) keeps the file small; ResNet-50 shares the loader.
    torch.manual_seed(0)
    src = make_densenet121_2d()
    path = tmp_path / "densenet.pt"
    torch.save(src.state_dict(), path)
    torch.manual_seed(1)
    dst = make_densenet121_2d(pretrained_path=path)
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_imagenet_rgb_weights_are_summed_and_head_ignored(tmp_path):
    torch.manual_seed(0)
    rgb = densenet121(weights=None)  # 3 input channels, 1000 classes: the layout of an ImageNet file
    state = rgb.state_dict()
    # Old torchvision checkpoints spell "norm1" as "norm.1"; those must load too.
    legacy = {k.replace("denselayer1.norm1.", "denselayer1.norm.1."): v for k, v in state.items()}
    assert legacy.keys() != state.keys()
    path = tmp_path / "imagenet.pth"
    torch.save(legacy, path)
    net = make_densenet121_2d(in_channels=1, pretrained_path=path)
    sd = net.state_dict()
    torch.testing.assert_close(sd["features.conv0.weight"], state["features.conv0.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(
        sd["features.denseblock1.denselayer1.norm1.weight"], state["features.denseblock1.denselayer1.norm1.weight"]
    )
    assert sd["classifier.weight"].shape == (1, 1024)


def test_wrong_file_raises_clear_error(tmp_path):
    path = tmp_path / "not_a_resnet.pt"
    torch.save(make_densenet121_2d().state_dict(), path)
    with pytest.raises(ValueError, match="not_a_resnet.pt") as info:
        make_resnet50_2d(pretrained_path=path)
    assert "missing" in str(info.value) and "unexpected" in str(info.value)

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        make_densenet121_2d(pretrained_path=junk)

    tensor_file = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(ValueError, match="tensor.pt"):
        make_densenet121_2d(pretrained_path=tensor_file)

    with pytest.raises(FileNotFoundError, match="missing.pt"):
        make_densenet121_2d(pretrained_path=tmp_path / "missing.pt")


def test_lesion_slices_selects_slices_with_lesion():
    crop = torch.arange(6 * 4 * 4, dtype=torch.float32).reshape(6, 4, 4)
    mask = np.zeros((6, 4, 4), dtype=np.uint8)
    mask[1, 2, 2] = 1
    mask[3:5, 0, 0] = 2
    out = lesion_slices(crop, mask)
    assert out.shape == (3, 1, 4, 4)
    torch.testing.assert_close(out[:, 0], crop[[1, 3, 4]])


def test_lesion_slices_multichannel_and_empty_mask():
    crop = torch.randn(2, 7, 4, 4)
    out = lesion_slices(crop, torch.zeros(7, 4, 4))
    assert out.shape == (1, 2, 4, 4)
    torch.testing.assert_close(out[0], crop[:, 3])
    with pytest.raises(ValueError):
        lesion_slices(crop, torch.zeros(6, 4, 4))


@pytest.mark.parametrize(
    "probs, label, mean",
    [
        ([0.9, 0.8, 0.1], 1, 0.6),  # 2 of 3 malignant
        ([0.9, 0.2, 0.1], 0, 0.4),  # 1 of 3 malignant
        ([0.4, 0.45, 0.99, 0.1, 0.95], 0, 0.578),  # majority benign although mean > 0.5
        ([0.9, 0.4], 1, 0.65),  # tie, mean >= 0.5
        ([0.6, 0.1], 0, 0.35),  # tie, mean < 0.5
        ([0.5, 0.5], 1, 0.5),  # prob 0.5 votes malignant
        ([0.2], 0, 0.2),
    ],
)
def test_aggregate_slices_majority_vote(probs, label, mean):
    got_label, got_mean = aggregate_slices(torch.tensor(probs))
    assert got_label == label
    assert got_mean == pytest.approx(mean)
    assert aggregate_slices(probs) == (got_label, pytest.approx(got_mean))


def test_aggregate_slices_empty():
    with pytest.raises(ValueError):
        aggregate_slices([])
